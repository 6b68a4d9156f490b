"""The bundle's encoders as a Python worker holds them: loaded on first use, then reused by every later
batch and task.

Spark keeps Python workers alive between tasks (spark.python.worker.reuse, on by default), so a
module-level cache turns "load a model per partition" into "load a model per worker". Loading verifies
the bundle's checksums, which is worth paying once and never per batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from feature_gen.inference.encoders import Encoders, Runtime

_ENCODERS: dict[tuple[str, str], Encoders] = {}


def resolve_bundle_path(bundle_path: str) -> str:
    """A path every executor sees (shared file system), or the name of a folder shipped with
    `--archives bundle.tar.gz#<name>` / `--files`, which Spark unpacks into the worker's directory."""
    if Path(bundle_path).is_dir():
        return bundle_path
    from pyspark import SparkFiles

    shipped = SparkFiles.get(Path(bundle_path).name)
    if Path(shipped).is_dir():
        return shipped
    local = Path(os.getcwd()) / Path(bundle_path).name  # --archives unpacks into the working directory
    if local.is_dir():
        return str(local)
    raise FileNotFoundError(
        f"bundle {bundle_path!r} is not visible on this worker (not a folder here, not shipped with "
        "--archives/--files); put it on a shared file system or ship it with --archives"
    )


@dataclass
class WorkerStats:
    """Spark accumulators the workers add to, so the job can say where its time went: how many model
    loads happened, how long they took, and how long the workers spent inside inference."""

    loads: object
    load_seconds: object
    inference_seconds: object

    @classmethod
    def create(cls, spark_context) -> "WorkerStats":
        return cls(spark_context.accumulator(0), spark_context.accumulator(0.0), spark_context.accumulator(0.0))

    def summary(self) -> str:
        return (f"model loads {self.loads.value} ({self.load_seconds.value:.1f} s), "
                f"inference {self.inference_seconds.value:.1f} worker-s")


def worker_encoders(bundle_path: str, torch_threads: int, stats: WorkerStats | None = None,
                    runtime: Runtime = "torch") -> Encoders:
    """The bundle's encoders (feature_gen.inference.load_encoders), loaded at most once per Python
    worker (counted in `stats`)."""
    key = (bundle_path, runtime)
    encoders = _ENCODERS.get(key)
    if encoders is None:
        import torch

        from feature_gen.inference.encoders import load_encoders

        started = time.perf_counter()
        # One worker per task slot: more threads than the slot's share of cores only adds contention.
        torch.set_num_threads(torch_threads)
        encoders = load_encoders(resolve_bundle_path(bundle_path), runtime, threads=torch_threads)
        _ENCODERS[key] = encoders
        if stats is not None:
            stats.loads.add(1)
            stats.load_seconds.add(time.perf_counter() - started)
    return encoders


def timed_batches(batches, work, stats: WorkerStats | None):
    """Apply `work` to each pandas batch, adding the time spent to the job's inference counter."""
    for pdf in batches:
        started = time.perf_counter()
        out = work(pdf)
        if stats is not None:
            stats.inference_seconds.add(time.perf_counter() - started)
        yield out
