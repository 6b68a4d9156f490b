"""The discriminative objective (issue 24): click BCE over labelled candidates with late or early
fusion, plus the generative terms, L = gen_weight * L_gen + bce_weight * L_bce + next_weight * L_next,
trained in stage 2 (frozen Item LLM, cached catalogue) by the one training loop (trainer/loop.py).
Read top to bottom:

    labels   = label_candidates(items, interactions, cfg.ranker)       # the ranker's labelling, one implementation
    requests = click_requests(...)     # one per (user, time): history strictly before it, its candidates, labels
    trainer.loop.train(DiscriminativeRecommender, examples=ClickExamples(train requests),
                       selection=ClickSelection(valid, test requests))
        # the loop's DeepSpeed steps, checkpoints/resume, NaN guard, early stopping, throughput;
        # selection on validation GAUC (AUC breaks ties) over the newest share of the train split
    -> test AUC / GAUC of the selected weights and of the generative cosine on the same labels
    -> freeze into a bundle with the click head (manifest fusion_head)

Terms: L_gen is next-item InfoNCE against the whole cached catalogue at every position of each request's
history; L_bce the click BCE of the fusion's logits (late: the User LLM once per request and a head over
[u, c, u*c]; early: each candidate appended to the history, one User LLM pass per candidate, all of a
batch's candidates in one call); L_next the same InfoNCE on the user embedding (the last position, what
the feature store serves) against each liked candidate. next_weight 0 drops L_next (not computed).

The loop sees a recommender like any other (trainer/recommenders.py `Recommender`): the batches are
labelled requests instead of windows (`ClickExamples`), and the metric it selects on is the click
GAUC instead of NDCG@10 (`ClickSelection`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from feature_gen.config import ConfigError, HLLMConfig
from feature_gen.data.contract import ITEM_ID, check_known_items, load_files, validate_interactions, validate_items
from feature_gen.data.labels import LabelError, label_candidates, point_in_time_histories
from feature_gen.data.sequences import build_interaction_data
from feature_gen.evaluation.click_metrics import auc, gauc
from feature_gen.model.hllm import HLLM
from feature_gen.model.losses import EarlyFusionScorer, LateFusionHead, click_bce, info_nce, total_loss
from trainer.recommenders import HLLMRecommender, StepOutput, catalogue_token_ids

# the newest share of the train split's requests (by time) is the validation set the head is selected on
VALID_FRACTION = 0.2


def check_discriminative(cfg: HLLMConfig) -> None:
    """Refuse, before any data or model is loaded, a discriminative config the trainer cannot run."""
    if cfg.loss.objective != "discriminative":
        raise ConfigError("loss.objective: trainer/discriminative.py trains 'discriminative'; got "
                          f"{cfg.loss.objective!r}")
    if cfg.train.model != "hllm":
        raise ConfigError(f"train.model: the click heads read the User LLM; {cfg.train.model!r} has none")
    if cfg.train.stage != 2:
        raise ConfigError(f"loss.fusion: {cfg.loss.fusion} fusion trains in stage 2 (frozen Item LLM, cached "
                          f"catalogue); train.stage is {cfg.train.stage}")
    if cfg.loss.bce_weight <= 0:
        raise ConfigError(f"loss.bce_weight: the discriminative objective needs a positive click-loss weight; "
                          f"got {cfg.loss.bce_weight}")


# ----------------------------------------------------------------------------------------- the data


@dataclass
class ClickRequests:
    """Labelled requests: one per (user, label time), candidates padded to the widest request."""

    history: np.ndarray  # [R, L] internal item ids, right-padded with 0, strictly before the request
    history_ts: np.ndarray  # [R, L] int64 unix seconds
    at: np.ndarray  # [R] request time (the label's timestamp)
    candidates: np.ndarray  # [R, C] internal item ids, 0 = padding
    labels: np.ndarray  # [R, C] 1 click / liked, 0 not, -1 padding
    users: np.ndarray  # [R] user ids (for GAUC)
    split: np.ndarray  # [R] the labels' time split ("train" / "test")

    def __len__(self) -> int:
        return len(self.at)

    def subset(self, rows: np.ndarray) -> "ClickRequests":
        return ClickRequests(*(a[rows] for a in (self.history, self.history_ts, self.at, self.candidates,
                                                  self.labels, self.users, self.split)))


def click_requests(labels: pd.DataFrame, interactions: pd.DataFrame, item_index: dict, max_len: int) -> ClickRequests:
    """Group labels into requests by (user, timestamp) and attach each request's point-in-time history
    (the user's newest `max_len` items strictly before it, feature_gen/data/labels.py)."""
    groups = labels.groupby(["user_id", "timestamp"], sort=False).indices
    first = [rows[0] for rows in groups.values()]
    hist = point_in_time_histories(labels.iloc[first], interactions, max_len)
    # a user with no event before the request has no user embedding (the cold-start default serves
    # them): neither the head nor the cosine can score it, so it is left out and counted
    warm = [r for r in range(len(first)) if len(hist.item_ids[r])]
    groups = {k: groups[k] for i, k in enumerate(groups) if len(hist.item_ids[i])}
    hist.item_ids = [hist.item_ids[r] for r in warm]
    hist.timestamps = [hist.timestamps[r] for r in warm]
    keys = list(groups)
    width = max(len(rows) for rows in groups.values())
    n = len(keys)
    out = ClickRequests(np.zeros((n, max_len), np.int64), np.zeros((n, max_len), np.int64), np.zeros(n, np.int64),
                        np.zeros((n, width), np.int64), np.full((n, width), -1, np.int64),
                        np.array([k[0] for k in keys], dtype=object), np.empty(n, dtype=object))
    split = labels["split"].to_numpy()
    item_ids, label_values = labels["item_id"].to_numpy(), labels["label"].to_numpy()
    for r, ((_, ts), rows) in enumerate(groups.items()):
        ids = np.array([item_index[i] for i in hist.item_ids[r]], dtype=np.int64)
        out.history[r, : len(ids)], out.history_ts[r, : len(ids)] = ids, hist.timestamps[r]
        out.at[r], out.split[r] = ts, split[rows[0]]
        out.candidates[r, : len(rows)] = [item_index[i] for i in item_ids[rows]]
        out.labels[r, : len(rows)] = label_values[rows]
    return out


# ---------------------------------------------------------------------------------------- the model


class DiscriminativeRecommender(HLLMRecommender):
    """Stage 2 of HLLMRecommender (frozen Item LLM, cached catalogue; items read through `catalogue()`
    [N+1, D], which applies the Item LLM's adapter when it has one) whose
    training step is the discriminative objective on a batch of labelled requests (`as_batch`):

        history [B, L], history_ts [B, L], at [B], candidates [B, C] (internal ids, 0 = padding),
        labels [B, C] (1 click, 0 not, -1 padding)  ->  StepOutput(L, stats)

    The click head is the HLLM's (`hllm.late_head` or `hllm.early_scorer`), so it trains, is selected
    and is frozen into the bundle with the User LLM."""

    def __init__(self, hllm: HLLM, catalogue_tokens: list[list[int]], pad_id: int, padding_side: str = "right"):
        super().__init__(hllm, catalogue_tokens, pad_id, stage=2, padding_side=padding_side)
        self.cfg = hllm.cfg

    def set_objective(self, objective) -> None:
        raise RuntimeError("the discriminative recommender owns its objective (cfg.loss); train it with "
                           "trainer.loop.train(..., examples=ClickExamples, selection=ClickSelection)")

    def _on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch where the catalogue table lives (a batch is built on the CPU)."""
        device = self.cached_items.device
        return {k: v.to(device) for k, v in batch.items()}

    def _inputs(self, batch: dict[str, torch.Tensor], table: torch.Tensor | None = None):
        table = self.catalogue() if table is None else table  # [N+1, D], row 0 padding
        hist = batch["history"]
        mask = (hist > 0).long()
        ts = batch["history_ts"] if self.user_model.time_embedding is not None else None
        return table[hist], mask, ts, table[batch["candidates"]]

    def _fusion_logits(self, user: torch.Tensor | None, embs, mask, ts, cands, at) -> torch.Tensor:
        """[B, C] logits of the configured fusion; `user` [B, D] is the late head's input."""
        if self.hllm.late_head is not None:
            return self.hllm.late_head(user, cands)
        return self.hllm.early_scorer(embs, mask, cands, ts, at if ts is not None else None)

    def click_logits(self, batch: dict[str, torch.Tensor], table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C] logits of the configured fusion (late: the User LLM once per request); `table` [N+1, D]
        is `catalogue()` when a caller scoring many batches computed it once."""
        batch = self._on_device(batch)
        embs, mask, ts, cands = self._inputs(batch, table)
        user = self.user_model(embs, mask, ts).user_embedding if self.hllm.late_head is not None else None
        return self._fusion_logits(user, embs, mask, ts, cands, batch["at"])

    def user_embeddings(self, batch: dict[str, torch.Tensor], table: torch.Tensor | None = None) -> torch.Tensor:
        """[B, D] the served user embedding of each request (the User LLM's last position)."""
        embs, mask, ts, _ = self._inputs(self._on_device(batch), table)
        return self.user_model(embs, mask, ts).user_embedding

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The terms of L on one batch: gen, bce, next (absent when its weight is 0) and total."""
        cfg = self.cfg.loss
        table = self.catalogue()  # [N+1, D] (through the adapter, with its gradient)
        batch = self._on_device(batch)
        embs, mask, ts, cands = self._inputs(batch, table)
        out = self.user_model(embs, mask, ts)
        scale = self.logit_scale()
        negatives, negative_ids = table[1:], torch.arange(1, table.size(0), device=table.device)
        parts: dict[str, torch.Tensor] = {}
        if cfg.gen_weight > 0:  # next item at every history position, full catalogue
            hist = batch["history"]
            nxt = (hist[:, 1:] > 0) & (hist[:, :-1] > 0)
            if nxt.any():
                parts["gen"] = info_nce(out.predictions[:, :-1][nxt], table[hist[:, 1:][nxt]], negatives, scale,
                                        positive_ids=hist[:, 1:][nxt], negative_ids=negative_ids,
                                        threshold=cfg.nce_threshold).loss
        real = batch["labels"] >= 0
        logits = self._fusion_logits(out.user_embedding, embs, mask, ts, cands, batch["at"])
        parts["bce"] = click_bce(logits, batch["labels"].clamp(min=0), real)
        if cfg.next_weight > 0:  # the served user embedding against each liked candidate
            liked = batch["labels"] == 1
            rows = liked.nonzero()[:, 0]
            if len(rows):
                parts["next"] = info_nce(out.user_embedding[rows], cands[liked], negatives, scale,
                                         positive_ids=batch["candidates"][liked], negative_ids=negative_ids,
                                         threshold=cfg.nce_threshold).loss
        parts["total"] = total_loss(cfg, gen=parts.get("gen"), bce=parts["bce"], next_item=parts.get("next"))
        return parts

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        parts = self.losses(batch)
        lengths = (batch["history"] > 0).sum(dim=1)  # [B]
        n_cand = (batch["labels"] >= 0).sum(dim=1)  # [B]
        positions = int(lengths.sum())  # the User LLM pass over each history
        if self.hllm.early_scorer is not None:  # + one pass per candidate over history + candidate
            positions += int(((lengths + 1) * n_cand).sum())
        stats = {"positions": positions, "item_tokens": 0, "candidates": int(n_cand.sum()),
                 **{f"loss_{k}": round(v.item(), 6) for k, v in parts.items() if k != "total"}}
        return StepOutput(parts["total"], stats)


def as_batch(req: ClickRequests, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
    """Tensors of some requests, trimmed to their widest history and candidate list."""
    hist, cand = req.history[rows], req.candidates[rows]
    lab = req.labels[rows]
    h_width = max(1, int((hist > 0).sum(axis=1).max()))
    c_width = max(1, int((lab >= 0).sum(axis=1).max()))
    return {"history": torch.from_numpy(hist[:, :h_width]), "history_ts": torch.from_numpy(req.history_ts[rows][:, :h_width]),
            "at": torch.from_numpy(req.at[rows]), "candidates": torch.from_numpy(cand[:, :c_width]),
            "labels": torch.from_numpy(lab[:, :c_width])}


@dataclass
class ClickExamples:
    """The loop's batch hook (trainer.loop.TrainingExamples): one example per labelled request."""

    requests: ClickRequests

    def __len__(self) -> int:
        return len(self.requests)

    def batch(self, rows: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        return as_batch(self.requests, rows)


@torch.no_grad()
def score_requests(model: DiscriminativeRecommender, req: ClickRequests, batch_size: int, kind: str = "fusion") -> np.ndarray:
    """Scores of every real candidate, flattened row-major ([n_candidates]); `kind` 'fusion' = the head's
    logit, 'cosine' = the generative user-item cosine (the bundle's similarity feature)."""
    was = model.training
    model.eval()
    scores = []
    table = model.catalogue()  # [N+1, D], once per pass (the adapter over the whole catalogue)
    for start in range(0, len(req), batch_size):
        b = as_batch(req, slice(start, start + batch_size))
        if kind == "fusion":
            s = model.click_logits(b, table)
        else:
            user = model.user_embeddings(b, table)
            # float32: bf16 embeddings (bf16 training) give cosines in steps of 2^-8, whose ties blunt AUC
            s = torch.nn.functional.cosine_similarity(user.float().unsqueeze(1),
                                                      table[b["candidates"].to(user.device)].float(), dim=-1)
        scores.append(s[(b["labels"] >= 0).to(s.device)].float().cpu().numpy())
    model.train(was)
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def click_metrics(req: ClickRequests, scores: np.ndarray) -> dict[str, float]:
    real = req.labels >= 0
    y = req.labels[real]
    users = np.repeat(req.users, real.sum(axis=1))
    return {"auc": auc(y, scores), "gauc": gauc(users, y, scores), "candidates": int(real.sum())}


@dataclass
class ClickSelection:
    """The loop's selection hook (trainer.loop.Selection): AUC / GAUC of the head's logits on the
    validation or test requests; selected on GAUC, AUC breaking ties (NaN, e.g. one class only, ranks last)."""

    valid: ClickRequests
    test: ClickRequests
    batch_size: int
    # which -> the scores of the last evaluation. The loop's last two calls are valid then test on the
    # selected weights, so after it they are the selected model's: a caller reuses them rather than
    # scoring again (early fusion pays one User LLM pass per candidate).
    last_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def evaluate(self, model, which: str) -> dict[str, float]:
        req = getattr(self, which)
        self.last_scores[which] = score_requests(model, req, self.batch_size)
        return click_metrics(req, self.last_scores[which])

    def key(self, values: dict[str, float]) -> tuple[float, ...]:
        return (float(np.nan_to_num(values["gauc"], nan=-1.0)), float(np.nan_to_num(values["auc"], nan=-1.0)))

    def describe(self, values: dict[str, float]) -> str:
        return f"valid auc {values['auc']:.4f} gauc {values['gauc']:.4f}"


# ------------------------------------------------------------------------------------- the training


@dataclass
class DiscriminativeResult:
    run_dir: Path
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_cosine: dict[str, float]  # the trained User LLM's user-item cosine
    history: list[dict] = field(default_factory=list)
    start_cosine: dict[str, float] = field(default_factory=dict)  # the starting weights' cosine (generative baseline)
    bundle: Path | None = None
    seconds: float = 0.0
    # the selected model and the labelled requests it was judged on ("train", "valid", "test"), for a
    # caller that scores them further (benchmarks/discriminative_bench.py feeds them to the ranker)
    recommender: DiscriminativeRecommender | None = field(default=None, repr=False)
    requests: dict[str, ClickRequests] = field(default_factory=dict, repr=False)
    start_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the start's cosine, valid / test
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # the selected head's, valid / test


def load_labelled_data(cfg: HLLMConfig):
    """(InteractionData, interactions with ratings, labels) for cfg.data and cfg.ranker's labelling."""
    from feature_gen.data.movielens import LOADERS

    # read as feature_gen/data/sequences.py load_interaction_data reads (encoding, timestamp unit, column
    # mapping), keeping the interactions themselves: the labels need their ratings
    if cfg.data.source == "files":
        from feature_gen.data.formats import read_mapped

        items, inter = load_files(cfg.data.items_path, cfg.data.interactions_path, cfg.item_text,
                                  cfg.data.encoding, cfg.data.timestamp_unit, read=lambda path: read_mapped(path, cfg.data))
    else:
        items, inter = LOADERS[cfg.data.source]()
        items = validate_items(items, cfg.data.source, cfg.item_text)
        inter = validate_interactions(inter, cfg.data.source, cfg.data.timestamp_unit)
        check_known_items(inter, items[ITEM_ID], cfg.data.source)
    data = build_interaction_data(items, inter, cfg.item_text, cfg.data.min_user_interactions)
    known = inter[inter[ITEM_ID].isin(set(data.items[ITEM_ID]))]  # items the Item LLM could embed
    try:
        labels = label_candidates(data.items, known, cfg.ranker, cfg.seed)
    except LabelError as err:
        raise ConfigError(f"discriminative labels: {err}") from None
    return data, known, labels


def build_click_model(cfg: HLLMConfig, data):
    """(DiscriminativeRecommender with the configured head, tokenizer, the config to freeze, base models)."""
    from feature_gen.model.hllm import build_item_llm, build_user_llm

    if cfg.train.init_bundle:
        from trainer.init_bundle import load_init_bundle

        bundle = load_init_bundle(cfg)
        # the bundle's backbones, the run's objective: a generative bundle gains a fresh head
        save_cfg = bundle.cfg.model_copy(update={"loss": cfg.loss})
        hllm, tok = bundle.model, bundle.tokenizer
        if bundle.cfg.loss.objective != "discriminative" or bundle.cfg.loss.fusion != cfg.loss.fusion:
            hllm.late_head = hllm.early_scorer = None
        dim = hllm.item_dim
        if cfg.loss.fusion == "late" and hllm.late_head is None:
            hllm.late_head = LateFusionHead(dim, cfg.loss.fusion_hidden)
        if cfg.loss.fusion == "early" and hllm.early_scorer is None:
            hllm.early_scorer = EarlyFusionScorer(hllm.user_llm, dim)
        hllm.cfg = save_cfg
        bases = bundle.manifest.get("base_models", {})
    else:
        item_llm, tok, item_desc = build_item_llm(cfg)
        user_llm, user_desc = build_user_llm(cfg, item_llm.hidden_size)
        hllm, save_cfg, bases = HLLM(item_llm, user_llm, cfg), cfg, {"item": item_desc, "user": user_desc}
    tokens = catalogue_token_ids(data.items, cfg.item_text, tok)
    # stage 2: the recommender freezes the Item LLM and caches the catalogue through the inference path
    rec = DiscriminativeRecommender(hllm, tokens, tok.pad_token_id, cfg.item_llm.padding_side)
    return rec, tok, save_cfg, bases


def split_requests(req: ClickRequests):
    """(train, valid, test): test = the labels' test split; valid = the newest VALID_FRACTION of the rest."""
    split = req.split
    test_rows = np.flatnonzero(split == "test")
    rest = np.flatnonzero(split != "test")
    rest = rest[np.argsort(req.at[rest], kind="stable")]
    n_valid = max(1, int(round(VALID_FRACTION * len(rest))))
    return req.subset(rest[:-n_valid]), req.subset(rest[-n_valid:]), req.subset(test_rows)


def train_discriminative(cfg: HLLMConfig, run_dir: str | Path | None = None, freeze: bool | None = None,
                         resume: bool = True) -> DiscriminativeResult:
    """Train the configured fusion in the one loop (trainer/loop.py: checkpoints and resume, NaN guard,
    early stopping, throughput); select on validation GAUC (AUC breaks ties); freeze a bundle."""
    from trainer.loop import train
    from trainer.progress import TrainingProgress

    started = time.perf_counter()
    check_discriminative(cfg)
    t = cfg.train
    run_dir = Path(run_dir or t.output_dir)
    torch.manual_seed(cfg.seed)
    data, inter, labels = load_labelled_data(cfg)
    req_all = click_requests(labels, inter, data.item_index(), cfg.data.max_seq_len)
    train_req, valid_req, test_req = split_requests(req_all)
    rec, tok, save_cfg, bases = build_click_model(cfg, data)
    # the starting point's user-item cosine on the same test labels: from a generative init_bundle, the
    # similarity feature the discriminative head is meant to beat
    start_scores = {name: score_requests(rec, req, t.batch_size, kind="cosine")
                    for name, req in (("valid", valid_req), ("test", test_req))}
    start_cosine = click_metrics(test_req, start_scores["test"])
    progress = TrainingProgress(f"train discriminative ({cfg.loss.fusion} fusion) stage 2")
    selection = ClickSelection(valid_req, test_req, t.batch_size)
    try:
        loop = train(rec, None, data.num_items, cfg, run_dir, max_seq_len=cfg.data.max_seq_len, resume=resume,
                     examples=ClickExamples(train_req), selection=selection, on_step=progress)
    finally:
        progress.close()
    # the loop leaves the selected weights in `rec`: the trained User LLM's cosine on the same labels
    cosine = click_metrics(test_req, score_requests(rec, test_req, t.batch_size, kind="cosine"))
    result = DiscriminativeResult(run_dir, loop.state.best_epoch, loop.valid, loop.test, cosine, loop.state.history,
                                  start_cosine=start_cosine, recommender=rec, start_scores=start_scores,
                                  scores=dict(selection.last_scores),
                                  requests={"train": train_req, "valid": valid_req, "test": test_req})
    if t.freeze_bundle if freeze is None else freeze:
        from feature_gen.model.bundle import save_bundle

        result.bundle = save_bundle(rec.hllm.eval(), tok, save_cfg, run_dir / "bundles", data_fingerprint=data.fingerprint,
                                    metrics={"stage": 2, "objective": "discriminative", "fusion": cfg.loss.fusion,
                                             "valid": loop.valid, "test": loop.test, "test_cosine": cosine,
                                             "best_epoch": result.best_epoch}, base_models=bases)
    result.seconds = time.perf_counter() - started
    summary = json.loads((run_dir / "result.json").read_text())  # the loop's: valid, test, throughput, history
    summary |= {"test_cosine": cosine, "start_cosine": start_cosine,
                "bundle": str(result.bundle) if result.bundle else None, "seconds": round(result.seconds, 1),
                "requests": {"train": len(train_req), "valid": len(valid_req), "test": len(test_req)}}
    (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    return result
