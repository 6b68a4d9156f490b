"""The discriminative objective side by side (issue 24), on the same later-period labels.

    # latency of one request of 100 candidates: late fusion (User LLM once + head) vs early (100 passes)
    python benchmarks/discriminative_bench.py latency --config configs/tiny.yaml --history 50 --candidates 100
    # quality: for each seed, late fusion, late with next_weight 0, early fusion, each from the same
    # generative stage-2 bundle (train.init_bundle); the bundle's own user-item cosine on the same test labels
    python benchmarks/discriminative_bench.py quality --config CONFIG --set train.init_bundle=BUNDLE --seeds 0 1 2

Writes JSON under benchmarks/results/ (discriminative_latency.json, discriminative_quality.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

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


def quality(cfg, seeds: list[int], out_dir: Path) -> dict:
    from trainer.discriminative import train_discriminative

    variants = {"late": {}, "late_next0": {"next_weight": 0.0}, "early": {"fusion": "early"}}
    runs = []
    for seed in seeds:
        for name, loss in variants.items():
            run_cfg = cfg.model_copy(update={"seed": seed, "loss": cfg.loss.model_copy(update=loss)})
            r = train_discriminative(run_cfg, out_dir / f"{name}-seed{seed}", freeze=False)
            runs.append({"variant": name, "seed": seed, "test": r.test, "valid": r.valid,
                         "generative_cosine": r.start_cosine, "best_epoch": r.best_epoch, "seconds": round(r.seconds, 1)})
    return {"runs": runs}


def markdown(r: dict) -> str:
    """The latency table of benchmarks/results/discriminative_latency.json (what BENCHMARKS.md prints)."""
    return (
        "| config | candidates | history | late fusion median ms | early fusion median ms | early / late |\n"
        "|---|---|---|---|---|---|\n"
        f"| `{r['config']}` | {r['candidates']} | {r['history']} | {r['late']['median_ms']:,.0f} (min {r['late']['min_ms']:,.0f}) "
        f"| {r['early']['median_ms']:,.0f} (min {r['early']['min_ms']:,.0f}) | {r['early_over_late']}x |\n\n"
        f"({r['threads']} torch thread; load average {r['load_average_1m']:.1f})\n\n"
        f"Command: `python benchmarks/discriminative_bench.py latency --config {r['config']} --repeats 10`"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["latency", "quality"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default="runs/discriminative_bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, dict(parse_override(o) for o in args.overrides))
    cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"objective": "discriminative"})})
    if args.what == "latency":
        result = {"config": args.config, "history": args.history, "candidates": args.candidates,
                  "threads": args.threads, "load_average_1m": os.getloadavg()[0],
                  **latency(cfg, args.history, args.candidates, args.repeats)}
    else:
        result = {"config": args.config, "overrides": args.overrides, **quality(cfg, args.seeds, Path(args.out_dir))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"discriminative_{args.what}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
