"""Distributed materialization: executors write their partitions of a version into the online store.

    written = materialize_online(spark, cfg.store, version, views=[USER_EMBEDDING], batch_rows=2000)

The driver marks the version active in the feature repo (write_feature_repo: the serving views' batch
sources follow it), hands the executors the repo's feature_store.yaml as a dict and collects one row
count per task; every row goes from the offline Parquet, read by the task that owns it, to the online
store through Feast's online write path (`FeatureStore.push(..., PushMode.ONLINE)`; for Redis one
pipeline per `batch_rows` rows). Nothing of the version is ever collected on the driver, so its memory
does not grow with the rows.

Idempotent per (entity, version): a re-run writes the same values for the same keys (with a later write
stamp), never a second row. An executor needs what the driver's store points at: the registry (a
shared file, object-store file or SQL registry on a cluster) and the online store (Redis, or on one
machine the SQLite file).
"""

from __future__ import annotations

import json
from typing import Sequence

import pandas as pd

from feature_gen.store.offline_store import USER_RECENT_ITEMS, VERSION_COLUMN

_STORES: dict = {}  # per Python worker: the opened store, keyed by its configuration


def _worker_store(store_json: str, repo_config_json: str):
    """One HLLMFeatureStore per Python worker and configuration (Spark reuses workers between tasks)."""
    key = (store_json, repo_config_json)
    store = _STORES.get(key)
    if store is None:
        from feature_gen.config import StoreConfig
        from feature_gen.store.feature_store import HLLMFeatureStore

        store = HLLMFeatureStore(StoreConfig(**json.loads(store_json)), repo_config_dict=json.loads(repo_config_json))
        _STORES[key] = store
    return store


def write_partition_batches(batches, view: str, version: str, store_json: str, repo_config_json: str, batch_rows: int):
    """mapInPandas body: write each Arrow batch of `view` online in chunks of `batch_rows`; yield the
    number of rows written (one row per batch)."""
    store = _worker_store(store_json, repo_config_json)
    for pdf in batches:
        if view != USER_RECENT_ITEMS:
            pdf[VERSION_COLUMN] = version  # the folder's version, whatever the files hold
        written = sum(store.write_online(view, pdf.iloc[start : start + batch_rows]) for start in range(0, len(pdf), batch_rows))
        yield pd.DataFrame({"rows": [written]})


def materialize_online(
    spark, store_cfg, version: str, views: Sequence[str], batch_rows: int = 2000, partitions: int | None = None
) -> dict[str, int]:
    """Write `version` of each of `views` from the offline root into the online store, from the
    executors, in at least `partitions` tasks (default: the cluster's parallelism); returns rows written
    per view (0 for a view with no offline data of the version)."""
    from pyspark.sql import functions as F

    from feature_gen.store.feature_store import open_store, write_feature_repo
    from spark_jobs.job_setup import table_paths

    write_feature_repo(store_cfg, active_version=version)
    store_json = json.dumps(store_cfg.model_dump())
    repo_config_json = json.dumps(open_store(store_cfg, apply=False).repo_config_dict())
    tasks = partitions or spark.sparkContext.defaultParallelism
    written: dict[str, int] = {}
    for view in views:
        path = table_paths(store_cfg.offline_root, view, version, "").target
        try:
            frame = spark.read.parquet(path)
        except Exception as exc:  # no such version of this view (Spark: PATH_NOT_FOUND)
            if "PATH_NOT_FOUND" in str(exc) or "does not exist" in str(exc):
                written[view] = 0
                continue
            raise
        if frame.rdd.getNumPartitions() < tasks:  # a few large files: spread them over every executor
            frame = frame.repartition(tasks)
        counts = frame.mapInPandas(
            lambda batches, v=view: write_partition_batches(batches, v, version, store_json, repo_config_json, batch_rows),
            "rows long",
        )
        written[view] = int(counts.agg(F.sum("rows")).collect()[0][0] or 0)
    return written
