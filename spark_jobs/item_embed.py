"""spark-submit spark_jobs/item_embed.py --bundle BUNDLE --items ITEMS [--output ROOT] [--materialize]

Items (Parquet, CSV or JSON lines with item_id and the bundle's text columns) in; the bundle version's
item embeddings out to `<ROOT>/item_embedding/bundle_version=<v>/`, and rows that cannot be embedded
(null_id, no_text, oversize_text, duplicate_id) with the input row to `<ROOT>/item_rejects/...`.
Re-running for the same bundle replaces that version atomically. Prints the counts; exits 0 when
rejects exist (they are data, not failures), 2 on bad arguments or input.
"""

from __future__ import annotations

import sys
import time
import uuid

from feature_gen.model.bundle import read_manifest
from feature_gen.config import ConfigError, ItemTextConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, ITEM_REJECTS
from feature_gen.store.schema import ITEM_ID, with_spark_event_timestamp


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.job_setup import job_arguments, job_config, spark_session

    args = job_arguments(__doc__.splitlines()[0], "--items", "item table: Parquet, CSV or JSON lines").parse_args(argv)
    try:
        cfg = job_config(args)
        manifest = read_manifest(args.bundle)
    except Exception as exc:  # config and bundle problems are the operator's to fix: one line, no trace
        print(f"item_embed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    version = manifest["version"]
    text_cfg = ItemTextConfig(**manifest["item_text"])
    try:
        _check_prompt_budget(args.bundle, text_cfg)
    except ConfigError as exc:  # every item would embed to the same vector: refuse before any work
        print(f"item_embed: {args.bundle}: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()

    spark = spark_session(f"hllm item_embed {version}", cfg, args.master)
    try:
        from spark_jobs.progress import job_progress

        with job_progress(spark, "item_embed"):
            return _run(spark, args, cfg, version, text_cfg, started)
    finally:
        spark.stop()


def _check_prompt_budget(bundle: str, text_cfg: ItemTextConfig) -> None:
    from pathlib import Path

    from transformers import AutoTokenizer

    from feature_gen.model.item_text import check_prompt_budget

    check_prompt_budget(AutoTokenizer.from_pretrained(Path(bundle) / "tokenizer"), text_cfg)


def _run(spark, args, cfg, version, text_cfg, started) -> int:
    from pyspark.sql import functions as F

    from spark_jobs.item_frames import embed_items, prepare_items
    from spark_jobs.job_setup import inference_options, read_input, table_paths
    from spark_jobs.publish import publish
    from spark_jobs.worker_model import WorkerStats

    try:
        from spark_jobs.input_mapping import map_to_contract

        prepared = prepare_items(map_to_contract(read_input(spark, args.items), cfg.data), text_cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"item_embed: {args.items}: {exc}", file=sys.stderr)
        return 2
    # Prepared rows are reused by both outputs: keep them rather than re-reading and re-building texts.
    prepared = prepared.persist()
    opts = inference_options(cfg)
    stats = WorkerStats.create(spark.sparkContext)
    run_id = uuid.uuid4().hex[:12]
    out = table_paths(cfg.store.offline_root, ITEM_EMBEDDING, version, run_id)
    rej = table_paths(cfg.store.offline_root, ITEM_REJECTS, version, run_id)

    embedded = embed_items(prepared.filter(F.col("reason").isNull()), args.bundle, opts, stats)
    # The offline event-time rule (store.schema): an item row is valid from the epoch.
    with_spark_event_timestamp(embedded).write.mode("overwrite").parquet(out.staging)
    prepared.filter(F.col("reason").isNotNull()).select(ITEM_ID, "reason", "row_json").write.mode("overwrite").parquet(rej.staging)

    n_embedded = spark.read.parquet(out.staging).count()
    reasons = {r["reason"]: r["count"] for r in spark.read.parquet(rej.staging).groupBy("reason").count().collect()}
    publish(spark, out.staging, out.target)
    publish(spark, rej.staging, rej.target)
    prepared.unpersist()

    elapsed = time.perf_counter() - started
    print(
        f"item_embed: bundle {version}: {n_embedded} items embedded, {sum(reasons.values())} rejected "
        f"{dict(sorted(reasons.items()))}; {stats.summary()}; {elapsed:.1f} s\n"
        f"  embeddings -> {out.target}\n  rejects    -> {rej.target}",
        flush=True,
    )
    if args.materialize:
        from feature_gen.store.feature_store import open_store

        written = open_store(cfg.store).materialize_version(version, views=[ITEM_EMBEDDING])
        print(f"item_embed: materialized {written[ITEM_EMBEDDING]} item embeddings of {version} into the "
              f"{cfg.store.online_store} online store", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
