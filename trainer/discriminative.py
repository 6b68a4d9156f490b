"""The discriminative objective (issue 24): click BCE over labelled candidates with late or early
fusion, plus the generative terms, L = gen_weight * L_gen + bce_weight * L_bce + next_weight * L_next,
trained with DeepSpeed in stage 2 (frozen Item LLM, cached catalogue). Read top to bottom:

    labels   = label_candidates(items, interactions, cfg.ranker)       # the ranker's labelling, one implementation
    requests = click_requests(...)     # one per (user, time): history strictly before it, its candidates, labels
    for each epoch: batches of requests -> ClickModel.losses -> DeepSpeed backward/step
        validation AUC / GAUC (newest share of the train split) -> keep the best weights, stop early
    -> test AUC / GAUC of the selected weights and of the generative cosine on the same labels
    -> freeze into a bundle with the click head (manifest fusion_head)

Terms: L_gen is next-item InfoNCE against the whole cached catalogue at every position of each request's
history; L_bce the click BCE of the fusion's logits (late: the User LLM once per request and a head over
[u, c, u*c]; early: each candidate appended to the history, one User LLM pass per candidate, all of a
batch's candidates in one call); L_next the same InfoNCE on the user embedding (the last position, what
the feature store serves) against each liked candidate. next_weight 0 drops L_next (not computed).

This module runs beside the generative loop (trainer/loop.py) rather than through it: the loop trains
on windows of sequences, and a click step needs labelled requests. It shares its pieces (DeepSpeed
config, catalogue encoding, bundle) so the two stay one trainer.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from feature_gen.config import ConfigError, HLLMConfig
from feature_gen.data.contract import ITEM_ID, check_known_items, load_files, validate_interactions, validate_items
from feature_gen.data.labels import LabelError, label_candidates, point_in_time_histories
from feature_gen.data.sequences import build_interaction_data
from feature_gen.evaluation.click_metrics import auc, gauc
from feature_gen.inference.encoders import embed_token_ids
from feature_gen.model.hllm import HLLM
from feature_gen.model.losses import EarlyFusionScorer, LateFusionHead, click_bce, info_nce, total_loss

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


class ClickModel(nn.Module):
    """What DeepSpeed trains in stage 2: the HLLM's User LLM, logit scale and click head over a
    frozen catalogue table (the Item LLM is not a submodule: it does not train and is not sharded)."""

    def __init__(self, hllm: HLLM, table: torch.Tensor):
        super().__init__()
        self.user_llm = hllm.user_llm
        self.logit_scale = hllm.logit_scale
        self.late_head = hllm.late_head
        self.early_scorer = hllm.early_scorer
        self.cfg = hllm.cfg
        self.register_buffer("table", table, persistent=False)  # [N+1, D], row 0 padding

    def placed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the model's device (the table buffer moved with the module to DeepSpeed's)."""
        return {k: v.to(self.table.device) for k, v in batch.items()}

    def _inputs(self, batch: dict[str, torch.Tensor]):
        batch = self.placed(batch)
        hist = batch["history"]
        mask = (hist > 0).long()
        return self.table[hist], mask, batch["history_ts"], self.table[batch["candidates"]]

    def click_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[R, C] logits of the configured fusion."""
        batch = self.placed(batch)
        embs, mask, ts, cands = self._inputs(batch)
        ts_arg = ts if self.user_llm.time_embedding is not None else None
        if self.late_head is not None:
            user = self.user_llm(embs, mask, ts_arg).user_embedding  # once per request
            return self.late_head(user, cands)
        at = batch["at"] if ts_arg is not None else None
        return self.early_scorer(embs, mask, cands, ts_arg, at)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg.loss
        batch = self.placed(batch)
        embs, mask, ts, cands = self._inputs(batch)
        ts_arg = ts if self.user_llm.time_embedding is not None else None
        out = self.user_llm(embs, mask, ts_arg)
        scale = self.logit_scale()
        negatives, negative_ids = self.table[1:], torch.arange(1, self.table.size(0), device=self.table.device)
        parts: dict[str, torch.Tensor] = {}
        if cfg.gen_weight > 0:  # next item at every history position, full catalogue
            hist = batch["history"]
            nxt = (hist[:, 1:] > 0) & (hist[:, :-1] > 0)
            if nxt.any():
                parts["gen"] = info_nce(out.predictions[:, :-1][nxt], self.table[hist[:, 1:][nxt]], negatives, scale,
                                        positive_ids=hist[:, 1:][nxt], negative_ids=negative_ids,
                                        threshold=cfg.nce_threshold).loss
        real = batch["labels"] >= 0
        if self.late_head is not None:
            logits = self.late_head(out.user_embedding, cands)
        else:
            at = batch["at"] if ts_arg is not None else None
            logits = self.early_scorer(embs, mask, cands, ts_arg, at)
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


def as_batch(req: ClickRequests, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
    """Tensors of some requests, trimmed to their widest history and candidate list."""
    hist, cand = req.history[rows], req.candidates[rows]
    lab = req.labels[rows]
    h_width = max(1, int((hist > 0).sum(axis=1).max()))
    c_width = max(1, int((lab >= 0).sum(axis=1).max()))
    return {"history": torch.from_numpy(hist[:, :h_width]), "history_ts": torch.from_numpy(req.history_ts[rows][:, :h_width]),
            "at": torch.from_numpy(req.at[rows]), "candidates": torch.from_numpy(cand[:, :c_width]),
            "labels": torch.from_numpy(lab[:, :c_width])}


@torch.no_grad()
def score_requests(model: ClickModel, req: ClickRequests, batch_size: int, kind: str = "fusion") -> np.ndarray:
    """Scores of every real candidate, flattened row-major ([n_candidates]); `kind` 'fusion' = the head's
    logit, 'cosine' = the generative user-item cosine (the bundle's similarity feature)."""
    was = model.training
    model.eval()
    scores = []
    for start in range(0, len(req), batch_size):
        rows = slice(start, start + batch_size)
        b = as_batch(req, rows)
        if kind == "fusion":
            s = model.click_logits(b)
        else:
            embs, mask, ts, cands = model._inputs(b)
            ts_arg = ts if model.user_llm.time_embedding is not None else None
            user = model.user_llm(embs, mask, ts_arg).user_embedding
            s = torch.nn.functional.cosine_similarity(user.unsqueeze(1), cands, dim=-1)
        scores.append(s[(b["labels"] >= 0).to(s.device)].float().cpu().numpy())
    model.train(was)
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def click_metrics(req: ClickRequests, scores: np.ndarray) -> dict[str, float]:
    real = req.labels >= 0
    y = req.labels[real]
    users = np.repeat(req.users, real.sum(axis=1))
    return {"auc": auc(y, scores), "gauc": gauc(users, y, scores), "candidates": int(real.sum())}


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


def load_labelled_data(cfg: HLLMConfig):
    """(InteractionData, interactions with ratings, labels) for cfg.data and cfg.ranker's labelling."""
    from feature_gen.data.movielens import LOADERS

    if cfg.data.source == "files":
        items, inter = load_files(cfg.data.items_path, cfg.data.interactions_path, cfg.item_text)
    else:
        items, inter = LOADERS[cfg.data.source]()
        items = validate_items(items, cfg.data.source, cfg.item_text)
        inter = validate_interactions(inter, cfg.data.source)
        check_known_items(inter, items[ITEM_ID], cfg.data.source)
    data = build_interaction_data(items, inter, cfg.item_text, cfg.data.min_user_interactions)
    known = inter[inter[ITEM_ID].isin(set(data.items[ITEM_ID]))]  # items the Item LLM could embed
    try:
        labels = label_candidates(data.items, known, cfg.ranker, cfg.seed)
    except LabelError as err:
        raise ConfigError(f"discriminative labels: {err}") from None
    return data, known, labels


def build_click_model(cfg: HLLMConfig, data):
    """(HLLM with the configured head, tokenizer, the config to freeze, base models, catalogue table)."""
    from feature_gen.model.hllm import build_hllm
    from trainer.recommenders import catalogue_token_ids

    if cfg.train.init_bundle:
        from feature_gen.model.bundle import load_bundle

        bundle = load_bundle(cfg.train.init_bundle)
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
        for p in hllm.parameters():
            p.requires_grad_(True)
        bases = bundle.manifest.get("base_models", {})
    else:
        hllm, tok = build_hllm(cfg)
        save_cfg, bases = cfg, {}
    for p in hllm.item_llm.parameters():
        p.requires_grad_(False)
    tokens = catalogue_token_ids(data.items, cfg.item_text, tok)
    vectors = embed_token_ids(hllm.item_llm.eval(), tokens, tok.pad_token_id, padding_side=cfg.item_llm.padding_side)
    table = torch.cat([torch.zeros(1, vectors.shape[1]), torch.from_numpy(vectors)])
    return hllm, tok, save_cfg, bases, table


def split_requests(req: ClickRequests):
    """(train, valid, test): test = the labels' test split; valid = the newest VALID_FRACTION of the rest."""
    split = req.split
    test_rows = np.flatnonzero(split == "test")
    rest = np.flatnonzero(split != "test")
    rest = rest[np.argsort(req.at[rest], kind="stable")]
    n_valid = max(1, int(round(VALID_FRACTION * len(rest))))
    return req.subset(rest[:-n_valid]), req.subset(rest[-n_valid:]), req.subset(test_rows)


def train_discriminative(cfg: HLLMConfig, run_dir: str | Path | None = None, freeze: bool | None = None) -> DiscriminativeResult:
    """Train the configured fusion; select on validation GAUC (AUC breaks ties); freeze a bundle."""
    import deepspeed

    from trainer.deepspeed_setup import build_deepspeed_config, ensure_single_process_env

    started = time.perf_counter()
    check_discriminative(cfg)
    t = cfg.train
    run_dir = Path(run_dir or t.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data, inter, labels = load_labelled_data(cfg)
    req_all = click_requests(labels, inter, data.item_index(), cfg.data.max_seq_len)
    train_req, valid_req, test_req = split_requests(req_all)
    hllm, tok, save_cfg, bases, table = build_click_model(cfg, data)
    model = ClickModel(hllm, table)
    # the starting point's user-item cosine on the same test labels: from a generative init_bundle, the
    # similarity feature the discriminative head is meant to beat
    start_cosine = click_metrics(test_req, score_requests(model, test_req, t.batch_size, kind="cosine"))

    ensure_single_process_env()
    steps_per_epoch = math.ceil(len(train_req) / t.batch_size)
    total = t.max_steps or steps_per_epoch * t.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params,
                                           config=build_deepspeed_config(cfg, total))
    model = engine.module
    log_path = run_dir / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    best, best_key, best_epoch, bad, history, step = None, (-1.0, -1.0), -1, 0, [], 0
    for epoch in range(t.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_req))
        model.train()
        for start in range(0, len(order), t.batch_size):
            parts = model.losses(as_batch(train_req, order[start:start + t.batch_size]))
            if not torch.isfinite(parts["total"]):
                raise RuntimeError(f"step {step}: loss is {parts['total'].item()}")
            engine.backward(parts["total"])
            engine.step()
            step += 1
            if step % 20 == 0:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, **{k: round(v.item(), 5) for k, v in parts.items()}}) + "\n")
            if t.max_steps and step >= t.max_steps:
                break
        valid = click_metrics(valid_req, score_requests(model, valid_req, t.batch_size))
        history.append({"epoch": epoch, "step": step, **valid})
        print(f"epoch {epoch} step {step}: valid auc {valid['auc']:.4f} gauc {valid['gauc']:.4f}", flush=True)
        key = (np.nan_to_num(valid["gauc"], nan=-1.0), np.nan_to_num(valid["auc"], nan=-1.0))
        if key > best_key:
            best_key, best_epoch, bad = key, epoch, 0
            best = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            bad += 1
            if bad >= t.early_stopping_patience:
                break
        if t.max_steps and step >= t.max_steps:
            break
    model.load_state_dict(best)
    valid = history[best_epoch]
    test = click_metrics(test_req, score_requests(model, test_req, t.batch_size))
    cosine = click_metrics(test_req, score_requests(model, test_req, t.batch_size, kind="cosine"))
    result = DiscriminativeResult(run_dir, best_epoch, valid, test, cosine, history, start_cosine=start_cosine)
    if t.freeze_bundle if freeze is None else freeze:
        from feature_gen.model.bundle import save_bundle

        result.bundle = save_bundle(hllm.eval(), tok, save_cfg, run_dir / "bundles", data_fingerprint=data.fingerprint,
                                    metrics={"stage": 2, "objective": "discriminative", "fusion": cfg.loss.fusion,
                                             "valid": valid, "test": test, "test_cosine": cosine,
                                             "best_epoch": best_epoch}, base_models=bases)
    result.seconds = time.perf_counter() - started
    (run_dir / "result.json").write_text(json.dumps(
        {"best_epoch": best_epoch, "valid": valid, "test": test, "test_cosine": cosine, "start_cosine": start_cosine,
         "history": history,
         "bundle": str(result.bundle) if result.bundle else None, "seconds": round(result.seconds, 1),
         "requests": {"train": len(train_req), "valid": len(valid_req), "test": len(test_req)}}, indent=2))
    return result
