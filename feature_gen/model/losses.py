"""HLLM objectives.

Generative: InfoNCE between the User LLM's prediction at a position and the true next item's
embedding, cosine similarity times a learnable logit scale, against negatives sampled uniformly from
the catalogue and shared by every position in the batch. A negative that is the positive itself (same
id) or nearly identical to it (cosine above `nce_threshold`, e.g. duplicate titles) is masked out: it
is not a negative, and pushing it away fights the positive.

Discriminative: a click/no-click BCE over a score of (user, candidate). Late fusion scores the cached
candidate embedding against the user embedding in a small head (one User LLM pass per user); early
fusion appends the candidate to the user's sequence (one User LLM pass per candidate).

Total: L = gen_weight * L_gen + bce_weight * L_bce + lambda * L_next, where L_next is the next-item
InfoNCE computed on the discriminative branch's sequence outputs (an auxiliary loss keeping the User
LLM generative while it is trained to discriminate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feature_gen.config import LossConfig
from feature_gen.model.user_llm import UserLLM


class LogitScale(nn.Module):
    """exp(s) with s learnable, initialised at log(1/temperature) and kept within [0, log(max_scale)]."""

    def __init__(self, temperature_init: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        # shape [1], not a 0-d scalar: DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature_init)]))
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        # Clamp the parameter itself (not just its use) so it cannot drift into a region with no gradient.
        with torch.no_grad():
            self.log_scale.clamp_(0.0, self.max_log_scale)
        return self.log_scale.exp().squeeze(0)


@dataclass
class InfoNCEResult:
    loss: torch.Tensor  # scalar
    logits: torch.Tensor  # [N, 1 + K] scaled; column 0 is the positive, masked negatives at -inf-ish
    valid_negatives: torch.Tensor  # [N] negatives left after masking, per prediction


def info_nce(
    predictions: torch.Tensor,  # [N, D] user-side predictions (only real positions)
    positives: torch.Tensor,  # [N, D] true next-item embeddings
    negatives: torch.Tensor,  # [K, D] shared negatives
    logit_scale: torch.Tensor,  # scalar, already exp()'d
    *,
    positive_ids: torch.Tensor | None = None,  # [N] item ids of the positives
    negative_ids: torch.Tensor | None = None,  # [K] item ids of the negatives
    threshold: float = 0.99,
) -> InfoNCEResult:
    pred = F.normalize(predictions, dim=-1)
    pos = F.normalize(positives, dim=-1)
    neg = F.normalize(negatives, dim=-1)
    pos_logits = (pred * pos).sum(dim=-1, keepdim=True)  # [N, 1]
    neg_logits = pred @ neg.T  # [N, K]
    with torch.no_grad():
        same = (pos @ neg.T) > threshold  # [N, K] near-duplicates of the positive
        if positive_ids is not None and negative_ids is not None:
            same |= positive_ids.view(-1, 1) == negative_ids.view(1, -1)
    floor = torch.finfo(neg_logits.dtype).min / 4  # finite, so softmax never sees a NaN
    logits = torch.cat([pos_logits, neg_logits], dim=1) * logit_scale  # [N, 1 + K]
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, floor)], dim=1)
    labels = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    return InfoNCEResult(loss=loss, logits=logits, valid_negatives=(~same).sum(dim=1))


def sequence_info_nce(
    predictions: torch.Tensor,  # [B, L, D] User LLM output at positions 0..L-1
    targets: torch.Tensor,  # [B, L, D] embedding of the item that follows each position
    target_mask: torch.Tensor,  # [B, L] 1 where a real next item exists
    negatives: torch.Tensor,  # [K, D]
    logit_scale: torch.Tensor,
    *,
    target_ids: torch.Tensor | None = None,  # [B, L]
    negative_ids: torch.Tensor | None = None,  # [K]
    threshold: float = 0.99,
) -> InfoNCEResult:
    """InfoNCE over every real position of a batch of sequences (the HLLM training objective)."""
    keep = target_mask.to(torch.bool)
    return info_nce(
        predictions[keep],
        targets[keep],
        negatives,
        logit_scale,
        positive_ids=target_ids[keep] if target_ids is not None else None,
        negative_ids=negative_ids,
        threshold=threshold,
    )


class LateFusionHead(nn.Module):
    """Scores (user embedding, cached candidate embedding) -> click logit with a small MLP over
    [u, c, u*c]; the user embedding is computed once per request, whatever the number of candidates."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """user [B, D], candidates [B, C, D] -> logits [B, C] (unnormalised; sigmoid = click probability)."""
        u = user.unsqueeze(1).expand_as(candidates)  # [B, C, D]
        return self.mlp(torch.cat([u, candidates, u * candidates], dim=-1)).squeeze(-1)


def append_candidates(
    history: torch.Tensor,  # [B, L, D]
    mask: torch.Tensor,  # [B, L] right or left padded
    candidates: torch.Tensor,  # [B, C, D]
    timestamps: torch.Tensor | None = None,  # [B, L] unix seconds of the history
    candidate_timestamps: torch.Tensor | None = None,  # [B] the request time
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each (row, candidate) as its own sequence with the candidate in the slot right after the row's
    last real item: ([B*C, L+1, D], mask [B*C, L+1], timestamps [B*C, L+1] or None). A row with no
    history puts the candidate first."""
    batch, seq_len, dim = history.shape
    n_cand = candidates.size(1)
    hist = history.unsqueeze(1).expand(batch, n_cand, seq_len, dim).reshape(batch * n_cand, seq_len, dim)
    m = mask.to(torch.long).unsqueeze(1).expand(batch, n_cand, seq_len).reshape(batch * n_cand, seq_len)
    positions = torch.arange(seq_len, device=mask.device)
    # after the last real position; 0 when the row is empty (max over an all-zero mask would say 1)
    slot = torch.where(m.sum(dim=1) > 0, (m * positions).max(dim=1).values + 1, torch.zeros_like(m[:, 0]))
    at_slot = torch.nn.functional.one_hot(slot, seq_len + 1).to(torch.bool)  # [B*C, L+1]
    seq = torch.cat([hist, hist.new_zeros(batch * n_cand, 1, dim)], dim=1)
    seq = torch.where(at_slot.unsqueeze(-1), candidates.reshape(batch * n_cand, 1, dim), seq)
    ext = torch.cat([m, m.new_zeros(batch * n_cand, 1)], dim=1).maximum(at_slot.to(torch.long))  # ONNX: no int OR
    ext_ts = None
    if timestamps is not None:
        if candidate_timestamps is None:
            raise ValueError("append_candidates: timestamps given for the history but not candidate_timestamps [B]")
        ts = timestamps.to(torch.long).unsqueeze(1).expand(batch, n_cand, seq_len).reshape(batch * n_cand, seq_len)
        ts = torch.cat([ts, ts.new_zeros(batch * n_cand, 1)], dim=1)
        cand_ts = candidate_timestamps.to(torch.long).repeat_interleave(n_cand).unsqueeze(1)  # [B*C, 1]
        ext_ts = torch.where(at_slot, cand_ts, ts)
    return seq, ext, ext_ts


class EarlyFusionScorer(nn.Module):
    """Appends each candidate to the user's sequence, runs the User LLM, and scores the output at the
    candidate's position: the candidate meets every history item inside attention. One User LLM pass
    per (user, candidate), all of a batch's candidates in one call."""

    def __init__(self, user_llm: UserLLM, dim: int):
        super().__init__()
        self.user_llm = user_llm
        self.head = nn.Linear(dim, 1)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor,
                timestamps: torch.Tensor | None = None, candidate_timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """history [B, L, D], mask [B, L] (right or left padded), candidates [B, C, D] (+ timestamps
        [B, L] and candidate_timestamps [B] when the User LLM uses time gaps) -> logits [B, C]."""
        batch, n_cand = candidates.shape[:2]
        seq, ext, ext_ts = append_candidates(history, mask, candidates, timestamps, candidate_timestamps)
        out = self.user_llm(seq, ext, ext_ts)
        return self.head(out.user_embedding).view(batch, n_cand)


def click_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE over (user, candidate) pairs; labels 1 = click. `mask` [same shape] keeps only the
    real candidates of a padded batch (the mean is over those)."""
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    keep = mask.to(torch.bool)
    return F.binary_cross_entropy_with_logits(logits[keep], labels[keep].to(logits.dtype))


def total_loss(
    cfg: LossConfig,
    gen: torch.Tensor | None = None,
    bce: torch.Tensor | None = None,
    next_item: torch.Tensor | None = None,
) -> torch.Tensor:
    """L = gen_weight * L_gen + bce_weight * L_bce + next_weight * L_next over the parts present."""
    parts = [(cfg.gen_weight, gen), (cfg.bce_weight, bce), (cfg.next_weight, next_item)]
    present = [w * v for w, v in parts if v is not None and w > 0]
    if not present:
        raise ValueError("total_loss: no loss term with a positive weight was given")
    return torch.stack(present).sum()
