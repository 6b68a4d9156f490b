"""Benchmark: ONNX Runtime vs PyTorch eager latency of the item and user encoders (CPU here).

For each model (tiny random Llamas; the demo's SmolLM2-135M slices frozen into a bundle) the bundle is
exported (fp32, parity-checked) and both backends run the same inputs in one process, alternating call
by call so a noisy neighbour hits both alike: batch 1 and 64, sequence 50 (tokens for the item
encoder, history items for the user encoder), full-length rows. Same thread count for both, once
with 1 thread and once with 2: on a shared, oversubscribed machine PyTorch's OpenMP barriers stall
when one of its threads is descheduled, so the 1-thread rows are the steadier compute comparison.

Reproduce: .venv/bin/python -m benchmarks.onnx_bench
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

COMMAND = ".venv/bin/python -m benchmarks.onnx_bench"
BUNDLE_ROOT = Path("outputs/bench/bundles")
MODELS = {  # name -> (config file, overrides)
    "tiny": ("configs/tiny.yaml", {"user_llm.use_timestamps": True}),
    "demo": ("configs/demo.yaml", {}),
}
SEQ = 50
BATCHES = (1, 64)


def _bundle(name: str) -> Path:
    """Freeze the model of `name` into a bundle (content-versioned: the same weights reuse a folder)
    and export it if it has no fp32 ONNX yet."""
    from export import export_bundle
    from feature_gen.model.bundle import read_manifest, save_bundle
    from feature_gen.config import load_config
    from feature_gen.model.hllm import build_hllm

    config, overrides = MODELS[name]
    cfg = load_config(config, overrides)
    torch.manual_seed(0)  # the [ITEM] token's random init: same weights, same bundle folder, every run
    model, tok = build_hllm(cfg)
    path = save_bundle(model.eval(), tok, cfg, BUNDLE_ROOT, base_models={"config": config})
    if read_manifest(path).get("onnx", {}).get("precision") != "fp32":
        export_bundle(path)
    return path


def _latencies(calls: dict, reps: int) -> dict[str, list[float]]:
    for call in calls.values():  # warm-up: first-call allocations, lazy kernels
        call()
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - t0)
    return times


def _stats(samples: list[float], batch: int) -> dict:
    ms = np.array(samples) * 1000
    p50 = float(np.percentile(ms, 50))
    return {"p50_ms": round(p50, 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rows_per_s": round(batch / (p50 / 1000), 1), "reps": len(samples)}


@torch.inference_mode()
def _bench_model(name: str, reps_small: int, reps_large: int, threads: tuple[int, ...]) -> dict:
    from feature_gen.inference.encoders import load_encoders
    from feature_gen.inference.onnx_runtime import load_onnx_encoders

    path = _bundle(name)
    eager = load_encoders(path, "torch")
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        onnx = load_encoders(path, "onnx", threads=n_threads)
        rows += _bench_rows(name, eager, onnx, n_threads, reps_small, reps_large)
    runtime = load_onnx_encoders(path, threads=threads[-1])
    section = runtime_section(path)
    return {"bundle": str(path), "providers": runtime.providers, "rows": rows,
            "parity_rel_error": {k: section[k]["parity_rel_error"] for k in ("item_encoder", "user_encoder")},
            "layers": {"item": eager.item.backbone.config.num_hidden_layers, "user": eager.user.backbone.config.num_hidden_layers},
            "hidden": {"item": eager.item.hidden_size, "user": eager.user.backbone.config.hidden_size}}


def _bench_rows(name, eager, onnx, n_threads, reps_small, reps_large) -> list[dict]:
    vocab = onnx.item.vocab_size
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        ids = torch.from_numpy(rng.integers(0, vocab, size=(batch, SEQ)))
        mask = torch.ones(batch, SEQ, dtype=torch.long)
        embs = torch.from_numpy(rng.standard_normal((batch, SEQ, onnx.user.item_dim)).astype(np.float32))
        stamps = torch.from_numpy(1_700_000_000 + np.cumsum(rng.integers(0, 10**5, size=(batch, SEQ)), axis=1))
        calls = {
            ("item", "torch"): lambda: eager.item(ids, mask),
            ("item", "onnx"): lambda: onnx.item(ids, mask),
            ("user", "torch"): lambda: eager.user(embs, mask, stamps).user_embedding,
            ("user", "onnx"): lambda: onnx.user(embs, mask, stamps).user_embedding,
        }
        times = _latencies(calls, reps_small if batch == 1 else reps_large)
        for encoder in ("item", "user"):
            t, o = _stats(times[(encoder, "torch")], batch), _stats(times[(encoder, "onnx")], batch)
            rows.append({"model": name, "encoder": encoder, "batch": batch, "seq": SEQ, "threads": n_threads,
                         "torch": t, "onnx": o, "ratio_p50": round(o["p50_ms"] / t["p50_ms"], 2)})
    return rows


def runtime_section(path: Path) -> dict:
    from feature_gen.inference.onnx_runtime import onnx_section

    return onnx_section(path)


def run(reps_small: int = 50, reps_large: int = 10, threads: tuple[int, ...] = (1, 2)) -> dict:
    import onnxruntime

    before = torch.get_num_threads()
    try:
        models = {name: _bench_model(name, reps_small, reps_large, threads) for name in MODELS}
    finally:
        torch.set_num_threads(before)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": list(threads),
        "models": models,
    }


def markdown(result: dict) -> str:
    lines = [
        f"torch {result['torch']} eager vs onnxruntime {result['onnxruntime']}, same threads for both; "
        f"{result['machine']}; fp32 graphs, opset 17.",
        "",
        "| model | encoder | batch x seq | threads | torch p50 / p99 ms | onnx p50 / p99 ms | onnx / torch (p50) | torch rows/s | onnx rows/s | provider |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        desc = f"{name} ({m['layers']['item']}+{m['layers']['user']} layers, d={m['hidden']['item']}/{m['hidden']['user']})"
        for r in m["rows"]:
            t, o = r["torch"], r["onnx"]
            lines.append(
                f"| {desc} | {r['encoder']} | {r['batch']} x {r['seq']} | {r['threads']} | {t['p50_ms']} / {t['p99_ms']} | "
                f"{o['p50_ms']} / {o['p99_ms']} | {r['ratio_p50']} | {t['rows_per_s']} | {o['rows_per_s']} | "
                f"{m['providers'][0].replace('ExecutionProvider', '')} |"
            )
    lines.append("")
    for name, m in result["models"].items():
        errs = ", ".join(f"{k} {v:.1e}" for k, v in m["parity_rel_error"].items())
        lines.append(f"- {name}: export parity (worst relative error on random padded batches): {errs}")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run()
    print(markdown(res))
