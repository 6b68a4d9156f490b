"""The discriminative objective side by side (issue 24), on the same later-period labels.

    # latency of one request of 100 candidates: late fusion (User LLM once + head) vs early (100 passes)
    python benchmarks/discriminative_bench.py latency --config configs/tiny.yaml --history 50 --candidates 100
    # quality: for each seed, late fusion, late with next_weight 0, early fusion, each from the same
    # generative stage-2 bundle (train.init_bundle); the bundle's own user-item cosine on the same test labels;
    # the example ranker (IDs + context) with each score as its feature, and without
    python benchmarks/discriminative_bench.py quality --config CONFIG --set train.init_bundle=BUNDLE \
        --set loss.next_weight=0.5 --seeds 0 1 2

Writes JSON under --results-dir (default benchmarks/results/: discriminative_latency.json,
discriminative_quality.json); `markdown` prints either as the table BENCHMARKS.md holds.

Quality, what each row is (all on the same later-period test labels of a seed, feature_gen/data/labels.py):
    generative_cosine   the init bundle's user-item cosine (the similarity feature), before any click training
    late, early         the click head's logit after discriminative training (L = L_gen + L_bce + lambda L_next)
    late_next0          late fusion with next_weight 0 (no L_next)
    ranker+<score>      the example TF ranker (IDs + hour/weekday) with that score as its one extra feature
    ranker_ids_only     the same ranker without it
The ranker trains on the validation requests' labels (scores out of sample: the heads train on the
train split) and is judged on the test requests, as every other row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from feature_gen.config import load_config, parse_override

RESULTS = Path(__file__).resolve().parent / "results"


def latency(cfg, history: int, candidates: int, repeats: int) -> dict:
    from feature_gen.model.hllm import build_hllm
    from feature_gen.model.losses import EarlyFusionScorer, LateFusionHead

    model, _ = build_hllm(cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"objective": "generative"})}),
                          with_tokenizer=False)
    user_llm = model.user_llm.eval()
    dim = model.item_dim
    late, early = LateFusionHead(dim, cfg.loss.fusion_hidden).eval(), EarlyFusionScorer(user_llm, dim).eval()
    gen = torch.Generator().manual_seed(0)
    hist, mask = torch.randn(1, history, dim, generator=gen), torch.ones(1, history, dtype=torch.long)
    ts = torch.arange(history).view(1, -1) * 60 if user_llm.time_embedding is not None else None
    at = torch.tensor([history * 60]) if ts is not None else None
    cands = torch.randn(1, candidates, dim, generator=gen)

    def late_call():
        return late(user_llm(hist, mask, ts).user_embedding, cands)

    def early_call():
        return early(hist, mask, cands, ts, at)

    out = {}
    with torch.inference_mode():
        for name, fn in (("late", late_call), ("early", early_call)):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name] = {"median_ms": round(1e3 * statistics.median(times), 3), "min_ms": round(1e3 * min(times), 3)}
    out["early_over_late"] = round(out["early"]["median_ms"] / out["late"]["median_ms"], 1)
    return out


VARIANTS = {"late": {}, "late_next0": {"next_weight": 0.0}, "early": {"fusion": "early"}}


def _ranker_split(req, scores: np.ndarray, split: str):
    """A ranker TrainingSet of some requests' candidates with `scores` [n] as the one HLLM feature."""
    import pandas as pd

    from ranker_integration.training_set import TrainingSet

    real = req.labels >= 0
    per_row = real.sum(axis=1)
    frame = pd.DataFrame({"user_id": np.repeat(req.users, per_row).astype(str),
                          "item_id": req.candidates[real].astype(str), "timestamp": np.repeat(req.at, per_row),
                          "label": req.labels[real].astype(np.int8), "split": split})
    return TrainingSet(frame, {"score": np.asarray(scores, np.float32).reshape(-1, 1)}, "discriminative-bench")


def _score_feature_config():
    from ranker_integration.feature_config import FeatureConfig, FeatureSpec

    # one scalar per (user, candidate) row, fed as is: the variant's score
    return FeatureConfig(bundle_version="any", features=[FeatureSpec(
        name="score", source="view", view="discriminative_bench", field="score", entity="user", dtype="float32",
        dimension=1, default=0.0, description="the variant's user-candidate score")])


def ranker_with_scores(cfg, valid, test, scores: dict[str, tuple[np.ndarray, np.ndarray]], seed: int) -> list[dict]:
    """AUC / GAUC of the example ranker trained on `valid`'s labels and judged on `test`'s, once per
    score (name -> (valid scores, test scores)) as its feature, and once with IDs and context only."""
    from ranker_integration.ranker import train_ranker

    fc = _score_feature_config()
    out = []
    runs = [(f"ranker+{name}", v, t, True) for name, (v, t) in scores.items()]
    runs.append(("ranker_ids_only", *next(iter(scores.values())), False))
    for name, v, t, use in runs:
        r = train_ranker(_ranker_split(valid, v, "train"), _ranker_split(test, t, "test"), fc, cfg.ranker,
                         use_hllm=use, seed=seed)
        out.append({"variant": name, "seed": seed, "test": {"auc": r.auc, "gauc": r.gauc},
                    "train_rows": r.train_rows, "seconds": round(r.train_seconds, 1)})
    return out


def _mean_sd(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {"per_seed": values, "mean": statistics.fmean(finite) if finite else float("nan"),
            "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict:
    """variant -> {"auc": {per_seed, mean, sd}, "gauc": ...}, in the order the variants first appear."""
    table = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = sorted((r for r in runs if r["variant"] == name), key=lambda r: r["seed"])
        table[name] = {m: _mean_sd([r["test"][m] for r in mine]) for m in ("auc", "gauc")}
        table[name]["seeds"] = [r["seed"] for r in mine]
    return table


def quality(cfg, seeds: list[int], out_dir: Path) -> dict:
    from feature_gen.config import ConfigError

    # The late and early rows train with the config's lambda; only late_next0 sets it to 0. With lambda 0
    # in the config (its default) "late" would silently be the same run as late_next0.
    if cfg.loss.next_weight <= 0:
        raise ConfigError(f"loss.next_weight: the late and early rows train L = L_gen + L_bce + lambda L_next with "
                          f"lambda = loss.next_weight and the late_next0 row with 0; got {cfg.loss.next_weight}, "
                          f"which makes late the same run as late_next0 (e.g. --set loss.next_weight=0.5)")
    runs = []
    for seed in seeds:
        scores, start = {}, None
        for name, loss in VARIANTS.items():
            run_cfg = cfg.model_copy(update={"seed": seed, "loss": cfg.loss.model_copy(update=loss)})
            r = train_discriminative_run(run_cfg, out_dir / f"{name}-seed{seed}")
            if start is None:  # the labels of a seed are the same for every variant: one generative baseline
                start = r
                runs.append({"variant": "generative_cosine", "seed": seed, "test": r.start_cosine})
                scores["generative_cosine"] = (r.start_scores["valid"], r.start_scores["test"])
            scores[name] = (r.scores["valid"], r.scores["test"])  # the selected head's, as the loop scored them
            runs.append({"variant": name, "seed": seed, "test": r.test, "valid": r.valid,
                         "trained_user_llm_cosine": r.test_cosine, "best_epoch": r.best_epoch,
                         "seconds": round(r.seconds, 1)})
            r.recommender = None  # free the model before the next variant
        runs += ranker_with_scores(cfg, start.requests["valid"], start.requests["test"], scores, seed)
    return {"runs": runs, "table": summarise(runs)}


def train_discriminative_run(cfg, run_dir: Path):
    from trainer.discriminative import train_discriminative

    return train_discriminative(cfg, run_dir, freeze=False)


def quality_markdown(r: dict) -> str:
    """The AUC / GAUC table of discriminative_quality.json: mean ± sd over seeds, per-seed values."""
    lines = ["| scorer | test AUC | test GAUC | per seed AUC | per seed GAUC |", "|---|---|---|---|---|"]
    for name, row in r["table"].items():
        cells = [f"{row[m]['mean']:.4f} ± {row[m]['sd']:.4f}" for m in ("auc", "gauc")]
        seeds = [", ".join(f"{v:.4f}" for v in row[m]["per_seed"]) for m in ("auc", "gauc")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {seeds[0]} | {seeds[1]} |")
    return "\n".join(lines) + (f"\n\nSeeds {r['seeds']}; load average {r['load_average_1m']:.1f}.\n\n"
                               f"Command: `{r['command']}`")


def markdown(r: dict) -> str:
    """The table of a results file this benchmark wrote (latency or quality), as BENCHMARKS.md prints it."""
    if "table" in r:
        return quality_markdown(r)
    return (
        "| config | candidates | history | late fusion median ms | early fusion median ms | early / late |\n"
        "|---|---|---|---|---|---|\n"
        f"| `{r['config']}` | {r['candidates']} | {r['history']} | {r['late']['median_ms']:,.0f} (min {r['late']['min_ms']:,.0f}) "
        f"| {r['early']['median_ms']:,.0f} (min {r['early']['min_ms']:,.0f}) | {r['early_over_late']}x |\n\n"
        f"({r['threads']} torch thread; load average {r['load_average_1m']:.1f})\n\n"
        f"Command: `python benchmarks/discriminative_bench.py latency --config {r['config']} --repeats 10`"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["latency", "quality"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="runs/discriminative_bench", help="training runs (checkpoints, resumable)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the results JSON is written")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, dict(parse_override(o) for o in args.overrides))
    cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"objective": "discriminative"})})
    if args.what == "latency":
        result = {"config": args.config, "history": args.history, "candidates": args.candidates,
                  "threads": args.threads, "load_average_1m": os.getloadavg()[0],
                  **latency(cfg, args.history, args.candidates, args.repeats)}
    else:
        result = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
                  "command": "python benchmarks/discriminative_bench.py " + shlex.join(argv),
                  **quality(cfg, args.seeds, Path(args.out_dir))}
        result["load_average_1m"] = os.getloadavg()[0]
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"discriminative_{args.what}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
