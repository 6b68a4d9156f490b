"""HLLM objectives: one softmax over a row's positive and its candidates, whatever the candidates are.

Generative: the User LLM's prediction at a position is scored against the true next item and a set of
candidate items by cosine similarity times a learnable logit scale; cross-entropy with the positive as
the label. Which candidates (`loss.negatives`):

    full      the whole catalogue (rows 1..N of the item table, with gradient): the strongest
              objective for sequential recommenders (Klenitskiy & Vasilev, RecSys 2023). Needs every
              item's embedding each step: the ID baseline and stage 2 (cached catalogue).
    sampled   `num_negatives` ids drawn per step, uniform or popularity-proportional, shared by
              every row; with `logq_correction` each logit is lowered by log q(item) (Bengio &
              Senecal; Yi et al. 2019) so the sampled softmax estimates the full one. Uniform
              without correction is the paper's InfoNCE (the ablation).
    in_batch  the step's distinct target items, fresh; they are drawn in proportion to popularity,
              so logQ uses the popularity distribution.
    cache     stage 1: a catalogue cache of item embeddings recomputed every `cache_refresh_steps`
              steps without gradient. `cache_targets: cached` (default) scores each positive and
              every candidate as its cache row: one encoder version for all of them, and the Item LLM
              learns through the User LLM's input items. `fresh` replaces the rows of the step's own
              items by their differentiable embeddings, so positives and in-batch items carry the
              gradient; with a shared Item LLM that gradient is mostly a common shift of every fresh
              row away from the constant ones, and training stalls (measured: config.py's note).
              `hard_negatives: K` keeps each row's K highest-scoring negatives (the SCE idea,
              arXiv 2409.18721).

Only a row's own positive (same id) and its near-duplicates (cosine with the positive above
`nce_threshold`, e.g. duplicate titles) are masked from that row's negatives: pushing them away would
fight the positive. Other rows' positives stay negatives: the popular items are exactly the negatives
that matter most.

Discriminative: a click/no-click BCE over a score of (user, candidate). Late fusion scores the cached
candidate embedding against the user embedding in a small head (one User LLM pass per user); early
fusion appends the candidate to the user's sequence (one User LLM pass per candidate).

Total: L = gen_weight * L_gen + bce_weight * L_bce + lambda * L_next, where L_next is the next-item
loss at each user's last position (an auxiliary loss keeping the User LLM generative while it is
trained to discriminate). The trainer trains L_gen only and refuses the other fields by name
(`check_objective`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feature_gen.config import ConfigError, HLLMConfig, LossConfig
from feature_gen.model.user_llm import UserLLM

Negatives = Literal["full", "sampled", "in_batch", "cache"]


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
class Candidates:
    """The items every row's positive competes with (shared by the rows of a step)."""

    ids: torch.Tensor  # [K] internal item ids (1..N)
    embeddings: torch.Tensor  # [K, D]
    log_q: torch.Tensor | None = None  # [K] log of each candidate's sampling probability; None = no logQ correction


@dataclass
class InfoNCEResult:
    loss: torch.Tensor  # scalar
    logits: torch.Tensor  # [N, 1 + K'] scaled (and logQ-corrected); column 0 is the positive, masked at a finite floor
    valid_negatives: torch.Tensor  # [N] negatives left after masking, per prediction


def softmax_loss(
    predictions: torch.Tensor,  # [N, D] user-side predictions (only real positions)
    positives: torch.Tensor,  # [N, D] true next-item embeddings
    candidates: Candidates,  # K shared candidates
    logit_scale: torch.Tensor,  # scalar, already exp()'d
    *,
    positive_ids: torch.Tensor | None = None,  # [N]
    positive_log_q: torch.Tensor | None = None,  # [N] log q of each positive (with candidates.log_q)
    threshold: float = 0.99,
    hardest: int | None = None,
    similarity: Literal["cosine", "dot"] = "cosine",
) -> InfoNCEResult:
    """Mean cross-entropy of each positive against the candidates, cosine x logit_scale - log q
    (`similarity: dot`: the raw inner product, no scale; for ID baselines only, see LossConfig).

    A candidate is masked from row i if it has row i's positive id or its cosine with row i's positive
    exceeds `threshold`; masked logits sit at a finite floor, so a row with every candidate masked has
    loss 0 and no NaN. `hardest`: keep only each row's `hardest` highest (corrected) negative logits.

    Computed in one dtype, at least float32, whatever the operands' (autocast off here): under bf16
    training the predictions arrive in bf16 beside a float32 cached catalogue, and a softmax over a
    catalogue needs float32 logits anyway (bf16's 8-bit mantissa rounds a logit of 20 in steps of
    0.125). Gradients flow back to the operands in their own dtypes.
    """
    dtype = torch.float32
    for t in (predictions, positives, candidates.embeddings, logit_scale):
        dtype = torch.promote_types(dtype, t.dtype)
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        return _softmax_loss_fp32(
            predictions.to(dtype), positives.to(dtype), Candidates(candidates.ids, candidates.embeddings.to(dtype),
                                                                   candidates.log_q),
            logit_scale.to(dtype), positive_ids=positive_ids, positive_log_q=positive_log_q, threshold=threshold,
            hardest=hardest, similarity=similarity,
        )


def _softmax_loss_fp32(predictions, positives, candidates, logit_scale, *, positive_ids, positive_log_q, threshold,
                       hardest, similarity) -> InfoNCEResult:
    pos = F.normalize(positives, dim=-1)
    neg = F.normalize(candidates.embeddings, dim=-1)
    if similarity == "cosine":
        pred = F.normalize(predictions, dim=-1)
        pos_logits = (pred * pos).sum(dim=-1, keepdim=True) * logit_scale  # [N, 1]
        neg_logits = (pred @ neg.T) * logit_scale  # [N, K]
    else:
        pos_logits = (predictions * positives).sum(dim=-1, keepdim=True)
        neg_logits = predictions @ candidates.embeddings.T
    if candidates.log_q is not None:
        if positive_log_q is None:
            raise ValueError("softmax_loss: candidates carry log_q, so positive_log_q [N] is needed too")
        # the correction applies to every class in the softmax, the positive included (Yi et al. 2019)
        pos_logits = pos_logits - positive_log_q.view(-1, 1).to(pos_logits.dtype)
        neg_logits = neg_logits - candidates.log_q.view(1, -1).to(neg_logits.dtype)
    with torch.no_grad():
        same = (pos @ neg.T) > threshold  # [N, K] near-duplicates of the row's own positive
        if positive_ids is not None:
            same |= positive_ids.view(-1, 1) == candidates.ids.view(1, -1)
    floor = torch.finfo(neg_logits.dtype).min / 4  # finite, so softmax never sees a NaN
    neg_logits = neg_logits.masked_fill(same, floor)
    if hardest is not None and hardest < neg_logits.size(1):
        neg_logits = neg_logits.topk(hardest, dim=1).values  # masked ones sort last
    logits = torch.cat([pos_logits, neg_logits], dim=1)  # [N, 1 + K']
    labels = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels) if logits.size(0) else logits.sum() * 0.0
    kept = (~same).sum(dim=1)
    if hardest is not None:
        kept = kept.clamp(max=hardest)
    return InfoNCEResult(loss=loss, logits=logits, valid_negatives=kept)


def info_nce(
    predictions: torch.Tensor,  # [N, D]
    positives: torch.Tensor,  # [N, D]
    negatives: torch.Tensor,  # [K, D] shared negatives
    logit_scale: torch.Tensor,
    *,
    positive_ids: torch.Tensor | None = None,  # [N]
    negative_ids: torch.Tensor | None = None,  # [K]
    threshold: float = 0.99,
) -> InfoNCEResult:
    """The paper's InfoNCE: `softmax_loss` against given negatives, no logQ correction."""
    ids = negative_ids if negative_ids is not None else torch.full((negatives.size(0),), -1, dtype=torch.long)
    return softmax_loss(predictions, positives, Candidates(ids, negatives), logit_scale,
                        positive_ids=positive_ids if negative_ids is not None else None, threshold=threshold)


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
    """InfoNCE over every real position of a batch of sequences."""
    keep = target_mask.to(torch.bool)
    return info_nce(
        predictions[keep], targets[keep], negatives, logit_scale,
        positive_ids=target_ids[keep] if target_ids is not None else None,
        negative_ids=negative_ids, threshold=threshold,
    )


# ------------------------------------------------------------------ where the candidates come from


def sampling_log_q(counts: np.ndarray | torch.Tensor, sampling: Literal["uniform", "popularity"]) -> torch.Tensor:
    """log q [N+1] of drawing each item id (row 0 = padding, never drawn: -inf).

    popularity: q proportional to count + 1. The add-one keeps every item's q above zero: an item
    with no training count (a cold item, a title seen only in evaluation) can still be a positive
    or an in-batch item, and log 0 would turn its corrected logit into inf and the loss into NaN.
    """
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    num_items = counts.numel() - 1
    if sampling == "uniform":
        q = torch.full((num_items,), 1.0 / num_items, dtype=torch.float64)
    else:
        smoothed = counts[1:].clamp(min=0) + 1.0
        q = smoothed / smoothed.sum()
    return torch.cat([torch.tensor([-math.inf], dtype=torch.float64), q.log()]).float()


class NegativeSampler:
    """`count` ids per step drawn (with replacement) from q; the draw depends on (seed, step) only,
    so a resumed run draws what the interrupted one would have."""

    def __init__(self, log_q: torch.Tensor, seed: int, allowed: torch.Tensor | None = None):
        probs = log_q.double().exp()  # [N+1], row 0 = 0
        if allowed is not None:
            probs = probs * allowed.double()  # items that must never be negatives (held-out cold items)
        if probs.sum() <= 0:
            raise ValueError("NegativeSampler: no item can be drawn")
        self.probs = (probs / probs.sum()).float()
        self.log_q = self.probs.log()  # what is actually drawn, after the exclusions
        self.seed = seed

    def sample(self, count: int, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.multinomial(self.probs, count, replacement=True, generator=generator)


class CatalogueCache:
    """Stage 1's catalogue [N+1, D]: recomputed without gradient when `step % refresh_steps == 0`
    (and when empty, e.g. after a resume); between refreshes its rows are stale by up to
    `refresh_steps - 1` updates of the Item LLM."""

    def __init__(self, refresh_steps: int):
        if refresh_steps <= 0:
            raise ConfigError(f"loss.cache_refresh_steps: must be > 0; got {refresh_steps}")
        self.refresh_steps = refresh_steps
        self.table: torch.Tensor | None = None
        self.refreshed_at: int | None = None

    def get(self, step: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        # once per step: the micro-batches of one accumulated step see the same weights
        if self.table is None or (step % self.refresh_steps == 0 and self.refreshed_at != step):
            with torch.no_grad():
                self.table = compute().detach()
            self.refreshed_at = step
        return self.table

    def state(self) -> dict | None:
        """What a checkpoint keeps, so a resumed run scores against the rows the interrupted one had."""
        return None if self.table is None else {"table": self.table, "refreshed_at": self.refreshed_at}

    def load_state(self, state: dict | None) -> None:
        if state is not None:
            self.table, self.refreshed_at = state["table"], state["refreshed_at"]

    @staticmethod
    def with_fresh_rows(table: torch.Tensor, ids: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """`table` with rows `ids` replaced by `fresh` [n, D]: gradient reaches those rows only. The
        table follows `fresh` (device, dtype): a checkpointed cache is loaded on the CPU."""
        return table.detach().to(device=fresh.device, dtype=fresh.dtype).index_copy(0, ids, fresh)


class GenerativeObjective:
    """The configured generative loss of one training run: which candidates, their logQ, the cache.

    `extra_ids(step)` are ids the step must encode besides its inputs and targets (sampled negatives);
    `candidates(...)` assembles the step's candidate set; `loss(...)` is `softmax_loss` over it.
    `to(device)` places what it hands the model (ids, masks, log q) on the model's device; the draws
    themselves stay on the CPU generator, so a run draws the same negatives on any device.
    """

    def __init__(self, cfg: LossConfig, negatives: Negatives, item_counts: np.ndarray, seed: int,
                 never: torch.Tensor | None = None):
        self.cfg = cfg
        self.negatives = negatives
        num_items = len(item_counts) - 1
        self.allowed = torch.ones(num_items + 1, dtype=torch.bool)
        self.allowed[0] = False
        if never is not None and never.numel():
            self.allowed[never.long()] = False
        sampling = cfg.sampling if negatives == "sampled" else "popularity"
        self.sampler = NegativeSampler(sampling_log_q(item_counts, sampling), seed, self.allowed)
        # logQ only where candidates were drawn from q; the full catalogue and the cache are not samples
        self.log_q = self.sampler.log_q if cfg.logq_correction and negatives in ("sampled", "in_batch") else None
        self.cache = CatalogueCache(cfg.cache_refresh_steps) if negatives == "cache" else None
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> "GenerativeObjective":
        """Place the objective's tensors on `device` (in place; returns self; a no-op when already there)."""
        device = torch.device(device)
        if device != self.device:
            self.allowed = self.allowed.to(device)
            self.log_q = self.log_q.to(device) if self.log_q is not None else None
            self.device = device
        return self

    def refresh(self, step: int, item_table: Callable[[], torch.Tensor]) -> None:
        """Before the step's forward pass: refresh the catalogue cache if this step is due (a no-grad
        pass over the catalogue, kept apart from the step's graph)."""
        if self.cache is not None:
            self.cache.get(step, item_table)

    @property
    def encodes_targets(self) -> bool:
        """Whether positives are the step's fresh encodings, so the step must encode its targets. False
        under `negatives: cache` + `cache_targets: cached`: positives are cache rows, and a target that
        is not also an input need not go through the Item LLM at all."""
        return self.cache is None or self.cfg.cache_targets != "cached"

    def cached_target_rows(self, target_ids: torch.Tensor) -> torch.Tensor:
        """The cache's rows [..., D] for `target_ids` [...] (padding id 0 is the cache's zero row; no
        gradient; the cache's dtype and device): how positives are scored where `encodes_targets` is
        False. Where it is True the step's own encodings of its targets are the positives, and this
        raises RuntimeError, as it does before the cache was filled (refresh() first)."""
        if self.encodes_targets:
            raise RuntimeError(f"cached_target_rows(): negatives {self.negatives!r} with cache_targets "
                               f"{self.cfg.cache_targets!r} scores positives as the step's fresh encodings")
        if self.cache.table is None:
            raise RuntimeError("cached_target_rows() before the catalogue cache was filled (refresh() first)")
        return self.cache.table[target_ids]

    def extra_ids(self, step: int) -> torch.Tensor:
        if self.negatives == "sampled":
            return self.sampler.sample(self.cfg.num_negatives, step).to(self.device)
        return torch.zeros(0, dtype=torch.long, device=self.device)

    def candidates(
        self,
        step: int,
        batch_ids: torch.Tensor,  # [M] the step's distinct real items (inputs, targets, extra ids)
        batch_embs: torch.Tensor,  # [M, D] their fresh embeddings
        target_ids: torch.Tensor,  # [n] the step's distinct targets
        extra_ids: torch.Tensor,  # [K] what extra_ids(step) returned
        catalogue: Callable[[], torch.Tensor | None],  # [N+1, D] with gradient, or None where there is none
        item_table: Callable[[], torch.Tensor] | None = None,  # [N+1, D] without gradient (the cache's source)
    ) -> Candidates:
        lookup = torch.full((len(self.allowed),), -1, dtype=torch.long, device=self.device)
        lookup[batch_ids] = torch.arange(len(batch_ids), device=self.device)
        if self.negatives == "sampled":
            ids, embs = extra_ids, batch_embs[lookup[extra_ids]]
        elif self.negatives == "in_batch":
            ids, embs = target_ids, batch_embs[lookup[target_ids]]
        elif self.negatives == "full":
            table = catalogue()
            if table is None:
                raise ConfigError("loss.negatives: 'full' needs the catalogue's embeddings every step")
            ids = self.allowed.nonzero().squeeze(1)
            embs = table[ids]
        else:  # cache
            if item_table is not None:
                self.refresh(step, item_table)
            if self.cfg.cache_targets == "cached":
                # already without gradient; .to: a table restored from a checkpoint sits on the CPU
                table = self.cache.table.to(device=self.device, dtype=batch_embs.dtype)
            else:
                table = CatalogueCache.with_fresh_rows(self.cache.table, batch_ids, batch_embs)
            ids = self.allowed.nonzero().squeeze(1)
            embs = table[ids]
        ids_ok = self.allowed[ids]
        ids, embs = ids[ids_ok], embs[ids_ok]
        return Candidates(ids, embs, self.log_q[ids] if self.log_q is not None else None)

    def loss(self, predictions: torch.Tensor, positives: torch.Tensor, positive_ids: torch.Tensor,
             candidates: Candidates, logit_scale: torch.Tensor) -> InfoNCEResult:
        """predictions, positives [n, D], positive_ids [n] (real positions only)."""
        return softmax_loss(
            predictions, positives, candidates, logit_scale, positive_ids=positive_ids,
            positive_log_q=self.log_q[positive_ids] if self.log_q is not None else None,
            threshold=self.cfg.nce_threshold, hardest=self.cfg.hard_negatives, similarity=self.cfg.similarity,
        )


def check_objective(cfg: LossConfig, *, has_catalogue: bool, num_items: int | None, id_model: bool = False) -> Negatives:
    """The negatives this run trains with; a field the trainer cannot honour raises ConfigError naming it.

    `has_catalogue`: every item's embedding is available with gradient each step (the ID baseline,
    stage 2 with the cached catalogue). `auto` = full softmax there, in-batch + logQ in stage 1.
    `num_items` None (the data not read yet: `hllm check-config`) skips the catalogue-size rules.
    """
    defaults = LossConfig()
    if cfg.objective != "generative":
        raise ConfigError("loss.objective: this loop trains the generative objective; 'discriminative' "
                          "trains through trainer/discriminative.py (`hllm train` and trainer/train.py route it)")
    # Fields that only the discriminative objective reads: set, they would be silently ignored.
    for name in ("fusion", "bce_weight"):
        if getattr(cfg, name) != getattr(defaults, name):
            raise ConfigError(f"loss.{name}: only the discriminative objective uses it (loss.objective: "
                              f"discriminative); remove it for a generative run (got {getattr(cfg, name)!r})")
    if cfg.next_weight > 0:
        raise ConfigError(f"loss.next_weight: the auxiliary next-item loss belongs to the discriminative "
                          f"objective (loss.objective: discriminative); got {cfg.next_weight}")
    if cfg.gen_weight <= 0:
        raise ConfigError(f"loss.gen_weight: the generative loss is the only one trained; it needs a "
                          f"positive weight, got {cfg.gen_weight}")
    if cfg.similarity == "dot" and not id_model:
        raise ConfigError("loss.similarity: 'dot' is for the ID baseline only; HLLM's embeddings are served "
                          "and scored by cosine (the feature contract), so they are trained on cosine")
    negatives = cfg.negatives
    if negatives == "auto":
        # stage 1: in-batch + logQ, measured best of the stage-1 objectives (BENCHMARKS.md, issue 17)
        negatives = "full" if has_catalogue else "in_batch"
    if negatives == "full" and not has_catalogue:
        raise ConfigError("loss.negatives: 'full' needs every item's embedding each step, and stage 1 "
                          "trains the Item LLM (the catalogue cannot be re-encoded per step): use 'cache', "
                          "'sampled' or 'in_batch'")
    # Fields of one kind of negatives, set while another is trained: refused rather than ignored.
    for name, used_by in (("num_negatives", "sampled"), ("sampling", "sampled"), ("cache_refresh_steps", "cache"),
                          ("cache_targets", "cache")):
        if getattr(cfg, name) != getattr(defaults, name) and negatives != used_by:
            raise ConfigError(f"loss.{name}: only negatives '{used_by}' uses it, and this run trains with "
                              f"'{negatives}'; remove it or set loss.negatives: {used_by}")
    if num_items is None:
        return negatives
    if negatives == "sampled" and cfg.num_negatives > num_items:
        raise ConfigError(f"loss.num_negatives: {cfg.num_negatives} sampled negatives but the catalogue "
                          f"has {num_items} items; use negatives 'full' or fewer negatives")
    if cfg.hard_negatives is not None and cfg.hard_negatives >= num_items:
        raise ConfigError(f"loss.hard_negatives: {cfg.hard_negatives} is not fewer than the catalogue's "
                          f"{num_items} items; it would keep every negative")
    return negatives


def check_run_objective(cfg: HLLMConfig, num_items: int | None = None) -> Negatives:
    """`check_objective` for a whole config: the catalogue is there to score against for the ID baseline
    and in stage 2 (cached), not in stage 1. Called by the trainer before it loads a model and by
    `hllm check-config` (num_items None) so that both refuse the same configs."""
    t = cfg.train
    return check_objective(cfg.loss, has_catalogue=t.model == "sasrec" or t.stage == 2, num_items=num_items,
                           id_model=t.model == "sasrec")


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
    real candidates of a padded batch (the mean is over those). In float32 (float64 stays) whatever
    the logits' dtype: bf16 logits round the loss and its gradient."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
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
