"""Benchmark: wall time of feature_gen.evaluation.metrics.full_ranking_metrics on random data (CPU, float32).

Reproduce: .venv/bin/python -m benchmarks.eval_bench
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import torch

from feature_gen.evaluation.metrics import full_ranking_metrics

COMMAND = ".venv/bin/python -m benchmarks.eval_bench"


def run(
    num_users: int = 10_000,
    num_items: int = 10_000,
    dim: int = 64,
    seen_per_user: int = 50,
    repeats: int = 3,
    user_batch_size: int = 1024,
    seed: int = 0,
) -> dict:
    """Time full_ranking_metrics on random Gaussian vectors; returns the figures (seconds = median)."""
    rng = np.random.default_rng(seed)
    users = torch.from_numpy(rng.standard_normal((num_users, dim), dtype=np.float32))
    items = torch.from_numpy(rng.standard_normal((num_items + 1, dim), dtype=np.float32))
    targets = rng.integers(1, num_items + 1, size=num_users)
    seen_matrix = rng.integers(1, num_items + 1, size=(num_users, seen_per_user))
    seen = list(seen_matrix)  # ragged form, the one callers normally pass

    times = []
    metrics = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        metrics = full_ranking_metrics(users, items, targets, seen, user_batch_size=user_batch_size)
        times.append(time.perf_counter() - t0)
    median_s = statistics.median(times)
    return {
        "num_users": num_users,
        "num_items": num_items,
        "dim": dim,
        "seen_per_user": seen_per_user,
        "user_batch_size": user_batch_size,
        "repeats": repeats,
        "median_s": median_s,
        "min_s": min(times),
        "users_per_s": num_users / median_s,
        "recall@10": metrics.values["recall@10"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def markdown(r: dict) -> str:
    return "\n".join([
        "| benchmark | users x items x dim | seen/user | median s | users/s | torch threads | command |",
        "|---|---|---|---|---|---|---|",
        f"| full_ranking_metrics | {r['num_users']} x {r['num_items']} x {r['dim']} | {r['seen_per_user']} "
        f"| {r['median_s']:.3f} | {r['users_per_s']:.0f} | {r['torch_threads']} | `{COMMAND}` |",
        f"\nrecall@10 on random data: {r['recall@10']:.4f} (chance ~ {10 / r['num_items']:.4f})",
    ])


def main() -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()
