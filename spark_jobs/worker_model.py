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
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from feature_gen.inference.encoders import Encoders, Runtime

_ENCODERS: dict[tuple[str, str], Encoders] = {}


def local_path(uri: str) -> str | None:
    """The local path of a plain path or a `file://` URI; None for any other scheme (hdfs://, s3a://, gs://)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return uri
    return None


def bundle_name(uri: str) -> str:
    """The bundle folder's name (its version), the name Spark ships it under."""
    return PurePosixPath(urlparse(uri).path.rstrip("/")).name or uri


def resolve_bundle_path(bundle_path: str) -> str:
    """The bundle as a local folder on this worker: a plain path or `file://` URI every executor sees
    (shared file system), or the folder Spark shipped (`SparkContext.addFile(uri, recursive=True)` for
    --ship-bundle and remote URIs, or `--archives bundle.tar.gz#<name>` / `--files`), found by name."""
    from pyspark import SparkFiles

    name = bundle_name(bundle_path)
    try:
        shipped = SparkFiles.get(name)  # shipped by this job: the executor's own copy comes first
    except Exception:  # no Spark file root here (called outside a task): nothing was shipped
        shipped = None
    if shipped and Path(shipped).is_dir():
        return shipped
    local = local_path(bundle_path)
    if local is not None and Path(local).is_dir():
        return local
    unpacked = Path(os.getcwd()) / name  # --archives unpacks into the working directory
    if unpacked.is_dir():
        return str(unpacked)
    raise FileNotFoundError(
        f"bundle {bundle_path!r} is not visible on this worker (not a folder here, not shipped by the job or "
        "with --archives/--files); put it on a shared file system, give a hdfs:// / s3a:// URI, or use --ship-bundle"
    )


def fetch_bundle_to_driver(spark, uri: str) -> str:
    """A local copy of the bundle at `uri` for the driver (manifest, tokenizer), copied through Hadoop's
    FileSystem API, so any scheme the cluster is configured for works (hdfs://, s3a://, gs://, abfs://).
    Plain paths and file:// URIs are used in place."""
    local = local_path(uri)
    if local is not None:
        return local
    import tempfile

    jvm = spark.sparkContext._jvm
    src = jvm.org.apache.hadoop.fs.Path(uri)
    fs = src.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(src):
        raise FileNotFoundError(f"{uri}: bundle folder not found")
    target = Path(tempfile.mkdtemp(prefix="hllm-bundle-")) / bundle_name(uri)
    # raw local file system: no .crc side files next to the copy (the manifest's checksums are the check)
    fs.copyToLocalFile(False, src, jvm.org.apache.hadoop.fs.Path(str(target)), True)
    return str(target)


def ship_bundle(spark, uri: str) -> None:
    """Have Spark copy the bundle folder to every executor once (fetched through its file system, cached
    per executor); workers find it with SparkFiles.get(<name>) and verify its checksums when loading."""
    spark.sparkContext.addFile(uri, recursive=True)


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
                    runtime: Runtime = "torch", device: str = "cpu") -> Encoders:
    """The bundle's encoders (feature_gen.inference.encoders.load_encoders) on `device`, loaded at most once per
    Python worker (counted in `stats`)."""
    key = (bundle_path, runtime, device)
    encoders = _ENCODERS.get(key)
    if encoders is None:
        import torch

        from feature_gen.inference.encoders import load_encoders

        started = time.perf_counter()
        # One worker per task slot: more threads than the slot's share of cores only adds contention.
        torch.set_num_threads(torch_threads)
        # torch: the modules go to `device` and the batches follow them (encoders.embed_*)
        encoders = load_encoders(resolve_bundle_path(bundle_path), runtime, device=device, threads=torch_threads)
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
