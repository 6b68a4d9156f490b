"""The bundle as a Python worker holds it: loaded on first use, then reused by every later batch and task.

Spark keeps Python workers alive between tasks (spark.python.worker.reuse, on by default), so a
module-level cache turns "load a model per partition" into "load a model per worker". Loading verifies
the bundle's checksums, which is worth paying once and never per batch.
"""

from __future__ import annotations

import os
from pathlib import Path

_BUNDLES: dict = {}


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


def worker_bundle(bundle_path: str, torch_threads: int, loads=None):
    """The bundle at `bundle_path`, loaded at most once per Python worker. `loads` (a Spark accumulator)
    counts actual loads, so a job can report how often the model was loaded."""
    bundle = _BUNDLES.get(bundle_path)
    if bundle is None:
        import torch

        from feature_gen.bundle import load_bundle

        # One worker per task slot: more threads than the slot's share of cores only adds contention.
        torch.set_num_threads(torch_threads)
        bundle = load_bundle(resolve_bundle_path(bundle_path))
        _BUNDLES[bundle_path] = bundle
        if loads is not None:
            loads.add(1)
    return bundle
