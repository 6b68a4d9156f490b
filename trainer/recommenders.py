"""What the training loop trains: a `Recommender` owns its objective and its training step.

    training_step(batch, step) -> StepOutput(loss, stats)   the configured loss on one batch of windows
    item_table() -> [N+1, D]                               the whole catalogue for evaluation (row 0 = padding)
    device                                                 where its parameters are; the batch must be there
    user_model(item_embs, mask, timestamps)                -> UserLLMOutput (evaluation embeds users with it)

HLLM (either stage) and the SASRec baseline implement it over the same step (`_SequenceStep`):
encode each distinct item of the step once (inputs, targets, sampled negatives), run the user model,
assemble the candidates the objective asks for (feature_gen/model/losses.py: full catalogue, sampled,
in-batch, or stage 1's catalogue cache) and score every real position against them. The
discriminative objective is a stage-2 HLLMRecommender too (trainer/discriminative.py
`DiscriminativeRecommender`): its training_step reads labelled requests instead of windows, and the
loop selects it on click GAUC through its selection hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from feature_gen.data.sequences import TrainingBatch
from feature_gen.inference.encoders import batches_by_length, embed_token_ids
from feature_gen.inference.item_table import padded_item_table
from feature_gen.model.positions import real_position_ids
from feature_gen.model.item_text import pad_token_ids
from feature_gen.model.losses import Candidates, GenerativeObjective, InfoNCEResult, LogitScale
from feature_gen.model.hllm import HLLM
from feature_gen.model.item_llm import ItemFeatures
from feature_gen.model.user_llm import UserLLMOutput, last_real_index
from trainer.deepspeed_setup import full_numel, full_parameters

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, what backward() runs on
    stats: dict[str, float] = field(default_factory=dict)  # logged beside the loss (positions, item_tokens, ...)


@runtime_checkable
class Recommender(Protocol):
    user_model: nn.Module
    training_item_llm: bool  # the Item LLM trains in this run (its tokens are counted)

    @property
    def device(self) -> torch.device: ...  # the parameters' device: the batch and every tensor the step makes

    def set_objective(self, objective: GenerativeObjective) -> None: ...
    def has_catalogue(self) -> bool: ...  # every item's embedding is available with gradient each step
    def training_step(self, batch: TrainingBatch, step: int) -> StepOutput: ...
    def item_table(self) -> torch.Tensor: ...  # [N+1, D], no gradient
    def compute_params(self) -> tuple[int, int]: ...


@dataclass
class _EncodedStep:
    item_embs: torch.Tensor  # [B, L, D] inputs
    target_embs: torch.Tensor  # [B, L, D]
    target_mask: torch.Tensor  # [B, L] bool, a real next item exists that this window trains
    input_mask: torch.Tensor  # [B, L] bool, a real input item (the User model runs every one)
    candidates: Candidates
    real_ids: torch.Tensor  # [M] the distinct items encoded this step


class _SequenceStep:
    """The step shared by every recommender: encode once, assemble the objective's candidates."""

    objective: GenerativeObjective | None = None

    @property
    def device(self) -> torch.device:
        """Where the parameters are (DeepSpeed's engine put them there). The batch given to
        training_step must be on it (`TrainingBatch.to`); everything the step creates is made on it."""
        return next(self.parameters()).device

    def set_objective(self, objective: GenerativeObjective) -> None:
        self.objective = objective

    def _encode_step(self, batch: TrainingBatch, step: int) -> _EncodedStep:
        if self.objective is None:
            raise RuntimeError("set_objective() before training_step()")
        inputs, targets, mask = batch.inputs.item_ids, batch.targets, batch.inputs.attention_mask
        self.objective.to(self.device)  # follows the model (a no-op after the first step)
        self.objective.refresh(step, self._table_for_cache)  # stage 1's cache, before this step's graph
        extra = self.objective.extra_ids(step)
        # Encode each distinct item once per step, whatever its role (input, target, negative); targets
        # only where the objective scores them fresh (a cached-target cache scores them as cache rows).
        fresh_targets = self.objective.encodes_targets
        pool = [inputs.flatten(), targets.flatten(), extra] if fresh_targets else [inputs.flatten(), extra]
        unique, inverse = torch.unique(torch.cat(pool), return_inverse=True)
        real = unique > 0
        encoded = self.encode_items(unique[real])  # [M, D]
        dtype = next(p for p in self.parameters() if p.requires_grad).dtype
        encoded = encoded.to(dtype)
        emb = torch.zeros(len(unique), encoded.size(-1), dtype=encoded.dtype, device=encoded.device).index_copy(0, real.nonzero().squeeze(1), encoded)
        n_in, n_tg = inputs.numel(), targets.numel()
        target_mask = (targets > 0) & mask.bool()
        candidates = self.objective.candidates(
            step, unique[real], encoded, torch.unique(targets[target_mask]), extra,
            catalogue=self.catalogue,
        )
        return _EncodedStep(
            item_embs=emb[inverse[:n_in]].view(*inputs.shape, -1),
            target_embs=(emb[inverse[n_in : n_in + n_tg]].view(*targets.shape, -1) if fresh_targets
                         else self.objective.cached_target_rows(targets).to(device=emb.device, dtype=emb.dtype)),
            target_mask=target_mask, input_mask=mask.bool(), candidates=candidates, real_ids=unique[real],
        )

    def _table_for_cache(self) -> torch.Tensor:
        with full_parameters(self):  # ZeRO-3: the cache reads every weight
            return self.item_table().to(self.device)

    def _stats(self, enc: _EncodedStep, gen: InfoNCEResult) -> dict[str, float]:
        # positions: next-item targets trained (RecBole's count); input_positions: positions the User model
        # ran forward and backward, more than the targets when train.window_stride leaves context untrained
        return {"positions": int(enc.target_mask.sum()), "input_positions": int(enc.input_mask.sum()),
                "item_tokens": self.text_tokens(enc.real_ids),
                # negatives that survive the same-item masks; near zero when item embeddings have collapsed
                "negatives_kept": round(float(gen.valid_negatives.float().mean()), 2) if gen.valid_negatives.numel() else 0.0,
                "negatives_offered": int(enc.candidates.ids.numel())}


def text_pca_rows(features: torch.Tensor, dim: int, std: float = 0.02) -> torch.Tensor:
    """Item rows [N, dim] from frozen text embeddings `features` [N, D]: centred on the catalogue mean,
    projected on the top `dim` principal components (torch.linalg.svd), then scaled by one factor so that
    the rows' overall std is `std` (the N(0, 0.02) init they replace), keeping the components' relative
    variance. Deterministic for the same features. Raises ValueError when dim > min(N, D): a catalogue
    or an embedding narrower than the rows has no more components."""
    n, d = features.shape
    if dim > min(n, d):
        raise ValueError(f"train.id_init: ID rows {dim} wide need at least {dim} items and a text "
                         f"embedding at least {dim} wide (got {n} items, width {d})")
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    rows = x @ vh[:dim].T
    scale = rows.std()
    if scale == 0:  # every item's text embeds alike: nothing to start from
        raise ValueError("train.id_init: the catalogue's text embeddings are all equal")
    return (rows * (std / scale)).float()


class HLLMRecommender(_SequenceStep, nn.Module):
    """HLLM for training. Stage 1: the Item LLM runs on each batch's unique items (trainable).
    Stage 2: the Item LLM is frozen and its catalogue embeddings are computed once (`cache_items`).

    `text_plus_id` adds a learned ID embedding (width `hllm.item_dim`) to each item's text embedding;
    `id_only` (stage 2, a diagnostic: `train.id_only`) uses that ID embedding alone, so the User LLM, its
    projections and the objective run over ID items as SASRec's do and the Item LLM is never read.
    `item_dim` (`train.item_dim`): a learned Linear(Item LLM width -> item_dim) after the Item LLM (stage 1,
    trained with it) or its adapter (stage 2) makes the item space narrower (ID rows as wide);
    `item_projection_init` "zero" starts that map at zero (with text_plus_id: training starts as the ID-only
    model), "default" keeps PyTorch's init. `id_init` "text_pca" starts the ID rows at the frozen Item LLM's
    catalogue embeddings on their top principal components (`text_pca_rows`), "text_pca_permuted" at those
    rows dealt to items in a random order (the control), "normal" at N(0, 0.02). `id_anchor_weight` > 0 (with
    a text start) adds weight x mean over items of (1 - cos(ID row, its start)) to the loss: the start becomes
    a prior the rows are pulled back to, not only where they begin."""

    def __init__(self, hllm: HLLM, catalogue_tokens: list[list[int]], pad_id: int, stage: int,
                 text_plus_id: bool = False, padding_side: str = "right", id_only: bool = False,
                 user_model: nn.Module | None = None, item_dim: int | None = None,
                 item_projection_init: str = "default", id_init: str = "normal", id_anchor_weight: float = 0.0):
        super().__init__()
        self.hllm = hllm
        if user_model is not None:
            # an ablation (train.user_model): another sequence model of the User LLM's call shape takes its
            # place in the HLLM, so the loss (HLLM.losses) and the evaluation both run it
            hllm.user_llm = user_model
        self.user_model = hllm.user_llm
        self.logit_scale = hllm.logit_scale
        self.catalogue_tokens = [[]] + list(catalogue_tokens)  # index = internal item id (0 = padding)
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.stage = stage
        text_dim = hllm.item_dim
        dim = item_dim or text_dim
        # item_dim (train.item_dim): a learned map from the Item LLM's width into a narrower item space
        self.item_projection = (nn.Linear(text_dim, dim) if item_dim is not None and not id_only else None)
        if item_projection_init == "zero":
            # training starts as the ID-only model; the map still gets a gradient (dL/dW = g x text^T), the
            # adapter before it only once the map has moved off zero
            if self.item_projection is None or not text_plus_id:
                raise ValueError("item_projection_init zero: needs item_dim and text_plus_id")
            nn.init.zeros_(self.item_projection.weight)
            nn.init.zeros_(self.item_projection.bias)
        elif item_projection_init != "default":
            raise ValueError(f"item_projection_init: default or zero (got {item_projection_init!r})")
        if id_only and (text_plus_id or stage != 2):
            raise ValueError("id_only: a stage-2 option that replaces text_plus_id (got "
                             f"stage {stage}, text_plus_id {text_plus_id})")
        self.id_only = id_only
        self.id_embedding = (nn.Embedding(len(self.catalogue_tokens), dim, padding_idx=0)
                             if text_plus_id or id_only else None)
        if id_init not in ("normal", "text_pca", "text_pca_permuted"):
            raise ValueError(f"id_init: normal, text_pca or text_pca_permuted (got {id_init!r})")
        if id_init != "normal" and self.id_embedding is None:
            raise ValueError(f"id_init {id_init}: needs ID rows (text_plus_id or id_only)")
        if id_anchor_weight < 0 or (id_anchor_weight > 0 and id_init == "normal"):
            raise ValueError(f"id_anchor_weight {id_anchor_weight}: >= 0, and > 0 only with a text start (id_init)")
        self.id_anchor_weight = id_anchor_weight
        # [N, dim] where the ID rows of items 1..N started (a text start only): the anchor's target, and
        # what the logged drift (id_start_cos) is measured from. Rebuilt by the constructor, not checkpointed.
        self.register_buffer("id_start", torch.zeros(0, dim), persistent=False)
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.02)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        self.register_buffer("cached_items", torch.zeros(0, text_dim), persistent=False)
        features = None  # the frozen catalogue embeddings [N, D], where this constructor computes them
        if stage == 2:
            # the backbone and [ITEM] token freeze; an adapter (item_llm.adapter) keeps training
            for p in hllm.item_llm.frozen_parameters():
                p.requires_grad_(False)
            if id_only:  # nothing trains in the Item LLM; only text_pca reads it, once
                for p in hllm.item_llm.parameters():
                    p.requires_grad_(False)
            else:
                features = self.cache_items()[1:]
        elif hllm.item_llm.needs_center:
            features = self._fit_center(self._embed_catalogue("fitting item_llm.center on the catalogue"))
        if id_init != "normal":
            if features is None:
                features = self._embed_catalogue(f"embedding the catalogue for train.id_init: {id_init}")
            rows = text_pca_rows(features, dim)
            if id_init == "text_pca_permuted":  # the control: the same rows, no item's own text (global RNG: the run's seed)
                rows = rows[torch.randperm(rows.size(0))]
            with torch.no_grad():
                self.id_embedding.weight[1:] = rows.to(self.id_embedding.weight)
            self.id_start = rows.to(self.id_embedding.weight).clone()
        if stage == 2 and not id_only:
            self._log_item_parts()

    @torch.no_grad()
    def _log_item_parts(self) -> None:
        """Log the mean norm of each part of a catalogue item as initialised (before any checkpoint is
        loaded): with cosine scores the larger part sets the direction, so a text part far above the ID
        rows starts training text-led."""
        if self.id_embedding is None:
            return
        ids = torch.arange(1, len(self.catalogue_tokens), device=self.device)
        text = self._adapted(self.cached_items[1:], ids)  # a view of the cache, not a copy
        log.info("item embedding at init: text part mean norm %.3f, ID rows mean norm %.3f",
                 float(text.norm(dim=1).mean()), float(self.id_embedding(ids).norm(dim=1).mean()))

    def _embed_catalogue(self, what: str) -> torch.Tensor:
        """[N, D] float32 every item's features (the Item LLM's frozen part, before any adapter) through
        the inference path (row order = internal ids 1..N)."""
        from feature_gen.logs import Progress

        with Progress(len(self.catalogue_tokens) - 1, what, "items") as bar:
            vectors = embed_token_ids(ItemFeatures(self.hllm.item_llm), self.catalogue_tokens[1:], self.pad_id,
                                      padding_side=self.padding_side, progress=bar)
        return torch.from_numpy(vectors)

    def _fit_center(self, raw: torch.Tensor) -> torch.Tensor:
        """Fit the Item LLM's center on the catalogue's raw embeddings [N, D]; return them centered."""
        center = self.hllm.item_llm.fit_center(raw).to(raw.device)
        log.info("item_llm.center: fitted on %d catalogue items (norm of the mean %.2f, mean item norm "
                 "%.2f before, %.2f after)", raw.size(0), float(center.norm()), float(raw.norm(dim=1).mean()),
                 float((raw - center).norm(dim=1).mean()))
        return raw - center

    @torch.no_grad()
    def cache_items(self) -> torch.Tensor:
        """Stage 2: embed the whole catalogue once with the frozen Item LLM (the inference path, up to
        the adapter, which trains and is applied per step); a centering Item LLM not fitted yet is
        fitted on these vectors first."""
        vectors = self._embed_catalogue("caching the catalogue")
        if self.hllm.item_llm.needs_center:
            vectors = self._fit_center(vectors)
        self.cached_items = padded_item_table(vectors).to(self.device)  # a buffer: it moves with the module
        return self.cached_items

    @property
    def training_item_llm(self) -> bool:
        return self.stage == 1

    def has_catalogue(self) -> bool:
        return self.stage == 2

    def catalogue(self) -> torch.Tensor | None:
        """[N+1, D] every item's training embedding (stage 2: the cache, + ID embeddings with gradient)."""
        if self.stage != 2:
            return None
        return self.encode_items(torch.arange(len(self.catalogue_tokens), device=self.device))

    def training_step(self, batch: TrainingBatch, step: int) -> StepOutput:
        enc = self._encode_step(batch, step)
        targets = batch.targets * enc.target_mask
        out = self.hllm.losses(enc.item_embs, batch.inputs.attention_mask, enc.target_embs, targets,
                               enc.candidates, batch.inputs.timestamps, objective=self.objective)
        stats = self._stats(enc, out.gen)
        return StepOutput(out.total + self._id_start_prior(stats), stats)

    def _id_start_prior(self, stats: dict) -> torch.Tensor | float:
        """The text start's prior term of the loss: id_anchor_weight x mean over items of (1 - cos(ID row,
        its start)), 0.0 without a pull. With a text start it logs into `stats` how far the rows have moved
        (`id_start_cos`, with or without a pull) and, with a pull, its share of the logged loss."""
        if self.id_start.numel() == 0:  # no text start: nothing to measure the rows against
            return 0.0
        with torch.set_grad_enabled(self.id_anchor_weight > 0 and torch.is_grad_enabled()):
            start_cos = self.id_start_cos()
        stats["id_start_cos"] = round(float(start_cos.detach().mean()), 4)
        if self.id_anchor_weight == 0:
            return 0.0
        anchor = self.id_anchor_weight * (1 - start_cos).mean()
        stats["id_anchor_loss"] = round(float(anchor.detach()), 6)
        return anchor

    def id_start_cos(self) -> torch.Tensor:
        """[N] cosine between each item's ID row now (with gradient) and where it started (id_start)."""
        ids = torch.arange(1, self.id_start.size(0) + 1, device=self.device)
        rows = self.id_embedding(ids)  # through forward, so ZeRO-3 gathers the table
        # float32: in bf16 a cosine near 1 rounds to 1 (steps of 2^-8), and the anchor's pull with it
        return F.cosine_similarity(rows.float(), self.id_start.float(), dim=-1)

    def _adapted(self, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Stage 2: the Item LLM's adapter on cached features [M, D] of items `ids` [M], then the item_dim
        map; the padding id 0 stays a zero row (an adapter's bias would move it)."""
        item_llm = self.hllm.item_llm
        if item_llm.adapter is None and self.item_projection is None:
            return features
        if item_llm.adapter is not None:
            # the cache is a float32 buffer and stays one under bf16 training (DeepSpeed casts parameters,
            # not buffers): a bf16 adapter needs its input in bf16 (found on a GPU: benchmarks/gpu_check.py)
            features = item_llm.adapt(features.to(next(item_llm.adapter.parameters()).dtype))
        if self.item_projection is None:  # the adapter alone: its bias must not move the padding row either
            return features * (ids > 0).unsqueeze(-1).to(features.dtype)
        return self._projected(features, ids)

    def _projected(self, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The item_dim map on text embeddings [M, D] of items `ids` [M] -> [M, item_dim], padding rows
        zero (the map's bias would move them); the embeddings unchanged without item_dim."""
        if self.item_projection is None:
            return text
        # .to: stage 2's cache and stage 1's evaluation table (embed_token_ids: float32) meet bf16 weights
        # under bf16 training
        text = text.to(self.item_projection.weight.dtype)
        return self.item_projection(text) * (ids > 0).unsqueeze(-1).to(text.dtype)

    def text_tokens(self, ids: torch.Tensor) -> int:
        return sum(len(self.catalogue_tokens[i]) + 1 for i in ids.tolist())  # +1: the [ITEM] slot

    def compute_params(self) -> tuple[int, int]:
        """(Item LLM, User model) parameters that cost matmul FLOPs per token (embedding tables excluded)."""
        return _matmul_params(self.hllm.item_llm.backbone), _matmul_params(self.user_model)

    # Stage 1 encodes a step's items in chunks of similar length: padding every item to the longest
    # title wasted ~40 % of the Item LLM's tokens on MovieLens (mean 19 of 32). Same vectors either way.
    length_chunk = 128

    def encode_items(self, ids: torch.Tensor) -> torch.Tensor:
        if self.id_only:
            return self.id_embedding(ids)
        if self.stage == 2:
            text = self._adapted(self.cached_items[ids], ids)
        else:
            tokens = [self.catalogue_tokens[i] for i in ids.tolist()]
            chunks = batches_by_length([len(t) for t in tokens], self.length_chunk)
            parts = []
            for idx in chunks:
                batch = pad_token_ids([tokens[i] for i in idx], self.pad_id, self.padding_side)
                parts.append(self.hllm.item_llm(batch.input_ids.to(self.device), batch.attention_mask.to(self.device)))
            order = torch.from_numpy(np.concatenate(chunks)).to(self.device) if chunks else ids[:0]
            text = torch.cat(parts)[torch.argsort(order)] if parts else self.cached_items[:0]
            text = self._projected(text, ids)  # stage 1 with item_dim: the map trains with the Item LLM
        if self.id_embedding is not None:
            return text + self.id_embedding(ids)
        return text

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        if self.id_only:
            return self.id_embedding.weight.detach().clone()
        if self.stage == 2:
            ids = torch.arange(self.cached_items.size(0), device=self.cached_items.device)
            # a copy either way: the cache is this module's buffer; padding stays a zero row
            table = self._adapted(self.cached_items, ids).clone()
        else:
            was_training = self.training
            vectors = embed_token_ids(self.hllm.item_llm, self.catalogue_tokens[1:], self.pad_id,
                                      padding_side=self.padding_side)
            self.train(was_training)
            table = padded_item_table(vectors).to(self.device)
            table = self._projected(table, torch.arange(table.size(0), device=table.device))
        if self.id_embedding is not None:
            table = table + self.id_embedding.weight.detach()
        return table


class SASRecUser(nn.Module):
    """SASRec's sequence model (Kang & McAuley 2018) laid out as RecBole 1.2 implements it, the
    version practitioners run as the standard baseline: input = LayerNorm(item + learned position),
    dropout; each block is post-norm (x = LN(x + Dropout(Attn(x))); x = LN(x + Dropout(FFN(x)))),
    GELU feed-forward, dropout on the attention probabilities too; every Linear and Embedding drawn from
    N(0, 0.02), biases zero. Same call shape as UserLLM: item_embs [B, L, D], attention_mask [B, L]
    (1 = real item, left or right padded) -> predictions [B, L, D] and user_embedding [B, D] (the last
    real position).

    Why this layout: the earlier pre-norm variant (items scaled by sqrt(D), positions from N(0, 1),
    a final LayerNorm) learned more slowly per step and scored 0.70 x RecBole's test NDCG@10 on ML-100K
    with the same objective and split (benchmarks/results/quality-sasrec-peer-ml-100k.json)."""

    def __init__(self, dim: int, layers: int, heads: int, max_len: int, dropout: float, ffn_dim: int | None = None,
                 layer_norm_eps: float = 1e-12, init_std: float = 0.02):
        super().__init__()
        self.item_dim = dim
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.attns = nn.ModuleList(nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) for _ in range(layers))
        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim, eps=layer_norm_eps) for _ in range(layers))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, ffn_dim or dim), nn.GELU(), nn.Linear(ffn_dim or dim, dim), nn.Dropout(dropout))
            for _ in range(layers)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(dim, eps=layer_norm_eps) for _ in range(layers))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=init_std)
                nn.init.zeros_(module.in_proj_bias)

    def forward(self, item_embs: torch.Tensor, attention_mask: torch.Tensor, timestamps=None) -> UserLLMOutput:
        batch, length, _ = item_embs.shape
        if length > self.max_len:
            raise ValueError(f"SASRec was built for sequences up to {self.max_len}; got {length}")
        mask = attention_mask.to(torch.bool)  # [B, L]
        # positions counted from each row's first real item, as for the LLMs (and RecBole's right padding)
        pos = real_position_ids(attention_mask)
        x = self.dropout(self.input_norm(item_embs + self.position(pos))) * mask.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        blocked = causal.unsqueeze(0) | (~mask).unsqueeze(1)  # [B, L, L]
        # A padded query row may see nothing; let it see itself so softmax stays finite (its output is masked).
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=x.device).unsqueeze(0)
        for attn, attn_norm, ffn, ffn_norm in zip(self.attns, self.attn_norms, self.ffns, self.ffn_norms):
            a, _ = attn(x, x, x, attn_mask=blocked.repeat_interleave(attn.num_heads, dim=0), need_weights=False)
            x = attn_norm(x + self.dropout(a))
            x = ffn_norm(x + ffn(x)) * mask.unsqueeze(-1)
        rows = torch.arange(batch, device=x.device)
        return UserLLMOutput(predictions=x, user_embedding=x[rows, last_real_index(attention_mask)])


class ProjectedSASRecUser(nn.Module):
    """SASRec's blocks in the User LLM's place (train.user_model: sasrec, an ablation): item embeddings
    [B, L, D_item] -> Linear -> SASRecUser of width `dim` -> Linear -> predictions [B, L, D_item] and
    user_embedding [B, D_item] (the last real position). The same linear maps in and out as the User
    LLM's `projection: linear`, so only the blocks between them differ: post-norm, learned absolute
    positions, GELU, dropout inside every block (SASRecUser's docstring) against a Llama's pre-RMSNorm,
    rotary positions, SwiGLU and no dropout."""

    def __init__(self, item_dim: int, dim: int, layers: int, heads: int, max_len: int, dropout: float,
                 ffn_dim: int | None = None):
        super().__init__()
        self.item_dim = item_dim
        self.in_proj = nn.Linear(item_dim, dim)
        self.blocks = SASRecUser(dim, layers, heads, max_len, dropout, ffn_dim)
        self.out_proj = nn.Linear(dim, item_dim)

    def forward(self, item_embs: torch.Tensor, attention_mask: torch.Tensor, timestamps=None) -> UserLLMOutput:
        predictions = self.out_proj(self.blocks(self.in_proj(item_embs), attention_mask).predictions)
        rows = torch.arange(predictions.size(0), device=predictions.device)
        return UserLLMOutput(predictions=predictions, user_embedding=predictions[rows, last_real_index(attention_mask)])


class SASRecRecommender(_SequenceStep, nn.Module):
    """The ID-based baseline: an item-ID embedding table and SASRec's sequence model."""

    def __init__(self, num_items: int, dim: int, layers: int, heads: int, max_len: int, dropout: float,
                 temperature_init: float = 0.07, max_logit_scale: float = 100.0, ffn_dim: int | None = None):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.items.weight, std=0.02)
        self.user_model = SASRecUser(dim, layers, heads, max_len, dropout, ffn_dim)
        self.logit_scale = LogitScale(temperature_init, max_logit_scale)

    def encode_items(self, ids: torch.Tensor) -> torch.Tensor:
        return self.items(ids)

    def has_catalogue(self) -> bool:
        return True

    def catalogue(self) -> torch.Tensor:
        return self.items.weight  # [N+1, D] with gradient

    def training_step(self, batch: TrainingBatch, step: int) -> StepOutput:
        enc = self._encode_step(batch, step)
        out = self.user_model(enc.item_embs, batch.inputs.attention_mask)
        keep = enc.target_mask
        gen = self.objective.loss(out.predictions[keep], enc.target_embs[keep], batch.targets[keep],
                                  enc.candidates, self.logit_scale())
        return StepOutput(self.objective.cfg.gen_weight * gen.loss, self._stats(enc, gen))

    training_item_llm = False

    def text_tokens(self, ids: torch.Tensor) -> int:
        return 0

    def compute_params(self) -> tuple[int, int]:
        return 0, _matmul_params(self.user_model)

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        table = self.items.weight.detach().clone()
        table[0] = 0
        return table


def _matmul_params(module: nn.Module) -> int:
    return sum(full_numel(m.weight) for m in module.modules() if isinstance(m, nn.Linear)) + sum(
        full_numel(m.in_proj_weight) for m in module.modules() if isinstance(m, nn.MultiheadAttention)
    )


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(full_numel(p) for p in module.parameters() if p.requires_grad or not trainable_only)


def catalogue_token_ids(items, text_cfg, tokenizer) -> list[list[int]]:
    """Token ids of every catalogue item in internal-id order (index 0 = item 1)."""
    from feature_gen.model.item_text import build_item_text, check_prompt_budget, tokenize_item_texts

    check_prompt_budget(tokenizer, text_cfg)
    texts = [build_item_text(row, text_cfg) for row in items.to_dict("records")]
    if any(t is None for t in texts):
        raise ValueError("catalogue_token_ids: items without text must be rejected before training")
    return tokenize_item_texts(texts, tokenizer, text_cfg.max_item_tokens)


def numpy_seed_for(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])
