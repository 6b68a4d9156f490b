"""Trace the bundle's eager encoders into ONNX graphs with dynamic batch and sequence axes.

The graphs run the same modules as PyTorch (ItemLLM, UserLLM): the [ITEM] slot, position ids from the
mask and the time-gap bucketing are traced, not re-implemented, so there is one definition of each.
The example inputs are padded (and longer than one position), because the tracer records the branch
the example takes: an unpadded example could record a graph that ignores the mask.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from feature_gen.model.item_llm import ItemLLM
from feature_gen.inference.onnx_runtime import ITEM_INPUTS, ITEM_OUTPUTS, USER_INPUTS, USER_OUTPUTS
from feature_gen.model.user_llm import UserLLM


class UserEncoderGraph(nn.Module):
    """UserLLM with its two outputs as a tuple (the tracer needs tensors, not a dataclass)."""

    def __init__(self, user_llm: UserLLM):
        super().__init__()
        self.user_llm = user_llm

    def forward(self, item_embeddings, attention_mask, timestamps=None):
        out = self.user_llm(item_embeddings, attention_mask, timestamps)
        return out.user_embedding, out.predictions  # [B, D], [B, L, D]


def _trace(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           dynamic_axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        # TracerWarnings about Python bools taken from tensors (input checks, mask shortcuts): the
        # padded example takes the general branch, and the parity check proves the graph on others.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


@torch.no_grad()
def export_item_encoder(item_llm: ItemLLM, path: Path, opset: int) -> None:
    """input_ids, attention_mask [batch, tokens] int64 -> item_embedding [batch, D] float32."""
    vocab = item_llm.backbone.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # one row padded on each side
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "item_embedding": {0: "batch"}}
    _trace(item_llm.eval(), (ids, mask), path, list(ITEM_INPUTS), list(ITEM_OUTPUTS), axes, opset)


@torch.no_grad()
def export_user_encoder(user_llm: UserLLM, path: Path, opset: int) -> None:
    """item_embeddings [batch, seq, D] float32, attention_mask [batch, seq] int64 (+ timestamps
    [batch, seq] int64 unix seconds when the model uses them) -> user_embedding [batch, D],
    predictions [batch, seq, D]."""
    uses_ts = user_llm.time_embedding is not None
    embs = torch.randn(2, 4, user_llm.item_dim, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    seq_axes = {0: "batch", 1: "seq"}
    inputs = list(USER_INPUTS if uses_ts else USER_INPUTS[:2])
    axes = {name: seq_axes for name in inputs} | {"user_embedding": {0: "batch"}, "predictions": seq_axes}
    args = (embs, mask, torch.tensor([[0, 100, 160, 4000], [10, 20, 20, 2**20]])) if uses_ts else (embs, mask)
    _trace(UserEncoderGraph(user_llm.eval()), args, path, inputs, list(USER_OUTPUTS), axes, opset)
