"""Distributed materialization vs the driver path, in one run: rows/s into Redis and the driver's memory.

    .venv/bin/python -m benchmarks.materialize_bench [--rows 20000,80000] [--dim 64]

For each size, one bundle version of `user_embedding` (random unit vectors, dim `--dim`) is written
offline (what user_embed.py writes), then published online twice, each in its own process so each has
its own peak memory:
  driver  `HLLMFeatureStore.materialize_version`: the version read into one pandas frame on this
          process, pushed in 5,000-row chunks (what `hllm materialize` does by default)
  spark   `spark_jobs.online_write.materialize_online` on local[2]: two executor tasks write their
          partitions through Feast's online write path (what the jobs' --materialize and `hllm
          materialize --engine spark` do); the driver only collects one count per task
Reported: rows/s of the publication alone (Spark session start timed apart), the driver process's
resident memory while publishing, sampled every 20 ms (peak, and growth over its start; for Spark the
JVM's RSS at the end is given too: in local mode it also hosts the executors), and a check that every row is online with its version.
Raw JSON -> benchmarks/results/materialize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COMMAND = ".venv/bin/python -m benchmarks.materialize_bench"
RESULTS = Path(__file__).resolve().parent / "results" / "materialize.json"


def _store_cfg(root: Path, redis: str):
    from feature_gen.config import StoreConfig

    return StoreConfig(repo_path=str(root / "repo"), offline_root=str(root / "offline"), online_store="redis",
                       redis_connection=redis)


def write_offline(root: Path, redis: str, version: str, rows: int, dim: int, prefix: str) -> None:
    from feature_gen.store.feature_store import open_store
    from feature_gen.store.offline_store import USER_EMBEDDING

    rng = np.random.default_rng(rows)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    frame = pd.DataFrame({"user_id": [f"{prefix}{k}" for k in range(rows)], "embedding": list(vectors),
                          "seq_len": 50, "last_event_ts": 1_700_000_000 + np.arange(rows) % 1000})
    open_store(_store_cfg(root, redis)).write_offline(USER_EMBEDDING, version, frame)


class PeakRss:
    """This process's resident memory, sampled every 20 ms while the block runs: the peak and the
    start. (ru_maxrss would not do: Linux carries it across fork and exec, so a child reports its
    parent's peak.)"""

    def __enter__(self):
        import threading

        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start_mb = self.peak_mb = self._proc.memory_info().rss / 2**20

        def sample():
            while not self._stop.wait(0.02):
                self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)


def one(engine: str, root: Path, redis: str, version: str) -> dict:
    """One publication in this process; returns seconds, rows and memory."""
    from feature_gen.config import HLLMConfig
    from feature_gen.store.feature_store import open_store
    from feature_gen.store.offline_store import USER_EMBEDDING

    cfg = HLLMConfig.model_validate({"store": _store_cfg(root, redis).model_dump(), "spark": {"partitions": 2}})
    extra = {}
    if engine == "driver":
        store = open_store(cfg.store)
        with PeakRss() as rss:
            started = time.perf_counter()
            written = store.materialize_version(version, views=[USER_EMBEDDING])[USER_EMBEDDING]
            seconds = time.perf_counter() - started
    else:
        import psutil

        from spark_jobs.job_setup import spark_session
        from spark_jobs.online_write import materialize_online

        t0 = time.perf_counter()
        spark = spark_session("materialize bench", cfg, "local[2]")
        extra["session_start_s"] = time.perf_counter() - t0
        try:
            with PeakRss() as rss:
                started = time.perf_counter()
                written = materialize_online(spark, cfg.store, version, [USER_EMBEDDING],
                                             cfg.spark.materialize_batch_rows)[USER_EMBEDDING]
                seconds = time.perf_counter() - started
            jvm = [c for c in psutil.Process().children(recursive=True) if "java" in c.name()]
            extra["jvm_rss_mb_at_end"] = round(sum(c.memory_info().rss for c in jvm) / 2**20, 1)
        finally:
            spark.stop()
    # every row online with its version (a sample of 2,000 ids)
    store = open_store(cfg.store, apply=False)
    rows = pd.read_parquet(Path(cfg.store.offline_root) / USER_EMBEDDING / f"bundle_version={version}", columns=["user_id"])
    sample = rows.user_id.sample(min(2000, len(rows)), random_state=0).tolist()
    got = store.user_embeddings(sample)
    ok = int(sum(bool(f) and v == version for f, v in zip(got.found, got.bundle_versions)))
    return {"engine": engine, "rows": int(written), "seconds": round(seconds, 2), "rows_per_s": round(written / seconds),
            "driver_peak_rss_mb": round(rss.peak_mb, 1), "driver_rss_before_mb": round(rss.start_mb, 1),
            "driver_growth_mb": round(rss.peak_mb - rss.start_mb, 1),
            "online_check": f"{ok}/{len(sample)}", **extra}


def run(sizes=(20_000, 80_000), dim: int = 64) -> dict:
    from tests.redis_fixture import start_redis

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, redis = start_redis(tmp)
        try:
            root = Path(tmp)
            for n in sizes:
                for engine in ("driver", "spark"):
                    version = f"hllm-bench{n}{engine}"
                    write_offline(root, redis, version, n, dim, prefix=f"{engine}{n}-")
                    out = subprocess.run(
                        [sys.executable, "-m", "benchmarks.materialize_bench", "--one", engine, "--root", str(root),
                         "--redis", redis, "--version", version],
                        capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
                    if out.returncode != 0:
                        raise RuntimeError(f"{engine} {n}: {out.stderr[-3000:]}")
                    results.append({**json.loads(out.stdout.strip().splitlines()[-1]), "dim": dim})
                    print(json.dumps(results[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return {"dim": dim, "online_store": "redis 7.0 (loopback)", "load_average": os.getloadavg(), "runs": results}


def markdown(r: dict) -> str:
    lines = ["| rows | engine | seconds | rows/s | driver peak RSS MB | driver growth MB | online check |",
             "|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lines.append(f"| {x['rows']:,} | {x['engine']} | {x['seconds']} | {x['rows_per_s']:,} | {x['driver_peak_rss_mb']} "
                     f"| {x['driver_growth_mb']} | {x['online_check']} |")
    load = ", ".join(f"{v:.1f}" for v in r["load_average"])
    return "\n".join(lines) + f"\n\n(dim {r['dim']}, {r['online_store']}; load average {load})\n\nCommand: `{COMMAND}`"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="20000,80000")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--one", choices=["driver", "spark"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--redis", help=argparse.SUPPRESS)
    p.add_argument("--version", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, Path(args.root), args.redis, args.version)))
        return 0
    result = run(tuple(int(x) for x in args.rows.split(",")), args.dim)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
