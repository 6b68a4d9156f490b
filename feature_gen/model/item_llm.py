"""Item LLM: item text -> item embedding.

The text tokens are followed by one learned `[ITEM]` embedding; the item embedding is the backbone's
last-layer hidden state at that position (HLLM). `pooling="mean"` averages the text tokens' hidden
states instead (the paper's ablation baseline) and appends nothing.

Padding: the `[ITEM]` slot goes right after each row's last real token, and position ids are counted
over real tokens only, so a row computes the same function whatever the batch's padding side or width.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from feature_gen.model.positions import last_real_index, real_position_ids


def _accepts(module: nn.Module, arg: str) -> bool:
    return arg in inspect.signature(module.forward).parameters


class ItemLLM(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: str = "item_token"):
        super().__init__()
        if pooling not in ("item_token", "mean"):
            raise ValueError(f"pooling: expected 'item_token' or 'mean'; got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        # One learned embedding, initialised like a vocabulary row (std 0.02).
        self.item_token = nn.Parameter(torch.randn(1, hidden) * 0.02) if pooling == "item_token" else None
        self._takes_position_ids = _accepts(backbone, "position_ids")

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [B, T] (either padding side) -> item embeddings [B, D]."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"ItemLLM expects input_ids and attention_mask of shape [batch, tokens]; got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if bool((attention_mask.sum(dim=1) == 0).any()):
            raise ValueError("ItemLLM: a row has no real tokens (empty item text must be rejected before)")
        mask = attention_mask.to(torch.long)
        token_embeds = self.backbone.get_input_embeddings()(input_ids)  # [B, T, D]
        if self.pooling == "mean":
            hidden = self._run(token_embeds, mask)  # [B, T, D]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

        batch, width, dim = token_embeds.shape
        last_real = last_real_index(mask)  # [B] index of each row's last text token
        slot = last_real + 1  # [B] where [ITEM] goes
        embeds = torch.cat([token_embeds, token_embeds.new_zeros(batch, 1, dim)], dim=1)  # [B, T+1, D]
        ext_mask = torch.cat([mask, mask.new_zeros(batch, 1)], dim=1)  # [B, T+1]
        rows = torch.arange(batch, device=mask.device)
        # Left-padded rows have their slot at T (the appended column); right-padded ones overwrite
        # their first pad position. Out-of-place so autograd sees a clean graph.
        item_tok = self.item_token.to(embeds.dtype).expand(batch, dim)
        slot_onehot = torch.zeros(batch, width + 1, 1, dtype=embeds.dtype, device=embeds.device)
        slot_onehot[rows, slot] = 1.0
        embeds = embeds * (1 - slot_onehot) + slot_onehot * item_tok.unsqueeze(1)
        ext_mask = ext_mask.clone()
        ext_mask[rows, slot] = 1
        hidden = self._run(embeds, ext_mask)  # [B, T+1, D]
        return hidden[rows, slot]  # [B, D]

    def _run(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": mask}
        if self._takes_position_ids:
            kwargs["position_ids"] = real_position_ids(mask)
        return self.backbone(**kwargs).last_hidden_state
