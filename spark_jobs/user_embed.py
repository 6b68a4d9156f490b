"""spark-submit spark_jobs/user_embed.py --bundle BUNDLE --interactions EVENTS [--output ROOT] [--materialize]

Interactions (user_id, item_id, timestamp in int64 seconds; Parquet, CSV or JSON lines) in, with the item
embeddings item_embed.py wrote for the same bundle version; out, under `<ROOT>/.../bundle_version=<v>/`:
  user_embedding     the User LLM's interest embedding of each user's last max_seq_len items (time
                     ordered, file order breaking timestamp ties), with seq_len and last_event_ts
  user_recent_items  each user's newest item ids and timestamps (the streaming refresh's state)
  user_rejects       interactions that were not used, with the reason (null_user_id, null_item_id,
                     bad_encoding, bad_timestamp (not whole seconds), timestamp_out_of_range (outside the
                     contract's plausible window, see data.timestamp_unit), unknown_item) and the input row
Re-running for the same bundle replaces the version atomically. Exit 0 when done (rejects are data, not
failures); 2 with one line on bad arguments, a bad bundle, or input that cannot be read at all (an empty
folder, a file that is not Parquet, files whose column types differ: the line names file and column).
"""

from __future__ import annotations

import sys
import time
import uuid

from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, USER_REJECTS, VERSION_COLUMN
from feature_gen.store.schema import ITEM_ID, USER_ID, with_spark_event_timestamp


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.job_setup import job_arguments, run_job

    args = job_arguments(__doc__.splitlines()[0], "--interactions", "interactions: Parquet, CSV or JSON lines").parse_args(argv)
    return run_job("user_embed", args, args.interactions, _run)


def _run(spark, args, cfg, bundle, started) -> int:
    manifest = bundle.manifest
    from pyspark.sql import functions as F

    from spark_jobs.job_setup import inference_options, read_input, spark_settings_line, table_paths
    from spark_jobs.publish import publish
    from spark_jobs.worker_model import WorkerStats
    from spark_jobs.user_frames import (
        check_interactions,
        embed_user_sequences,
        mark_unknown_items,
        recent_events,
        recent_items,
        user_sequences,
    )

    version = manifest["version"]
    print(f"user_embed: {spark_settings_line(spark, cfg)}", flush=True)
    items_path = table_paths(cfg.store.offline_root, ITEM_EMBEDDING, version, "").target
    try:
        item_embeddings = spark.read.parquet(items_path)
    except Exception:
        print(f"user_embed: no item embeddings of bundle {version} at {items_path}; run item_embed.py with "
              "this bundle first", file=sys.stderr)
        return 2
    try:
        from spark_jobs.input_mapping import map_to_contract

        checked = check_interactions(map_to_contract(read_input(spark, args.interactions, cfg.data.encoding), cfg.data),
                                     cfg.data.timestamp_unit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"user_embed: {args.interactions}: {exc}", file=sys.stderr)
        return 2
    checked = mark_unknown_items(checked, item_embeddings).persist()
    valid = checked.filter(F.col("reason").isNull())

    max_seq_len = int(manifest["max_seq_len"])
    # The streaming refresh recomputes from this state, so it holds at least what the User LLM reads.
    keep = max(cfg.spark.max_recent_items, max_seq_len)
    recent = recent_events(valid, keep).persist()
    opts = inference_options(cfg)
    stats = WorkerStats.create(spark.sparkContext)
    run_id = uuid.uuid4().hex[:12]
    paths = {t: table_paths(cfg.store.offline_root, t, version, run_id) for t in (USER_EMBEDDING, USER_RECENT_ITEMS, USER_REJECTS)}

    users = embed_user_sequences(user_sequences(recent, item_embeddings, max_seq_len), args.bundle, opts, stats)
    # The offline event-time rule (store.schema): a user row is valid from the last event it reflects.
    # The version is a column of the files too: one version's folder is a complete Feast source.
    tag = F.lit(version)
    with_spark_event_timestamp(users).withColumn(VERSION_COLUMN, tag).write.mode("overwrite").parquet(
        paths[USER_EMBEDDING].staging)
    with_spark_event_timestamp(recent_items(recent)).withColumn(VERSION_COLUMN, tag).write.mode("overwrite").parquet(
        paths[USER_RECENT_ITEMS].staging)
    checked.filter(F.col("reason").isNotNull()).select(USER_ID, ITEM_ID, "timestamp", "reason", "row_json").withColumn(
        VERSION_COLUMN, tag).write.mode("overwrite").parquet(paths[USER_REJECTS].staging)

    n_users = spark.read.parquet(paths[USER_EMBEDDING].staging).count()
    reasons = {r["reason"]: r["count"] for r in spark.read.parquet(paths[USER_REJECTS].staging).groupBy("reason").count().collect()}
    for p in paths.values():
        publish(spark, p.staging, p.target)
    recent.unpersist()
    checked.unpersist()

    print(
        f"user_embed: bundle {version}: {n_users} users embedded, {sum(reasons.values())} interactions rejected "
        f"{dict(sorted(reasons.items()))}; {stats.summary()}; {time.perf_counter() - started:.1f} s\n"
        + "".join(f"  {t:18s} -> {p.target}\n" for t, p in paths.items()),
        end="", flush=True,
    )
    if args.materialize:
        from spark_jobs.online_write import materialize_online

        written = materialize_online(spark, cfg.store, version, [USER_EMBEDDING, USER_RECENT_ITEMS],
                                     cfg.spark.materialize_batch_rows, cfg.spark.partitions)
        print(f"user_embed: materialized {written} of {version} into the {cfg.store.online_store} online store "
              "(from the executors)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
