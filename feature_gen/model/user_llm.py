"""User LLM: a sequence of item embeddings -> per-position next-item predictions.

A pretrained decoder reads item embeddings as `inputs_embeds` (no text, no ids). Where its hidden size
differs from the Item LLM's, a linear projection maps item embeddings in and predictions back out, so
predictions live in item-embedding space and can be scored against the catalogue directly. Optional
timestamp embeddings (bucketed log time gap to the previous event) are added to the inputs; they start
at zero so a pretrained model's behaviour is unchanged until training moves them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from feature_gen.model.positions import last_real_index, real_position_ids


@dataclass
class UserLLMOutput:
    predictions: torch.Tensor  # [B, L, D_item] prediction of the next item's embedding at each position
    user_embedding: torch.Tensor  # [B, D_item] the prediction at each row's last real position


def time_gap_buckets(timestamps: torch.Tensor, attention_mask: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket ids [B, L] for the gap (seconds) to the previous real event: 0 = padding or first event,
    then 1 + floor(log2(1 + gap)), capped at num_buckets - 1 (bucket 26 ~ two years)."""
    mask = attention_mask.to(torch.bool)
    ts = timestamps.to(torch.int64)
    prev = torch.cat([ts[:, :1], ts[:, :-1]], dim=1)
    prev_real = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    gap = (ts - prev).clamp(min=0, max=2**62)
    # 1 + floor(log2(1 + gap)) counted in integers: exact for every gap, and it exports to ONNX
    # unchanged (ONNX Runtime's float log2 of 2**k lands just below k, which floors one bucket low).
    powers = 2 ** torch.arange(1, min(num_buckets - 1, 63), device=ts.device)  # thresholds of buckets 2..
    buckets = 1 + ((1 + gap).unsqueeze(-1) >= powers).sum(dim=-1)  # [B, L], at most num_buckets - 1
    return torch.where(mask & prev_real, buckets, torch.zeros_like(buckets))


class UserLLM(nn.Module):
    def __init__(self, backbone: nn.Module, item_dim: int, use_timestamps: bool = False, num_time_buckets: int = 64,
                 projection: str = "linear", dropout: float = 0.0, last_input_skip: bool = False):
        super().__init__()
        self.backbone = backbone
        self.item_dim = item_dim
        user_dim = backbone.config.hidden_size
        if projection not in ("linear", "none"):
            raise ValueError(f"projection must be 'linear' or 'none'; got {projection!r}")
        if projection == "none" and user_dim != item_dim:
            raise ValueError(f"'none' needs the User LLM's hidden size ({user_dim}) to equal the Item LLM's "
                             f"({item_dim}); set it to 'linear' or pick models of one size")
        self.in_proj = nn.Linear(item_dim, user_dim) if user_dim != item_dim else nn.Identity()
        self.out_proj = nn.Linear(user_dim, item_dim) if user_dim != item_dim else nn.Identity()
        self.num_time_buckets = num_time_buckets
        self.time_embedding = nn.Embedding(num_time_buckets, user_dim) if use_timestamps else None
        if self.time_embedding is not None:
            nn.init.zeros_(self.time_embedding.weight)
        self._takes_position_ids = "position_ids" in inspect.signature(backbone.forward).parameters
        # regularisation around the pretrained decoder (active in training mode only; inference, the
        # Spark jobs and the ONNX export run in eval mode, where it is the identity)
        self.input_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        # last_input_skip: each position's prediction + w * its own input item embedding (w learned, from 0),
        # a direct path from the newest item to the prediction in item space, as an ID model's shared
        # input/output table gives it (BENCHMARKS.md, "Where the best HLLM's validation lead goes")
        # shape [1], not a 0-dim scalar: DeepSpeed's initial broadcast views each parameter as bytes
        self.last_input_weight = nn.Parameter(torch.zeros(1)) if last_input_skip else None

    def forward(
        self,
        item_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        timestamps: torch.Tensor | None = None,
    ) -> UserLLMOutput:
        """item_embeddings [B, L, D_item], attention_mask [B, L], timestamps [B, L] (unix seconds)."""
        if item_embeddings.dim() != 3 or item_embeddings.size(-1) != self.item_dim:
            raise ValueError(
                f"UserLLM expects item embeddings [batch, seq, {self.item_dim}]; got {tuple(item_embeddings.shape)}"
            )
        if attention_mask.shape != item_embeddings.shape[:2]:
            raise ValueError(
                f"UserLLM attention_mask must be {tuple(item_embeddings.shape[:2])}; got {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(torch.long)
        inputs = self.in_proj(item_embeddings)  # [B, L, D_user]
        if self.time_embedding is not None:
            if timestamps is None:
                raise ValueError("UserLLM was built with use_timestamps=True; pass timestamps [batch, seq]")
            inputs = inputs + self.time_embedding(time_gap_buckets(timestamps, mask, self.num_time_buckets))
        kwargs = {"inputs_embeds": self.input_dropout(inputs), "attention_mask": mask}
        if self._takes_position_ids:
            kwargs["position_ids"] = real_position_ids(mask)
        hidden = self.backbone(**kwargs).last_hidden_state  # [B, L, D_user]
        predictions = self.out_proj(self.output_dropout(hidden))  # [B, L, D_item]
        if self.last_input_weight is not None:
            predictions = predictions + self.last_input_weight * item_embeddings
        rows = torch.arange(predictions.size(0), device=predictions.device)
        return UserLLMOutput(predictions=predictions, user_embedding=predictions[rows, last_real_index(mask)])
