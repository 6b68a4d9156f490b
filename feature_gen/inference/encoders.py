"""Batched inference: item texts -> item embeddings, item-embedding sequences -> user embeddings.

The one code path every consumer uses (evaluation, the trainer's stage-2 cache, the Spark jobs, the
streaming refresh, the export's parity check), so an item never gets two embeddings from two paths.
Texts are sorted by token length before batching (length bucketing): a batch then pads to a width
close to its own rows instead of the longest text in the whole input.

Two backends, one interface: `load_encoders(bundle, runtime="torch" | "onnx")` returns an `Encoders`
(item and user encoder, tokenizer, text config, padding side, max sequence length, bundle version) whose
methods embed texts, token ids and user histories. Its encoders satisfy the `ItemEncoder` /
`UserEncoder` protocols: the eager modules (`ItemLLM`, `UserLLM`) or their ONNX Runtime twins
(feature_gen.inference.onnx_runtime, an internal detail of the "onnx" runtime). The module-level
functions take an encoder as their first argument, for callers that hold a model under training
(the trainer's catalogue cache) rather than a bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from feature_gen.config import ItemTextConfig
from feature_gen.data.sequences import pad_sequences
from feature_gen.inference.item_table import ItemTable, padded_item_table
from feature_gen.model.item_text import build_item_text, check_prompt_budget, pad_token_ids, tokenize_item_texts

if TYPE_CHECKING:
    from feature_gen.model.bundle import Bundle

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx")


class ItemEncoder(Protocol):
    """Token ids + attention mask [B, T] (either padding side) -> item embeddings [B, D]
    (a torch tensor from ItemLLM, a float32 array from ONNX Runtime)."""

    @property
    def hidden_size(self) -> int: ...

    def __call__(self, input_ids: Any, attention_mask: Any) -> torch.Tensor | np.ndarray: ...


class UserEncoderOutput(Protocol):
    predictions: Any  # [B, L, D] next-item prediction at each position
    user_embedding: Any  # [B, D] the prediction at each row's last real position


class UserEncoder(Protocol):
    """Item-embedding sequences [B, L, D] + mask [B, L] (+ unix-second timestamps [B, L]) -> outputs."""

    item_dim: int

    def __call__(self, item_embeddings: Any, attention_mask: Any, timestamps: Any = None) -> UserEncoderOutput: ...


@dataclass
class Encoders:
    """A bundle's encoders and everything needed to feed them, in one runtime."""

    item: ItemEncoder
    user: UserEncoder
    tokenizer: Any  # the bundle's Hugging Face tokenizer (PreTrainedTokenizerBase)
    text_cfg: ItemTextConfig
    padding_side: str  # the Item LLM's: "right" | "left"
    max_seq_len: int  # the User LLM reads at most this many of a user's newest items
    version: str  # bundle version: every embedding written must carry it
    runtime: Runtime

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64, bucket: bool = True) -> np.ndarray:
        """[n, D] float32 item embeddings of item texts (already built by item_text), in input order."""
        return embed_texts(self.item, self.tokenizer, texts, self.text_cfg.max_item_tokens, batch_size, bucket,
                           self.padding_side)

    def embed_token_ids(self, token_ids: Sequence[Sequence[int]], batch_size: int = 64, bucket: bool = True) -> np.ndarray:
        """[n, D] float32 item embeddings of pre-tokenised texts, in input order."""
        return embed_token_ids(self.item, token_ids, self.tokenizer.pad_token_id, batch_size, bucket, self.padding_side)

    def embed_catalogue(self, items: pd.DataFrame, batch_size: int = 64) -> torch.Tensor:
        """The item table [N+1, D] of `items` (row 0 = padding); see embed_catalogue."""
        return embed_catalogue(self.item, self.tokenizer, items, self.text_cfg, batch_size, self.padding_side)

    def embed_users(self, item_table: torch.Tensor, histories: Sequence[np.ndarray], timestamps: Sequence[np.ndarray],
                    batch_size: int = 256) -> UserEmbeddings:
        """User embeddings of histories of internal indices into `item_table` [N+1, D]."""
        return embed_users(self.user, item_table, histories, timestamps, self.max_seq_len, batch_size)

    def embed_histories(self, item_vectors: Mapping[str, np.ndarray], histories: Sequence[Sequence[str]],
                        timestamps: Sequence[Sequence[int]], batch_size: int = 256) -> UserEmbeddings:
        """User embeddings of time-ordered histories of external item ids, each of whose vectors
        `item_vectors` holds (KeyError naming an id it lacks)."""
        ids = list(dict.fromkeys(str(i) for h in histories for i in h))
        missing = [i for i in ids if i not in item_vectors]
        if missing:
            raise KeyError(f"item_id {missing[0]!r}: no vector given for it ({len(missing)} missing)")
        table = ItemTable.of(ids, [item_vectors[i] for i in ids])
        internal = [table.rows(h) for h in histories]
        ts = [np.asarray(t, dtype=np.int64) for t in timestamps]
        return self.embed_users(table.vectors, internal, ts, batch_size)


def load_encoders(bundle: "str | Path | Bundle", runtime: Runtime = "torch", device: str = "auto",
                  threads: int | None = None) -> Encoders:
    """The bundle's encoders in `runtime`. `bundle` is a bundle folder or a loaded
    feature_gen.model.bundle.Bundle. "torch" loads the eager modules (verifying every checksum);
    "onnx" opens the graphs `hllm export` wrote (verifying them too) and loads no PyTorch weights.
    `device` ("auto" | "cpu" | "cuda") and `threads` (intra-op threads) apply to ONNX Runtime only.
    Raises ValueError for another runtime, BundleError for a bad or unexported bundle."""
    from feature_gen.model.bundle import Bundle, bundle_config, load_bundle, load_bundle_tokenizer

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: expected 'torch' or 'onnx'; got {runtime!r}")
    if runtime == "torch":
        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        return Encoders(
            loaded.model.item_llm, loaded.model.user_llm, loaded.tokenizer, loaded.cfg.item_text,
            loaded.cfg.item_llm.padding_side, loaded.cfg.data.max_seq_len, loaded.version, "torch",
        )
    from feature_gen.inference.onnx_runtime import load_onnx_encoders

    folder = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    onnx = load_onnx_encoders(folder, device=device, threads=threads)  # verifies the bundle first
    if isinstance(bundle, Bundle):
        cfg, tokenizer = bundle.cfg, bundle.tokenizer
    else:
        cfg, tokenizer = bundle_config(folder), load_bundle_tokenizer(folder)
    return Encoders(onnx.item, onnx.user, tokenizer, cfg.item_text, cfg.item_llm.padding_side, cfg.data.max_seq_len,
                    onnx.version, "onnx")


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
    """Item embeddings [n, D] float32 of item texts, tokenised and truncated to `max_item_tokens`."""
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
    return padded_item_table(vectors)


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
