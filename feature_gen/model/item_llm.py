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

Adapter (`adapter="linear"` or `"mlp"`): a small trainable map applied after pooling and centering,
so item embedding = adapter(pooled - center). It is what lets a frozen Item LLM (stage 2) still learn
where items sit relative to each other from interactions: the backbone stays frozen and its catalogue
cache stays valid, while the adapter, cheap enough to apply to the whole catalogue every step, trains
with the User LLM. This is the text-embedding adaptor of UniSRec (Hou et al., KDD 2022: "parametric
whitening" = a learned (x - b) W), the linear case here, and a residual two-layer MLP. Both start as the
identity, so a fresh adapter leaves the embeddings as they were. Measured on MovieLens-100K with the demo
config (benchmarks/results/quality-item-adapter-ml-100k.json): a linear adapter over the frozen, centered SmolLM2 slice raised
test NDCG@10 from 0.0603 ± 0.0017 to 0.0832 ± 0.0009 (seeds 0-2).

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


ADAPTERS = ("none", "linear", "mlp")


def build_adapter(kind: str, dim: int) -> nn.Module | None:
    """A fresh item adapter of `kind` on [*, dim] vectors that starts as the identity: `linear` = a
    Linear(dim, dim) with weight I and bias 0; `mlp` = x + Linear(GELU(Linear(x))) with the second layer
    zero. None for "none". Raises ValueError for an unknown kind."""
    if kind not in ADAPTERS:
        raise ValueError(f"adapter: expected one of {ADAPTERS}; got {kind!r}")
    if kind == "none":
        return None
    if kind == "linear":
        layer = nn.Linear(dim, dim)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
        return layer
    return ResidualMLP(dim)


class ResidualMLP(nn.Module):
    """x + W2 GELU(W1 x + b1) + b2, [*, D] -> [*, D]; W2, b2 start at zero (the identity)."""

    def __init__(self, dim: int):
        super().__init__()
        self.inner = nn.Linear(dim, dim)
        self.outer = nn.Linear(dim, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(nn.functional.gelu(self.inner(x)))


class ItemLLM(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: str = "item_token", center: bool = False, adapter: str = "none"):
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
        self.adapter_kind = adapter
        self.adapter = build_adapter(adapter, hidden)

    def add_adapter(self, kind: str) -> None:
        """Give an Item LLM built without an adapter a fresh one of `kind` (identity at first): a run
        with an adapter starting from a bundle trained without one. Raises ValueError when it has one."""
        if self.adapter is not None:
            raise ValueError(f"the Item LLM already has a {self.adapter_kind!r} adapter")
        self.adapter_kind = kind
        self.adapter = build_adapter(kind, self.hidden_size)
        if self.adapter is not None:
            device = next(self.backbone.parameters()).device
            self.adapter.to(device)

    def frozen_parameters(self):
        """The parameters a stage-2 run freezes: everything but the adapter (backbone, [ITEM] token)."""
        adapter = {id(p) for p in self.adapter.parameters()} if self.adapter is not None else set()
        return [p for p in self.parameters() if id(p) not in adapter]

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """The adapter on pooled, centered features [*, D] -> item embeddings [*, D] (identity without one)."""
        return features if self.adapter is None else self.adapter(features)

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
        """input_ids, attention_mask: [B, T] (either padding side) -> item embeddings [B, D]:
        adapt(features(...))."""
        return self.adapt(self.features(input_ids, attention_mask))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The frozen part of the Item LLM: pooled and centered hidden states [B, D], before the adapter
        (what a stage-2 run caches once for the catalogue). Raises ValueError for mis-shaped inputs or a
        row without real tokens."""
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


class ItemFeatures(nn.Module):
    """The Item LLM's frozen part as an item encoder: `ItemLLM.features` (pooled, centered, before the
    adapter), [B, T] token ids and mask -> [B, D]. What a stage-2 run caches for the catalogue, and what
    a center is fitted on."""

    def __init__(self, item_llm: ItemLLM):
        super().__init__()
        self.item_llm = item_llm

    @property
    def hidden_size(self) -> int:
        return self.item_llm.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.item_llm.features(input_ids, attention_mask)

