"""Item LLM: item text -> item embedding.

The text tokens are followed by one learned `[ITEM]` embedding; the item embedding is the backbone's
last-layer hidden state at that position (HLLM). `pooling="mean"` averages the text tokens' hidden
states instead (the paper's ablation baseline) and appends nothing.

Centering (`center=True`): the catalogue's mean embedding, fitted once before training from the
initial Item LLM (`fit_center`) and stored with the model, is subtracted from every item embedding. A
frozen, mean-pooled decoder LLM puts all items in a narrow cone (one shared direction dominates: mean
pairwise cosine 0.987 for SmolLM2-135M's first 8 layers on MovieLens-100K titles), which leaves cosine
scores almost no range and feeds the User LLM inputs ~9x the norm of its own token embeddings;
removing the mean is the standard remedy for that anisotropy (Mu & Viswanath 2018, "All-but-the-Top";
Su et al. 2021, whitening) and is part of the model, so training, export and serving all see it.

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
    def __init__(self, backbone: nn.Module, pooling: str = "item_token", center: bool = False):
        super().__init__()
        if pooling not in ("item_token", "mean"):
            raise ValueError(f"pooling: expected 'item_token' or 'mean'; got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        # One learned embedding, initialised like a vocabulary row (std 0.02).
        self.item_token = nn.Parameter(torch.randn(1, hidden) * 0.02) if pooling == "item_token" else None
        self._takes_position_ids = _accepts(backbone, "position_ids")
        # [D] subtracted from every embedding; all zeros until fitted (a real catalogue mean never is).
        if center:
            self.register_buffer("center", torch.zeros(hidden))
        else:
            self.center = None

    @property
    def needs_center(self) -> bool:
        """True when centering is on and no catalogue mean has been fitted or loaded yet."""
        return self.center is not None and not bool(self.center.any())

    @torch.no_grad()
    def fit_center(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Set the center to the mean of `embeddings` [N, D] (uncentered, the whole catalogue) and
        return it [D]. Raises ValueError when centering is off or the input is not [N>0, D]."""
        if self.center is None:
            raise ValueError("ItemLLM was built without centering (item_llm.center: false)")
        if embeddings.dim() != 2 or embeddings.size(0) == 0 or embeddings.size(1) != self.center.numel():
            raise ValueError(f"fit_center expects [items, {self.center.numel()}]; got {tuple(embeddings.shape)}")
        self.center.copy_(embeddings.to(self.center.device, self.center.dtype).mean(dim=0))
        return self.center

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
            return self._centered((hidden * weights).sum(dim=1) / weights.sum(dim=1))

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
        return self._centered(hidden[rows, slot])  # [B, D]

    def _centered(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.center is None else pooled - self.center.to(pooled.dtype)

    def _run(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": mask}
        if self._takes_position_ids:
            kwargs["position_ids"] = real_position_ids(mask)
        return self.backbone(**kwargs).last_hidden_state
