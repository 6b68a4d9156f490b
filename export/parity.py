"""Parity: does the ONNX graph compute the same function as the PyTorch module?

Fresh random inputs (a seeded generator, not the tracing example) of several batch sizes and lengths,
with ragged rows so every batch holds padding: items padded on both sides, users too. The figure is the
relative error ||onnx - torch|| / ||torch|| per case; the worst case is what the export reports and
checks against its bound. User predictions are compared at real positions only (what a padded
position outputs is not part of the contract).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feature_gen.inference.encoders import ItemEncoder, UserEncoder, embed_token_ids
from feature_gen.inference.onnx_runtime import OnnxItemEncoder, OnnxUserEncoder

# (batch, length) cases; lengths are capped by the bundle's max_item_tokens / max_seq_len.
ITEM_CASES = [(1, 1), (3, 9), (8, 40)]
USER_CASES = [(1, 1), (4, 9), (7, 50)]


@dataclass
class ParityCase:
    encoder: str  # "item_encoder" | "user_encoder"
    batch: int
    length: int
    padding_side: str
    rel_error: float

    def describe(self) -> str:
        return f"{self.encoder} batch {self.batch} x {self.length} {self.padding_side}-padded"


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))


def _ragged_lengths(rng: np.random.Generator, batch: int, width: int) -> list[int]:
    lengths = rng.integers(1, width + 1, size=batch).tolist()
    lengths[0] = width  # the batch is exactly `width` wide; the other rows are padded
    return lengths


@torch.no_grad()
def item_parity(item_llm: ItemEncoder, onnx_item: OnnxItemEncoder, max_tokens: int, seed: int) -> list[ParityCase]:
    """Both encoders through embed_token_ids, the batched path every producer of item embeddings runs
    (one unbucketed batch, so the padding side and width are the case's own)."""
    rng = np.random.default_rng(seed)
    vocab = onnx_item.vocab_size
    cases = []
    for batch, width in ITEM_CASES:
        width = min(width, max_tokens)
        rows = [rng.integers(0, vocab, size=n).tolist() for n in _ragged_lengths(rng, batch, width)]
        for side in ("right", "left"):
            ref, got = (embed_token_ids(encoder, rows, pad_id=0, batch_size=batch, bucket=False, padding_side=side)
                        for encoder in (item_llm, onnx_item))
            cases.append(ParityCase("item_encoder", batch, width, side, rel_error(got, ref)))
    return cases


def random_timestamps(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Increasing unix seconds whose gaps include 0 and exact bucket boundaries (2**k - 1, 2**k)."""
    k = rng.integers(0, 30, size=(batch, length))
    gaps = np.maximum(2**k - 1 + rng.integers(-1, 2, size=(batch, length)), 0)
    return 1_700_000_000 + np.cumsum(gaps, axis=1)


@torch.no_grad()
def user_parity(user_llm: UserEncoder, onnx_user: OnnxUserEncoder, max_len: int, seed: int) -> list[ParityCase]:
    rng = np.random.default_rng(seed + 1)
    dim = onnx_user.item_dim
    cases = []
    for batch, width in USER_CASES:
        width = min(width, max_len)
        lengths = _ragged_lengths(rng, batch, width)
        embs = rng.standard_normal((batch, width, dim)).astype(np.float32)
        stamps = random_timestamps(rng, batch, width)
        cols = np.arange(width)
        for side in ("left", "right"):
            if side == "left":
                mask = (cols[None, :] >= width - np.array(lengths)[:, None]).astype(np.int64)
            else:
                mask = (cols[None, :] < np.array(lengths)[:, None]).astype(np.int64)
            ref = user_llm(torch.from_numpy(embs), torch.from_numpy(mask), torch.from_numpy(stamps))
            got = onnx_user(embs, mask, stamps)
            real = mask.astype(bool)
            err = max(
                rel_error(got.user_embedding, ref.user_embedding.float().numpy()),
                rel_error(got.predictions[real], ref.predictions.float().numpy()[real]),
            )
            cases.append(ParityCase("user_encoder", batch, width, side, err))
    return cases
