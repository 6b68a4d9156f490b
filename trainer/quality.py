"""`hllm quality`: SASRec vs HLLM on real MovieLens, same split, loss, negatives, max length, evaluation.

Every run is `run_training` on a config from configs/ with overrides, one folder per (dataset, run,
seed) under --output; a finished run (result.json present) is not run again, so an interrupted suite
resumes. The table reports the mean and standard deviation over seeds of the TEST metrics of the
checkpoint selected on validation NDCG@10 (test is never used for selection).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from feature_gen.config import load_config

REPO = Path(__file__).resolve().parent.parent

# name -> (config file, overrides). Sizes are CPU-bound choices (2 cores): see BENCHMARKS.md.
RUNS: dict[str, tuple[str, dict]] = {
    "sasrec": ("configs/quality_sasrec.yaml", {}),
    # Item LLM fine-tuned end to end (stage 1): the paper's claim
    "hllm-stage1": ("configs/quality_hllm.yaml", {}),
    # Item LLM frozen, its embeddings cached, only the User LLM trained (stage 2 alone)
    "hllm-frozen-item": ("configs/quality_hllm.yaml", {"train.stage": 2, "train.epochs": 20, "train.lr": 5e-4,
                                                       "train.eval_every_epochs": 2}),
}
SUITES = {
    "warm": ["sasrec", "hllm-stage1"],
    "ablations": ["hllm-frozen-item"],
    "cold": ["sasrec", "hllm-stage1"],
    "efficiency": ["sasrec", "hllm-stage1"],
}
SUITE_OVERRIDES = {
    "warm": [{}],
    "ablations": [{}],
    "cold": [{"data.split": "cold_items", "data.cold_item_fraction": 0.2}],
    "efficiency": [{"train.train_user_fraction": f} for f in (0.25, 0.5)],
}
METRICS = ["recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200"]


def run_one(config: str, overrides: dict, out_dir: Path) -> dict:
    from trainer.train import run_training

    done = out_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = load_config(REPO / config, {**overrides, "train.output_dir": str(out_dir), "train.freeze_bundle": False})
    run_training(cfg, resume=True)
    return json.loads(done.read_text())


def summarise(results: dict[str, list[dict]]) -> str:
    lines = ["| run | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            values = np.array([r["test"][m] for r in runs])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_quality(suite: str, seeds: list[int], output: str, datasets: list[str]) -> int:
    suites = list(SUITES) if suite == "all" else [suite]
    out = Path(output)
    tables = []
    for dataset in datasets:
        for s in suites:
            for extra in SUITE_OVERRIDES[s]:
                tag = "-".join(f"{k.split('.')[-1]}={v}" for k, v in extra.items()) or "standard"
                results: dict[str, list[dict]] = {}
                for name in SUITES[s]:
                    config, overrides = RUNS[name]
                    for seed in seeds:
                        folder = out / dataset / s / tag / name / f"seed{seed}"
                        res = run_one(config, {**overrides, **extra, "data.source": dataset, "seed": seed}, folder)
                        results.setdefault(name, []).append(res)
                table = f"### {dataset}, {s} ({tag}), test split, mean ± sd over seeds {seeds}\n\n{summarise(results)}\n"
                print(table, flush=True)
                tables.append(table)
    (out / f"quality-{suite}.md").write_text("\n".join(tables))
    print(f"tables -> {out / f'quality-{suite}.md'}")
    return 0
