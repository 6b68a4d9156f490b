"""Benchmark: the request read (1 user + 100 candidate items) through OnlineIO against Feast's
`get_online_features`, on the SQLite and Redis online stores (Redis on loopback, a fresh server).

Per store: 2,000 users and 5,000 items of dimension 64 written online; then `requests` requests, each
a random user and 100 random candidates, read by both paths *alternately* (so machine load hits both
alike): the Feast path is what serving did before issue 23 (`store.user_embeddings([u])` +
`store.item_embeddings(ids)`, two get_online_features calls), the new one `OnlineIO.request_rows`
(one round trip per store, vectors from the stored bytes). Figures: p50/p99 in ms per path and the
ratio new/Feast of the p50s; the 1-minute load average before and after each store's run. Each
request's rows are checked equal between the paths (vectors bit-identical, versions, found flags).

Reproduce: .venv/bin/python -m benchmarks.read_bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import write_result
import pandas as pd

COMMAND = ".venv/bin/python -m benchmarks.read_bench"


def _one_store(kind: str, root: Path, requests: int, users: int, items: int, dim: int, candidates: int) -> dict:
    from feature_gen.config import StoreConfig
    from feature_gen.store.feature_store import open_store
    from feature_gen.store.online_io import OnlineIO

    fields = {"repo_path": str(root / "repo"), "offline_root": str(root / "offline"), "online_store": kind}
    proc = None
    if kind == "redis":
        from tests.redis_fixture import start_redis

        proc, fields["redis_connection"] = start_redis(root)
    try:
        store = open_store(StoreConfig(**fields))
        rng = np.random.default_rng(0)
        item_ids = [f"i{i}" for i in range(items)]
        user_ids = [f"u{u}" for u in range(users)]
        for start in range(0, items, 1000):
            chunk = item_ids[start:start + 1000]
            store.push_item_embeddings(pd.DataFrame({
                "item_id": chunk, "embedding": list(rng.standard_normal((len(chunk), dim)).astype(np.float32)),
                "bundle_version": "v1"}))
        for start in range(0, users, 1000):
            chunk = user_ids[start:start + 1000]
            store.push_user_embeddings(pd.DataFrame({
                "user_id": chunk, "embedding": list(rng.standard_normal((len(chunk), dim)).astype(np.float32)),
                "seq_len": 50, "last_event_ts": 1_700_000_000, "bundle_version": "v1"}))
        io = OnlineIO(store)

        def feast_path(u, ids):
            return store.user_embeddings([u]), store.item_embeddings(ids)

        def new_path(u, ids):
            return io.request_rows(u, ids)

        load_before = os.getloadavg()[0]
        times = {"feast": [], "online_io": []}
        for r in range(requests + 20):  # the first 20 warm both paths up and are not counted
            u = user_ids[rng.integers(users)]
            ids = [item_ids[i] for i in rng.choice(items, candidates, replace=False)]
            got = {}
            order = [("feast", feast_path), ("online_io", new_path)]
            for name, fn in (order if r % 2 else order[::-1]):
                t = time.perf_counter()
                got[name] = fn(u, ids)
                if r >= 20:
                    times[name].append((time.perf_counter() - t) * 1e3)
            (fu, fi), (nu, ni) = got["feast"], got["online_io"]
            assert np.array_equal(fu.vectors, nu.vectors) and np.array_equal(fi.vectors, ni.vectors)
            assert fi.bundle_versions == ni.bundle_versions and fu.found.tolist() == nu.found.tolist()
        load_after = os.getloadavg()[0]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    pct = {name: (float(np.percentile(t, 50)), float(np.percentile(t, 99))) for name, t in times.items()}
    return {
        "store": kind, "requests": requests, "candidates": candidates, "dim": dim, "users": users, "items": items,
        "feast_p50_ms": round(pct["feast"][0], 3), "feast_p99_ms": round(pct["feast"][1], 3),
        "online_io_p50_ms": round(pct["online_io"][0], 3), "online_io_p99_ms": round(pct["online_io"][1], 3),
        "ratio_p50": round(pct["online_io"][0] / pct["feast"][0], 3),
        "ratio_p99": round(pct["online_io"][1] / pct["feast"][1], 3),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(load_after, 2),
    }


def run(stores=("sqlite", "redis"), requests: int = 1000, users: int = 2000, items: int = 5000, dim: int = 64,
        candidates: int = 100) -> dict:
    rows = []
    for kind in stores:
        root = Path(tempfile.mkdtemp(prefix=f"read-bench-{kind}-"))
        try:
            rows.append(_one_store(kind, root, requests, users, items, dim, candidates))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"command": COMMAND, "rows": rows, "cpu_count": os.cpu_count()}


def markdown(r: dict) -> str:
    lines = [
        "| store | request | Feast get_online_features p50 / p99 | OnlineIO p50 / p99 | new / Feast (p50, p99) | load avg 1m before / after |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['store']} | 1 user + {x['candidates']} items, D={x['dim']} | {x['feast_p50_ms']:.2f} / {x['feast_p99_ms']:.2f} ms "
            f"| {x['online_io_p50_ms']:.2f} / {x['online_io_p99_ms']:.2f} ms | {x['ratio_p50']:.2f}, {x['ratio_p99']:.2f} "
            f"| {x['load_avg_1m_before']} / {x['load_avg_1m_after']} |"
        )
    lines.append(f"\n{r['rows'][0]['requests']} requests per store, paths alternated, {r['cpu_count']} cores. "
                 f"Command: `{r['command']}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/read_bench.json")
    args = parser.parse_args()
    result = run(tuple(args.stores.split(",")), requests=args.requests)
    print(markdown(result))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
