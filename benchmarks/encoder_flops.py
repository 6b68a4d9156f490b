"""Benchmark: achieved FLOP/s of the item and user encoders against this machine's fp32 matmul peak,
torch eager and ONNX Runtime, at batch 1 and 64 (issue 23: "both are bound by fp32 GEMMs" -- how close
to the GEMM limit are they?).

- FLOPs of one forward are counted by `torch.utils.flop_counter.FlopCounterMode` on the torch encoder
  (matmuls, linear layers and attention; elementwise work is not counted, so the figure is the
  GEMM-bound part, the one the peak applies to). ONNX Runtime runs the same graph: same FLOPs.
- The peak is an fp32 `torch.mm` of 1024 x 1024 x 1024 at the same thread count, timed in the same
  loop, call by call alternating with the encoders (so load hits peak and encoders alike): the ratio
  achieved / peak is what the figure means, not the absolute FLOP/s of a shared machine.
- One thread (the consumer's setting, and the steadier comparison on an oversubscribed machine).

Reproduce: .venv/bin/python -m benchmarks.encoder_flops   (`--models tiny` for the quick one)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import write_result
from benchmarks.onnx_bench import BATCHES, SEQ, _bundle, _latencies

COMMAND = ".venv/bin/python -m benchmarks.encoder_flops"
PEAK_N = 1024


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.inference_mode()
def _bench_model(name: str, reps_small: int, reps_large: int, threads: int) -> list[dict]:
    from feature_gen.inference.encoders import load_encoders

    torch.set_num_threads(threads)
    path = _bundle(name)
    eager = load_encoders(path, "torch")
    onnx = load_encoders(path, "onnx", threads=threads)
    rng = np.random.default_rng(0)
    a = torch.randn(PEAK_N, PEAK_N)
    b = torch.randn(PEAK_N, PEAK_N)
    peak_flops = 2 * PEAK_N ** 3
    rows = []
    for batch in BATCHES:
        ids = torch.from_numpy(rng.integers(0, onnx.item.vocab_size, size=(batch, SEQ)))
        mask = torch.ones(batch, SEQ, dtype=torch.long)
        embs = torch.from_numpy(rng.standard_normal((batch, SEQ, onnx.user.item_dim)).astype(np.float32))
        stamps = torch.from_numpy(1_700_000_000 + np.cumsum(rng.integers(0, 10**5, size=(batch, SEQ)), axis=1))
        calls = {
            ("peak", "mm"): lambda: torch.mm(a, b),
            ("item", "torch"): lambda: eager.item(ids, mask),
            ("item", "onnx"): lambda: onnx.item(ids, mask),
            ("user", "torch"): lambda: eager.user(embs, mask, stamps).user_embedding,
            ("user", "onnx"): lambda: onnx.user(embs, mask, stamps).user_embedding,
        }
        flops = {"item": _flops(calls[("item", "torch")]), "user": _flops(calls[("user", "torch")])}
        load_before = os.getloadavg()[0]
        times = _latencies(calls, reps_small if batch == 1 else reps_large)
        peak = peak_flops / float(np.percentile(times[("peak", "mm")], 50))
        for encoder in ("item", "user"):
            row = {"model": name, "encoder": encoder, "batch": batch, "seq": SEQ, "threads": threads,
                   "gflop_per_call": round(flops[encoder] / 1e9, 4), "peak_gflops": round(peak / 1e9, 1),
                   "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)}
            for runtime in ("torch", "onnx"):
                achieved = flops[encoder] / float(np.percentile(times[(encoder, runtime)], 50))
                row[f"{runtime}_gflops"] = round(achieved / 1e9, 2)
                row[f"{runtime}_of_peak"] = round(achieved / peak, 3)
            rows.append(row)
    return rows


def run(models=("tiny", "demo"), reps_small: int = 50, reps_large: int = 10, threads: int = 1) -> dict:
    before = torch.get_num_threads()
    try:
        rows = [r for name in models for r in _bench_model(name, reps_small, reps_large, threads)]
    finally:
        torch.set_num_threads(before)
    return {"command": COMMAND, "rows": rows, "cpu_count": os.cpu_count(), "peak": f"fp32 torch.mm {PEAK_N}^3"}


def markdown(r: dict) -> str:
    lines = [
        "| model | encoder | batch x seq | GFLOP / call | torch GFLOP/s (of peak) | ONNX GFLOP/s (of peak) | matmul peak GFLOP/s | load avg 1m before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['model']} | {x['encoder']} | {x['batch']} x {x['seq']} | {x['gflop_per_call']} "
            f"| {x['torch_gflops']} ({x['torch_of_peak'] * 100:.0f} %) | {x['onnx_gflops']} ({x['onnx_of_peak'] * 100:.0f} %) "
            f"| {x['peak_gflops']} | {x['load_avg_1m_before']} / {x['load_avg_1m_after']} |"
        )
    lines.append(f"\n{r['rows'][0]['threads']} thread, peak = {r['peak']} timed alternating with the encoders; "
                 f"{r['cpu_count']} cores. Command: `{r['command']}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,demo")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run(tuple(args.models.split(",")))
    print(markdown(result))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
