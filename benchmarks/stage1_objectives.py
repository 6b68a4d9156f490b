"""Stage 1 (the Item LLM trained end to end): which objective trains it, and why the first cache design did not.

    # the gradient of one step from the same initial weights and batch, per objective
    python -m benchmarks.stage1_objectives gradients --config configs/quality_hllm.yaml
    # validation NDCG@10 by epoch and the selected checkpoint's test metrics of finished trainer runs
    python -m benchmarks.stage1_objectives curves --run "NAME=RUN_DIR" ... --command "..."
    # -> benchmarks/results/stage1_objectives.json (each subcommand replaces its own part);
    #    `markdown` prints what BENCHMARKS.md holds

`gradients` builds the stage-1 recommender of `--config` once per objective (same seed: same weights),
takes the first 32 users' latest windows as one batch and runs one forward and backward pass: the loss,
the total gradient norm and the parameters with the largest gradient norms. A gradient dominated by
parameters every item shares ([ITEM] token, token-type and position embeddings) moves all the step's
items together: with constant (cached) negatives beside fresh positives that lowers the loss without
ranking anything better.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from benchmarks.harness import write_result

RESULT = Path(__file__).resolve().parent / "results" / "stage1_objectives.json"

# name -> loss overrides (on top of the config's, which trains stage 1)
OBJECTIVES = {
    "cache, fresh targets (first design)": {"loss.negatives": "cache", "loss.cache_targets": "fresh"},
    "cache, cached targets (default)": {"loss.negatives": "cache", "loss.cache_targets": "cached"},
    "in_batch + logQ": {"loss.negatives": "in_batch"},
    "sampled uniform 128, no logQ (paper's InfoNCE)": {"loss.negatives": "sampled", "loss.num_negatives": 128,
                                                       "loss.logq_correction": False},
}


def step_gradients(config: str, overrides: dict, users: int = 32, top: int = 4) -> dict:
    """One stage-1 step of `config` + `overrides` on the first `users` users' latest windows."""
    import numpy as np
    import torch

    from feature_gen.config import load_config
    from feature_gen.data.sequences import leave_one_out, load_interaction_data
    from trainer.loop import generative_examples
    from trainer.train import build_recommender

    # the loop's own set-up (users, counts, objective), on each user's latest window
    cfg = load_config(config, {"train.stage": 1, "train.windows": "last", **overrides})
    torch.manual_seed(cfg.seed)
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    rec, _, _ = build_recommender(cfg, data)
    windows, _ = generative_examples(rec, split, data.num_items, cfg, cfg.train.stage1_max_seq_len)
    rec.train()
    out = rec.training_step(windows.batch(np.arange(users), 0), 0)
    out.loss.backward()
    norms = sorted(((float(p.grad.norm()), n) for n, p in rec.named_parameters() if p.grad is not None), reverse=True)
    return {"loss": float(out.loss), "grad_norm": sum(v * v for v, _ in norms) ** 0.5,
            "largest": [{"parameter": n, "grad_norm": v} for v, n in norms[:top]]}


def curve(folder: Path) -> dict:
    """A finished (or stopped) trainer run: validation NDCG@10 by epoch, and the selected checkpoint."""
    history = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "valid" in record:
            history.append(round(record["valid"]["ndcg@10"], 4))
    result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else None
    return {"folder": str(folder), "valid_ndcg@10_by_epoch": history,
            "best_epoch": result["best_epoch"] if result else None,
            "test": result["test"] if result else None, "finished": result is not None}


def _load() -> dict:
    return json.loads(RESULT.read_text()) if RESULT.is_file() else {}


def markdown(doc: dict) -> str:
    lines = []
    if doc.get("runs"):
        lines += [doc.get("runs_note", ""), "", "| stage-1 objective | validation NDCG@10 by epoch | selected epoch | test NDCG@10 | test Recall@10 |",
                  "|---|---|---|---|---|"]
        for name, r in doc["runs"].items():
            test = r.get("test") or {}
            cells = [f"{test[m]:.4f}" if m in test else "-" for m in ("ndcg@10", "recall@10")]
            lines.append(f"| {name} | {' '.join(f'{v:.4f}' for v in r['valid_ndcg@10_by_epoch'])} | "
                         f"{r['best_epoch'] if r['best_epoch'] is not None else '(stopped)'} | {' | '.join(cells)} |")
        lines += ["", f"Command: `{doc['runs_command']}`; load average at collection "
                      f"{', '.join(f'{v:.1f}' for v in doc['runs_loadavg'])}.", ""]
    if doc.get("gradients"):
        lines += ["One stage-1 step, same initial weights and batch (32 users' latest windows):", "",
                  "| objective | loss | gradient norm | largest per-parameter gradient norms |", "|---|---|---|---|"]
        for name, g in doc["gradients"].items():
            top = "; ".join(f"{x['parameter'].replace('hllm.', '')} {x['grad_norm']:.2f}" for x in g["largest"])
            lines.append(f"| {name} | {g['loss']:.3f} | {g['grad_norm']:.2f} | {top} |")
        lines += ["", f"Command: `{doc['gradients_command']}`; load average {', '.join(f'{v:.1f}' for v in doc['gradients_loadavg'])}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage1_objectives", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gradients")
    g.add_argument("--config", default="configs/quality_hllm.yaml")
    c = sub.add_parser("curves")
    c.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR")
    c.add_argument("--command", required=True, help="the command(s) that trained the runs")
    c.add_argument("--note", default="")
    sub.add_parser("markdown")
    args = parser.parse_args(argv)
    doc = _load()
    if args.cmd == "gradients":
        doc["gradients"] = {name: step_gradients(args.config, over) for name, over in OBJECTIVES.items()}
        doc["gradients_command"] = "python -m benchmarks.stage1_objectives " + shlex.join(sys.argv[1:] if argv is None else argv)
        doc["gradients_loadavg"] = list(os.getloadavg())
    elif args.cmd == "curves":
        # the folder is after the last "=" (a name may hold one, a run folder of this project does not)
        doc["runs"] = {spec.rsplit("=", 1)[0]: curve(Path(spec.rsplit("=", 1)[1])) for spec in args.run}
        doc["runs_command"], doc["runs_note"], doc["runs_loadavg"] = args.command, args.note, list(os.getloadavg())
    else:
        print(markdown(doc))
        return 0
    write_result(doc, RESULT)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
