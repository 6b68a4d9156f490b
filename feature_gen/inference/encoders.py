"""Batched inference: item texts -> item embeddings, item-embedding sequences -> user embeddings.

The one code path every consumer uses (evaluation, the trainer's stage-2 cache, the Spark jobs, the
streaming refresh, the export's parity check), so an item never gets two embeddings from two paths.
Texts are sorted by token length before batching (length bucketing): a batch then pads to a width
close to its own rows instead of the longest text in the whole input.

Two backends, one code path: every function takes the item encoder / user encoder as an argument, the
eager modules (`ItemLLM`, `UserLLM`) or their ONNX Runtime twins (`feature_gen.inference.onnx_runtime`), which are
called the same way. `load_encoders(bundle, runtime="torch" | "onnx")` returns either pair, so callers
switch backend, not code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd
import torch

from feature_gen.config import ItemTextConfig
from feature_gen.data.sequences import pad_sequences
from feature_gen.model.item_llm import ItemLLM
from feature_gen.model.item_text import build_item_text, check_prompt_budget, pad_token_ids, tokenize_item_texts
from feature_gen.model.user_llm import UserLLM

# ItemLLM or feature_gen.inference.onnx_runtime.OnnxItemEncoder; UserLLM or OnnxUserEncoder (same call shapes).
ItemEncoder = Union[ItemLLM, Any]
UserEncoder = Union[UserLLM, Any]


@dataclass
class Encoders:
    item: ItemEncoder
    user: UserEncoder
    version: str  # bundle version: every embedding written must carry it
    runtime: str  # "torch" | "onnx"


def load_encoders(bundle, runtime: str = "torch", device: str = "auto", threads: int | None = None) -> Encoders:
    """The bundle's item and user encoders for `runtime`. `bundle` is a bundle folder or a loaded
    feature_gen.model.bundle.Bundle; "onnx" needs `hllm export` to have run on it (device/threads: ONNX only)."""
    if runtime == "torch":
        from feature_gen.model.bundle import Bundle, load_bundle

        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        return Encoders(loaded.model.item_llm, loaded.model.user_llm, loaded.version, "torch")
    if runtime == "onnx":
        from feature_gen.inference.onnx_runtime import load_onnx_encoders

        folder = bundle.path if hasattr(bundle, "path") else Path(bundle)
        onnx = load_onnx_encoders(folder, device=device, threads=threads)
        return Encoders(onnx.item, onnx.user, onnx.version, "onnx")
    raise ValueError(f"runtime: expected 'torch' or 'onnx'; got {runtime!r}")


def _eval(encoder) -> None:
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()


def _float32(x) -> np.ndarray:
    return x.float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def batches_by_length(lengths: Sequence[int], batch_size: int, bucket: bool = True) -> list[np.ndarray]:
    """Index batches; with `bucket`, rows of similar length go together (longest first, so a memory
    problem shows up in the first batch rather than the last)."""
    order = np.argsort(-np.asarray(lengths), kind="stable") if bucket else np.arange(len(lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def embed_token_ids(
    item_llm: ItemEncoder,
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    bucket: bool = True,
    padding_side: str = "right",
    progress=None,
) -> np.ndarray:
    """Item embeddings [n, D] float32 for pre-tokenised texts, in input order. `progress`: anything
    with `update(n)` (feature_gen.logs.Progress), told the rows done after each batch."""
    _eval(item_llm)
    out = np.zeros((len(token_ids), item_llm.hidden_size), dtype=np.float32)
    for idx in batches_by_length([len(t) for t in token_ids], batch_size, bucket):
        batch = pad_token_ids([token_ids[i] for i in idx], pad_id, padding_side)
        out[idx] = _float32(item_llm(batch.input_ids, batch.attention_mask))
        if progress is not None:
            progress.update(len(idx))
    return out


def embed_texts(
    item_llm: ItemEncoder,
    tokenizer,
    texts: Sequence[str],
    max_item_tokens: int,
    batch_size: int = 64,
    bucket: bool = True,
    padding_side: str = "right",
) -> np.ndarray:
    ids = tokenize_item_texts(texts, tokenizer, max_item_tokens)
    return embed_token_ids(item_llm, ids, tokenizer.pad_token_id, batch_size, bucket, padding_side)


def embed_catalogue(
    item_llm: ItemEncoder,
    tokenizer,
    items: pd.DataFrame,
    text_cfg: ItemTextConfig,
    batch_size: int = 64,
    padding_side: str = "right",
) -> torch.Tensor:
    """The item table [N+1, D] for internal ids (row 0 = padding, zeros). `items` must hold only
    embeddable items (see data.contract.split_rejects), in internal-id order."""
    check_prompt_budget(tokenizer, text_cfg)
    texts = [build_item_text(row, text_cfg) for row in items.to_dict("records")]
    missing = [i for i, t in enumerate(texts) if t is None]
    if missing:
        raise ValueError(f"embed_catalogue: item at position {missing[0]} has no text; split rejects first")
    vectors = embed_texts(item_llm, tokenizer, texts, text_cfg.max_item_tokens, batch_size, True, padding_side)
    return torch.cat([torch.zeros(1, vectors.shape[1]), torch.from_numpy(vectors)], dim=0)


@dataclass
class UserEmbeddings:
    vectors: np.ndarray  # [U, D] float32 user-interest embeddings
    seq_len: np.ndarray  # [U] number of history items the embedding reflects (after the max_seq_len cap)
    last_event_ts: np.ndarray  # [U] int64 timestamp of the newest event it reflects


@torch.inference_mode()
def embed_users(
    user_llm: UserEncoder,
    item_table: torch.Tensor,  # [N+1, D] row 0 = padding
    histories: Sequence[np.ndarray],  # per user internal item ids, time ordered
    timestamps: Sequence[np.ndarray],
    max_seq_len: int,
    batch_size: int = 256,
) -> UserEmbeddings:
    """The User LLM's last-position output for each history (its most recent `max_seq_len` items)."""
    _eval(user_llm)
    n = len(histories)
    if any(len(h) == 0 for h in histories):
        raise ValueError("embed_users: a user has an empty history; there is nothing to embed")
    vectors = np.zeros((n, user_llm.item_dim), dtype=np.float32)
    lengths = np.array([min(len(h), max_seq_len) for h in histories])
    # Length bucketing, as for texts: a chunk pads to its own longest history, not to max_seq_len
    # (users with a few events would otherwise cost as much as users with a full window).
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_sequences([histories[i] for i in chunk], [timestamps[i] for i in chunk], int(lengths[chunk].max()), "left")
        item_embs = item_table[batch.item_ids]  # [B, L, D]
        out = user_llm(item_embs, batch.attention_mask, batch.timestamps)
        vectors[chunk] = _float32(out.user_embedding)
    return UserEmbeddings(
        vectors=vectors,
        seq_len=np.array([min(len(h), max_seq_len) for h in histories], dtype=np.int64),
        last_event_ts=np.array([int(t[-1]) for t in timestamps], dtype=np.int64),
    )
