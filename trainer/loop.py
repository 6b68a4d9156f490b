"""The training loop for every recommender and stage: read it top to bottom.

    for each epoch: for each optimizer step (train.gradient_accumulation_steps micro-batches of users,
            deterministic order per epoch):
        windows -> .to(engine.device) -> recommender.training_step (the configured objective,
        trainer/recommenders.py) -> DeepSpeed backward per micro-batch, step on the last (clipping inside)
        -> log loss, tokens/s, FLOP/s; checkpoint every N steps
    evaluate on validation (full ranking, NDCG@10) -> keep the best weights, stop early
    (hooks: `examples` replaces the windows, `selection` the metric; the discriminative objective
    trains on labelled requests and is selected on click GAUC, trainer/discriminative.py)
        (a run from a bundle evaluates its starting weights first: epoch 0 can be selected)
    -> test metrics for the selected weights only -> stage 3: freeze into a bundle

Resume: DeepSpeed checkpoints (weights, optimizer, scheduler) carry the step, epoch and batch index
in their client state; the batch order of an epoch depends only on (seed, epoch), so a resumed run
skips exactly the batches already done, and metrics.jsonl is cut back to the checkpoint's step so the
loss curve continues instead of repeating.

Steps are optimizer steps: `state.step`, `train.max_steps`, `train.checkpoint_every_steps`, the LR
schedule and the log all count them; a step is `train.gradient_accumulation_steps` micro-batches of
`train.batch_size` users (an epoch's last step may have fewer), each micro-batch's loss weighted
1/(micro-batches in the step), so a step's gradient is the mean over its micro-batches.

Devices: the model is where DeepSpeed put it (`engine.device`); each micro-batch is moved there with
`TrainingBatch.to`, and the recommender makes every other tensor on its own `device`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from feature_gen.config import ConfigError, HLLMConfig, dotted_fields
from feature_gen.data.sequences import (
    EvalSet,
    LeaveOneOutSplit,
    history_windows,
    random_windows,
    training_windows,
)
from feature_gen.evaluation.metrics import RankingMetrics
from feature_gen.evaluation.protocol import chance_recalls, evaluate_vectors
from feature_gen.inference.encoders import embed_users
from feature_gen.model.losses import GenerativeObjective, check_objective
from trainer.deepspeed_setup import clamp_logit_scale_copies, full_parameters, whole_state_dict
from trainer.recommenders import Recommender, count_parameters, numpy_seed_for


class Selection(Protocol):
    """The selection-metric hook: what the loop evaluates after each epoch and selects the weights on.
    Default: full ranking of the split's next items, NDCG@10 (`RankingSelection`); the discriminative
    objective selects on validation GAUC (trainer/discriminative.py)."""

    def evaluate(self, model, which: str) -> dict[str, float]: ...  # which: "valid" | "test"
    def key(self, values: dict[str, float]) -> tuple[float, ...]: ...  # larger is better, compared as a tuple
    def describe(self, values: dict[str, float]) -> str: ...  # one line for the progress print


class TrainingExamples(Protocol):
    """The batch hook: `len()` examples, and the batch of some of them that `training_step` reads.
    Default: windows of the split's training sequences (the generative objective's batches)."""

    def __len__(self) -> int: ...
    def batch(self, rows: np.ndarray, epoch: int): ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stopped and the last good checkpoint is kept."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_key: tuple = (-1.0,)  # Selection.key of the best validation so far
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)  # per-epoch validation metrics

    def as_client_state(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    valid: dict[str, float]
    test: dict[str, float]
    throughput: dict[str, float]
    bundle: Path | None = None


def matmul_peak_flops(size: int = 1024, repeats: int = 5, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> float:
    """The training device's matmul rate (FLOP/s) right now in the training dtype, the denominator of
    the achieved-FLOP/s ratio."""
    device = torch.device(device)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def evaluate(recommender: Recommender, eval_set: EvalSet, cfg: HLLMConfig, max_seq_len: int) -> RankingMetrics:
    """Full ranking of each eval user's next item in the space the model is trained on (cfg.loss.similarity)."""
    was_training = recommender.training
    recommender.eval()
    with full_parameters(recommender):  # ZeRO-3: item_table reads ID/heads weights directly
        table = recommender.item_table()  # [N+1, D], what the User model reads
        first = next(recommender.user_model.parameters(), None)  # a parameter-free user model (pooling) has none
        user_dtype = first.dtype if first is not None else table.dtype  # bf16 under train.precision bf16
        users = embed_users(recommender.user_model, table.to(user_dtype), eval_set.histories,
                            eval_set.history_timestamps, max_seq_len)  # inputs follow the model's device
    recommender.train(was_training)
    # ranked in float32 on the CPU whatever the training precision and device (users.vectors are float32)
    return evaluate_vectors(users.vectors, table.float().cpu(), eval_set, cfg, similarity=cfg.loss.similarity)


@dataclass
class RankingSelection:
    """The generative default: full ranking of the split's held-out next items, selected on NDCG@10."""

    split: LeaveOneOutSplit
    cfg: HLLMConfig

    def evaluate(self, model, which: str) -> dict[str, float]:
        return evaluate(model, getattr(self.split, which), self.cfg, self.cfg.data.max_seq_len).values

    def key(self, values: dict[str, float]) -> tuple[float, ...]:
        return (values["ndcg@10"],)

    def describe(self, values: dict[str, float]) -> str:
        return f"valid ndcg@10 {values['ndcg@10']:.4f} recall@10 {values['recall@10']:.4f}"


def _log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


logger = logging.getLogger(__name__)


def _changed_fields(saved: Path, cfg: HLLMConfig) -> list[str]:
    """`section.field: old -> new` for every config field that differs from the run's saved config.yaml
    (empty when there is none or it does not parse): what a resume would silently mix."""
    try:
        old = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return []
    a, b = dotted_fields(old if isinstance(old, dict) else {}), dotted_fields(cfg.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _truncate_log(path: Path, step: int) -> None:
    """Keep only records up to `step`: what happened after the checkpoint is replayed, not repeated."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def training_users(num_users: int, seed: int, fraction: float) -> np.ndarray:
    """Sorted indices of the users a run trains on: all, or (data-efficiency runs) a fixed
    `fraction` of them chosen by the seed alone, so every epoch and every model sees the same subset."""
    if fraction >= 1.0:
        return np.arange(num_users)
    keep = np.random.default_rng([seed, 10_007]).permutation(num_users)[: max(1, int(round(fraction * num_users)))]
    return np.sort(keep)


def generative_examples(recommender: Recommender, split: LeaveOneOutSplit, num_items: int, cfg: HLLMConfig,
                        max_seq_len: int, never_sample: np.ndarray | None = None
                        ) -> tuple[GenerativeWindows, GenerativeObjective]:
    """Set `recommender`'s next-item objective from `cfg.loss` and return (its training windows, that
    objective; `objective.negatives` is the negatives mode in force, e.g. "in_batch").

    The one place the generative set-up lives (the training loop and benchmarks/stage1_objectives.py
    call it): the users trained on (`train.train_user_fraction`, users with >= 2 training items), the
    popularity counts the logQ correction reads (each item's count in those histories, index 0 =
    padding), the windows (`train.windows`, `train.window_stride`), and `never_sample` (item indices
    never drawn as negatives). Raises ConfigError naming the `loss.*` field the model cannot honour."""
    t_cfg = cfg.train
    trainable_users = [u for u in range(len(split.train)) if len(split.train[u]) >= 2]
    chosen = training_users(len(trainable_users), cfg.seed, t_cfg.train_user_fraction)
    seqs = [split.train[trainable_users[i]] for i in chosen]
    tss = [split.train_timestamps[trainable_users[i]] for i in chosen]
    counts = np.bincount(np.concatenate([np.zeros(0, dtype=np.int64), *seqs]).astype(np.int64), minlength=num_items + 1)
    trained = None
    if t_cfg.windows == "all":
        stride = min(t_cfg.window_stride or max_seq_len, max_seq_len)  # stage 1 trains shorter windows
        seqs, tss, trained = history_windows(seqs, tss, max_seq_len, stride)
    never = torch.as_tensor(never_sample if never_sample is not None else [], dtype=torch.long)
    negatives = check_objective(cfg.loss, has_catalogue=recommender.has_catalogue(), num_items=num_items,
                                id_model=t_cfg.model == "sasrec")
    objective = GenerativeObjective(cfg.loss, negatives, counts, cfg.seed, never)
    recommender.set_objective(objective)
    # one training example per window; training_windows keeps each example's last max_seq_len + 1 items
    return GenerativeWindows(seqs, tss, max_seq_len, t_cfg.windows, cfg.seed, trained), objective


def train(
    recommender: Recommender,
    split: LeaveOneOutSplit,
    num_items: int,
    cfg: HLLMConfig,
    run_dir: str | Path,
    *,
    max_seq_len: int,
    resume: bool = True,
    on_step=None,
    never_sample: np.ndarray | None = None,
    examples: TrainingExamples | None = None,
    selection: Selection | None = None,
) -> TrainResult:
    """Train `recommender` with DeepSpeed; returns metrics of the selected (best-validation) weights.

    `state.step` and `train.max_steps` count optimizer steps (`train.gradient_accumulation_steps`
    micro-batches each). The objective (`cfg.loss`) is checked before anything starts: a field the
    trainer cannot honour raises ConfigError naming it. `examples` and `selection` replace the split's
    windows and the ranking selection (`split` may then be None): a recommender that owns its objective
    (the discriminative one) trains on its own batches and is selected on its own metric."""
    import deepspeed

    from trainer.deepspeed_setup import build_deepspeed_config, ensure_single_process_env

    t_cfg = cfg.train
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, best_path, log_path = run_dir / "checkpoints", run_dir / "best" / "model.safetensors", run_dir / "metrics.jsonl"
    ensure_single_process_env()
    torch.manual_seed(cfg.seed)

    selection = selection or RankingSelection(split, cfg)
    objective = None  # a recommender given its own `examples` owns its objective
    if examples is None:
        examples, objective = generative_examples(recommender, split, num_items, cfg, max_seq_len, never_sample)
    negatives = objective.negatives if objective is not None else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro_batches_per_epoch = math.ceil(math.ceil(len(examples) / world) / t_cfg.batch_size)
    accumulation = build_deepspeed_config(cfg, 1, world)["gradient_accumulation_steps"]  # the trainer's or the JSON's
    total_steps = t_cfg.max_steps or math.ceil(micro_batches_per_epoch / accumulation) * t_cfg.epochs
    ds_config = build_deepspeed_config(cfg, total_steps, world)
    params = [p for p in recommender.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(model=recommender, model_parameters=params, config=ds_config)
    model = engine.module
    # Data parallel: every rank trains and evaluates; rank 0 alone writes the log, the selected
    # weights and result.json (DeepSpeed checkpoints are written by every rank, as DeepSpeed requires).
    writer = engine.global_rank == 0
    say = print if writer else (lambda *args, **kwargs: None)
    resuming = resume and (ckpt_dir / "latest").is_file()
    # rank 0 alone reads the saved config (it alone rewrites it, below, once the checkpoint has loaded)
    changed = _changed_fields(run_dir / "config.yaml", cfg) if resuming and writer else []
    if changed:
        logger.warning("%s: resuming a checkpoint trained with another config (%s); --no-resume starts over",
                       run_dir, "; ".join(changed[:8]))

    def log(record: dict) -> None:
        if writer:
            _log(log_path, record)

    state = TrainState()
    if resuming:
        try:
            _, client = engine.load_checkpoint(str(ckpt_dir))
        except RuntimeError as exc:  # torch's "size mismatch for ...": another model's checkpoint
            if "size mismatch" not in str(exc) and "Missing key" not in str(exc) and "Unexpected key" not in str(exc):
                raise
            differs = f" (the config differs in {'; '.join(changed[:8])})" if changed else ""
            raise ConfigError(f"train.output_dir: {run_dir} holds a checkpoint of another model{differs}; resume "
                              f"it with the config it was trained with, or start over with --no-resume (or "
                              f"another train.output_dir)") from None
        state = TrainState(**{k: v for k, v in (client or {}).items() if k in TrainState.__dataclass_fields__})
        if "best_ndcg" in (client or {}):  # a checkpoint written before the selection hook
            state.best_key = (client["best_ndcg"],)
        if objective is not None and objective.cache is not None:
            objective.cache.load_state((client or {}).get("catalogue_cache"))
        if writer:
            _truncate_log(log_path, state.step)
        say(f"resumed from {ckpt_dir} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})", flush=True)
    elif writer:  # a fresh start must not select, or append to, what an earlier run left behind
        log_path.unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
    if writer:
        # what produced this folder, `load_config`-able as is (input paths are absolute by then); a
        # resumed run rewrites it with the config that finished the run. Written only once the
        # checkpoint has loaded: a refused resume leaves the record of the config it was trained with.
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    if writer and hasattr(on_step, "begin"):  # a progress hook learns the run's length (and where a resume starts)
        on_step.begin(total_steps, state.step)

    def checkpoint() -> None:
        client = state.as_client_state()
        if objective is not None and objective.cache is not None:
            client["catalogue_cache"] = objective.cache.state()
        engine.save_checkpoint(str(ckpt_dir), tag=f"step{state.step}", client_state=client)
        for old in sorted(ckpt_dir.glob("step*"), key=lambda p: int(p.name[4:]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)  # keep the two newest

    def select(values: dict[str, float]) -> None:
        """Record a validation result; keep the weights if they are the best so far."""
        key = tuple(selection.key(values))
        state.history.append({"epoch": state.epoch, "step": state.step, **values})
        log({"step": state.step, "epoch": state.epoch, "valid": values})
        say(f"epoch {state.epoch} step {state.step}: {selection.describe(values)}", flush=True)
        if key > tuple(state.best_key):
            state.best_key, state.best_epoch, state.bad_epochs = key, state.epoch, 0
            best_path.parent.mkdir(parents=True, exist_ok=True)
            state_now = whole_state_dict(model)  # every rank (ZeRO-3 gathers), rank 0 writes
            if engine.global_rank == 0:
                save_file(state_now, str(best_path))
        else:
            state.bad_epochs += 1

    # A run that starts from trained weights (stage 2 from the stage-1 bundle) first evaluates where it
    # starts: epoch 0 is a candidate, so a stage that only makes validation worse selects its start
    # instead of its least bad epoch.
    if cfg.train.init_bundle and state.step == 0 and not state.history:
        select(selection.evaluate(model, "valid"))

    item_params, user_params = model.compute_params()
    bf16 = bool(ds_config["bf16"]["enabled"])
    on_gpu = engine.device.type == "cuda"
    peak = matmul_peak_flops(8192 if on_gpu else 1024, device=engine.device, dtype=torch.bfloat16 if bf16 else torch.float32)
    tokens_done = positions_done = input_positions_done = 0
    train_seconds = 0.0
    # A resumed run that had already stopped (patience spent, or max_steps reached) trains no further:
    # the stop is part of its state, not re-decided after one more epoch.
    stop = state.bad_epochs >= t_cfg.early_stopping_patience or bool(t_cfg.max_steps and state.step >= t_cfg.max_steps)
    if stop and resume:
        say(f"the checkpoint's run had stopped (step {state.step}, {state.bad_epochs} evaluations without gain): "
            "nothing left to train", flush=True)
    while state.epoch < t_cfg.epochs and not stop:
        order = numpy_seed_for(cfg.seed, state.epoch).permutation(len(examples))
        order = order[engine.global_rank :: engine.world_size]  # data parallel: each rank its share
        batches = [order[i : i + t_cfg.batch_size] for i in range(0, len(order), t_cfg.batch_size)]
        model.train()
        while state.batch_in_epoch < len(batches):
            group = batches[state.batch_in_epoch : state.batch_in_epoch + accumulation]  # one optimizer step
            t0 = time.perf_counter()
            step_loss, stats = 0.0, {}
            for i, rows in enumerate(group):
                last = i == len(group) - 1
                # DeepSpeed reduces gradients and steps the optimizer on the boundary; set here rather than
                # counted by DeepSpeed, so that an epoch's short last step is a boundary too
                engine.set_gradient_accumulation_boundary(last)
                batch = examples.batch(rows, state.epoch)
                # a TrainingBatch is placed here; a recommender with its own batches (dicts) places them itself
                out = model.training_step(batch.to(engine.device) if hasattr(batch, "to") else batch, state.step)
                loss = out.loss
                # The mean over ranks: what is logged, and what every rank checks, so that a NaN on one rank
                # stops all of them at the same step instead of leaving the others waiting in a collective.
                mean_loss = loss.detach().clone()
                if engine.world_size > 1:
                    torch.distributed.all_reduce(mean_loss)
                    mean_loss /= engine.world_size
                if not torch.isfinite(mean_loss):
                    ckpt = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else "none"
                    raise TrainingDiverged(
                        f"loss is {mean_loss.item()} at step {state.step} (epoch {state.epoch}); stopped without "
                        f"updating; last good checkpoint: {ckpt_dir / ckpt if ckpt != 'none' else 'none'}"
                    )
                # each micro-batch weighs 1/len(group): the step's gradient is the mean over its micro-batches
                engine.backward(loss / len(group), scale_wrt_gas=False)
                if last:
                    grad_norm = _grad_norm(model)  # before clipping; DeepSpeed clips to train.max_grad_norm inside step()
                engine.step()
                if last:
                    clamp_logit_scale_copies(model)  # the optimizer's own copy, where it keeps one
                step_loss += mean_loss.item() / len(group)
                for key, value in out.stats.items():  # counts add up over micro-batches; ratios are the last one's
                    stats[key] = stats.get(key, 0) + value if key in ("positions", "input_positions", "item_tokens") else value
            dt = time.perf_counter() - t0
            train_seconds += dt
            text_tokens = stats["item_tokens"] if model.training_item_llm else 0
            tokens_done += text_tokens
            positions_done += stats["positions"]
            # what the User model computed on; a recommender without the split (discriminative) counts it in positions
            input_positions_done += stats.get("input_positions", stats["positions"])
            state.step += 1
            state.batch_in_epoch += len(group)
            log({"step": state.step, "epoch": state.epoch, "loss": round(step_loss, 6),
                 "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "seconds": round(dt, 4),
                 **stats, "item_tokens": text_tokens, "micro_batches": len(group)})
            kept, offered = stats.get("negatives_kept", 0), stats.get("negatives_offered", 0)
            if state.step == 1 and kept < 0.1 * offered:
                say(f"warning: only {kept:.1f} of {offered} negatives survive the cosine > "
                    f"{cfg.loss.nce_threshold} mask: item embeddings are nearly identical, the loss has almost "
                    "no signal (raise loss.nce_threshold to 1.0 for randomly initialised models)", flush=True)
            if on_step is not None:
                on_step(state)
            if state.step % t_cfg.checkpoint_every_steps == 0:
                checkpoint()
            if t_cfg.max_steps and state.step >= t_cfg.max_steps:
                stop = True
                break
        if state.batch_in_epoch >= len(batches):
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.epoch % t_cfg.eval_every_epochs == 0 or stop or state.epoch == t_cfg.epochs:
                select(selection.evaluate(model, "valid"))
                if state.bad_epochs >= t_cfg.early_stopping_patience:
                    say(f"early stop: no validation gain for {state.bad_epochs} evaluations", flush=True)
                    stop = True
            checkpoint()

    if best_path.is_file():
        with full_parameters(model):  # ZeRO-3: loaded on rank 0, re-sharded to every rank on exit
            model.load_state_dict(load_file(str(best_path)), strict=False)
    valid = selection.evaluate(model, "valid")
    test = selection.evaluate(model, "test")
    # forward + backward ~ 6 FLOP per parameter per token (matmul parameters only; lookups are free)
    flops = 6.0 * (item_params * tokens_done + user_params * input_positions_done)
    throughput = {
        "world_size": engine.world_size,  # figures below are rank 0's; the data-parallel total is x world_size
        "gradient_accumulation_steps": accumulation,
        "bf16": bf16,
        "device": str(engine.device),
        "train_seconds": train_seconds,
        "item_tokens_per_s": tokens_done / train_seconds if train_seconds else 0.0,
        "positions_per_s": positions_done / train_seconds if train_seconds else 0.0,  # trained targets
        "input_positions_per_s": input_positions_done / train_seconds if train_seconds else 0.0,
        "trainable_params": count_parameters(model),
        "achieved_flops": flops / train_seconds if train_seconds else 0.0,
        "matmul_peak_flops": peak,
    }
    throughput["fraction_of_matmul_peak"] = throughput["achieved_flops"] / peak
    if writer:
        summary = {"seed": cfg.seed, "negatives": negatives, "best_epoch": state.best_epoch, "valid": valid, "test": test,
                   "throughput": throughput, "history": state.history}
        if split is not None:
            # the floor each metric is read against, on these very users: a cold-item split's test
            # users (and so its chance) change with the seed; the quality tables print it from here
            summary["eval_users"] = {which: len(getattr(split, which).targets) for which in ("valid", "test")}
            summary["chance"] = {which: chance_recalls(getattr(split, which), num_items, cfg.eval.ks)
                                 for which in ("valid", "test")}
        (run_dir / "result.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(run_dir=run_dir, state=state, valid=valid, test=test, throughput=throughput)


class GenerativeWindows:
    """The generative batches: windows of the training sequences (`train.windows`: last | random | all),
    one example each; `batch(rows, epoch)` gives `training_windows` of those rows (a `TrainingExamples`)."""

    def __init__(self, seqs, tss, max_seq_len: int, mode: str, seed: int, trained: list[int] | None = None):
        self.seqs, self.tss, self.max_seq_len, self.mode, self.seed = seqs, tss, max_seq_len, mode, seed
        self.trained = trained  # `all`: targets each window trains (history_windows)
        self._epoch, self._epoch_seqs = None, (seqs, tss)

    def __len__(self) -> int:
        return len(self.seqs)

    def batch(self, rows: np.ndarray, epoch: int):
        if self.mode == "random" and epoch != self._epoch:
            # depends on (seed, epoch) only, so a resumed epoch sees the same windows
            self._epoch = epoch
            self._epoch_seqs = random_windows(self.seqs, self.tss, self.max_seq_len,
                                              np.random.default_rng([self.seed, epoch, 1]))
        seqs, tss = self._epoch_seqs
        trained = None if self.trained is None else [self.trained[r] for r in rows]
        return training_windows([seqs[r] for r in rows], [tss[r] for r in rows], self.max_seq_len, trained)


def _grad_norm(model) -> float:
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return round(float(torch.stack(norms).norm()), 6) if norms else 0.0
