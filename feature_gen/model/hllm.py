"""HLLM: the Item LLM and User LLM joined, with the training objectives.

`build_hllm(cfg)` is how every entry point gets a model from config; weights come from the backbones
(pretrained or tiny random). The trainer and the bundle loader add their checkpoint on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from feature_gen.model.base_models import load_backbone
from feature_gen.config import ConfigError, HLLMConfig
from feature_gen.model.item_llm import ItemLLM
from feature_gen.model.item_text import check_position_budget
from feature_gen.model.losses import (
    Candidates,
    EarlyFusionScorer,
    GenerativeObjective,
    InfoNCEResult,
    LateFusionHead,
    LogitScale,
    click_bce,
    softmax_loss,
    total_loss,
)
from feature_gen.model.user_llm import UserLLM, last_real_index


@dataclass
class HLLMLosses:
    total: torch.Tensor
    gen: InfoNCEResult | None
    bce: torch.Tensor | None
    next_item: InfoNCEResult | None


class HLLM(nn.Module):
    def __init__(self, item_llm: ItemLLM, user_llm: UserLLM, cfg: HLLMConfig):
        super().__init__()
        self.cfg = cfg
        self.item_llm = item_llm
        self.user_llm = user_llm
        self.logit_scale = LogitScale(cfg.loss.temperature_init, cfg.loss.max_logit_scale)
        dim = item_llm.hidden_size
        self.late_head = LateFusionHead(dim, cfg.loss.fusion_hidden) if cfg.loss.objective == "discriminative" and cfg.loss.fusion == "late" else None
        self.early_scorer = (
            EarlyFusionScorer(user_llm, dim) if cfg.loss.objective == "discriminative" and cfg.loss.fusion == "early" else None
        )

    @property
    def item_dim(self) -> int:
        return self.item_llm.hidden_size

    def losses(
        self,
        seq_item_embs: torch.Tensor,  # [B, L, D] embeddings of the input items
        attention_mask: torch.Tensor,  # [B, L]
        target_embs: torch.Tensor,  # [B, L, D] embeddings of the next item at each position
        target_ids: torch.Tensor,  # [B, L] (PAD=0 where there is no next item)
        candidates: Candidates,  # [K] ids / [K, D] embeddings every position competes with
        timestamps: torch.Tensor | None = None,  # [B, L]
        candidate_embs: torch.Tensor | None = None,  # [B, C, D] discriminative candidates
        click_labels: torch.Tensor | None = None,  # [B, C]
        objective: GenerativeObjective | None = None,
    ) -> HLLMLosses:
        """All configured objectives on one batch: L = L_gen + L_bce + lambda * L_next.

        L_gen is the softmax loss at every position of the sequence (`objective.loss`: its logQ and
        hardest-K; without one, plain InfoNCE against `candidates`); L_next the same loss at each
        user's last position only, i.e. on the user embedding that serving reads; L_bce the click
        loss of the configured fusion (discriminative only).
        """
        loss_cfg = self.cfg.loss
        out = self.user_llm(seq_item_embs, attention_mask, timestamps)
        scale = self.logit_scale()
        target_mask = (target_ids > 0) & attention_mask.bool()  # [B, L]

        def gen_loss(pred, pos, ids):
            if objective is not None:
                return objective.loss(pred, pos, ids, candidates, scale)
            return softmax_loss(pred, pos, candidates, scale, positive_ids=ids, threshold=loss_cfg.nce_threshold)

        gen = gen_loss(out.predictions[target_mask], target_embs[target_mask], target_ids[target_mask])
        next_item = None
        if loss_cfg.next_weight > 0:
            last = last_real_index(attention_mask)
            rows = torch.arange(last.size(0), device=last.device)
            has_next = target_mask[rows, last]
            next_item = gen_loss(out.user_embedding[has_next], target_embs[rows, last][has_next],
                                 target_ids[rows, last][has_next])
        bce = None
        if loss_cfg.objective == "discriminative":
            if candidate_embs is None or click_labels is None:
                raise ValueError("objective 'discriminative' needs candidate_embs [B, C, D] and click_labels [B, C]")
            if self.late_head is not None:
                logits = self.late_head(out.user_embedding, candidate_embs)
            else:
                logits = self.early_scorer(seq_item_embs, attention_mask, candidate_embs)
            bce = click_bce(logits, click_labels)
        total = total_loss(
            loss_cfg, gen=gen.loss, bce=bce, next_item=next_item.loss if next_item is not None else None
        )
        return HLLMLosses(total=total, gen=gen, bce=bce, next_item=next_item)

    def click_logits(
        self,
        seq_item_embs: torch.Tensor,  # [B, L, D]
        attention_mask: torch.Tensor,  # [B, L]
        candidate_embs: torch.Tensor,  # [B, C, D]
        timestamps: torch.Tensor | None = None,
        candidate_timestamps: torch.Tensor | None = None,  # [B] request time (early fusion with time gaps)
    ) -> torch.Tensor:
        """Discriminative scores [B, C] with the configured fusion (serving-time scoring)."""
        if self.late_head is not None:
            user = self.user_llm(seq_item_embs, attention_mask, timestamps).user_embedding
            return self.late_head(user, candidate_embs)
        if self.early_scorer is not None:
            return self.early_scorer(seq_item_embs, attention_mask, candidate_embs, timestamps, candidate_timestamps)
        raise ConfigError("loss.objective: click scores need objective 'discriminative'")


def _load_section_backbone(section: str, model_cfg, with_tokenizer: bool):
    """load_backbone, with its errors naming the config section they came from (`item_llm.path: ...`),
    since the base-model loader cannot tell the Item LLM's settings from the User LLM's."""
    try:
        return load_backbone(model_cfg, with_tokenizer=with_tokenizer)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(section) else f"{section}.{message}") from None


def build_item_llm(cfg: HLLMConfig, with_tokenizer: bool = True):
    """(ItemLLM, tokenizer or None, description) from cfg.item_llm."""
    backbone = _load_section_backbone("item_llm", cfg.item_llm, with_tokenizer)
    check_position_budget(cfg.item_text.max_item_tokens, backbone.model.config, cfg.item_llm.pooling, backbone.description)
    item_llm = ItemLLM(backbone.model, pooling=cfg.item_llm.pooling, center=cfg.item_llm.center,
                       adapter=cfg.item_llm.adapter)
    return item_llm, backbone.tokenizer, backbone.description


def build_user_llm(cfg: HLLMConfig, item_dim: int):
    backbone = _load_section_backbone("user_llm", cfg.user_llm, with_tokenizer=False)
    if not backbone.is_causal:
        raise ConfigError(
            f"user_llm: {backbone.description} is not a causal decoder; the User LLM must not see future items"
        )
    try:
        user = UserLLM(
            backbone.model,
            item_dim=item_dim,
            use_timestamps=cfg.user_llm.use_timestamps,
            num_time_buckets=cfg.user_llm.num_time_buckets,
            projection=cfg.user_llm.projection,
            dropout=cfg.user_llm.dropout,
            last_input_skip=cfg.user_llm.last_input_skip,
        )
    except ValueError as err:  # the constructor's only refusal is a projection that cannot join the sizes
        raise ConfigError(f"user_llm.projection: {err} ({backbone.description})") from None
    return user, backbone.description


def build_hllm(cfg: HLLMConfig, with_tokenizer: bool = True) -> tuple[HLLM, object]:
    """The model described by cfg (backbone weights only) and the Item LLM's tokenizer."""
    item_llm, tokenizer, _ = build_item_llm(cfg, with_tokenizer)
    user_llm, _ = build_user_llm(cfg, item_llm.hidden_size)
    return HLLM(item_llm, user_llm, cfg), tokenizer
