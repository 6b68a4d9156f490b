"""spark-submit spark_jobs/item_embed.py --bundle BUNDLE --items ITEMS [--output ROOT] [--materialize]

Items (Parquet, CSV or JSON lines with item_id and the bundle's text columns) in; the bundle version's
item embeddings out to `<ROOT>/item_embedding/bundle_version=<v>/`, and rows that cannot be embedded
(null_id, no_text, oversize_text, bad_encoding, duplicate_id) with the input row to `<ROOT>/item_rejects/...`.
Re-running for the same bundle replaces that version atomically. Prints the counts; exits 0 when
rejects exist (they are data, not failures), 2 on bad arguments or input.
"""

from __future__ import annotations

import sys
import time
import uuid

from feature_gen.config import ItemTextConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, ITEM_REJECTS, VERSION_COLUMN
from feature_gen.store.schema import ITEM_ID, with_spark_event_timestamp


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.job_setup import job_arguments, run_job

    args = job_arguments(__doc__.splitlines()[0], "--items", "item table: Parquet, CSV or JSON lines").parse_args(argv)
    return run_job("item_embed", args, args.items, _run, check_bundle=_check_bundle)


def _check_bundle(bundle) -> None:
    """Refuse, before any work, a bundle whose prompt fills the token budget (every item would embed to
    the same vector)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from feature_gen.model.item_text import check_prompt_budget

    text_cfg = ItemTextConfig(**bundle.manifest["item_text"])
    check_prompt_budget(AutoTokenizer.from_pretrained(Path(bundle.local_dir) / "tokenizer"), text_cfg)


def _run(spark, args, cfg, bundle, started) -> int:
    from pyspark.sql import functions as F

    from spark_jobs.item_frames import embed_items, prepare_items
    from spark_jobs.job_setup import inference_options, read_input, spark_settings_line, table_paths
    from spark_jobs.publish import publish
    from spark_jobs.worker_model import WorkerStats

    version = bundle.manifest["version"]
    text_cfg = ItemTextConfig(**bundle.manifest["item_text"])
    print(f"item_embed: {spark_settings_line(spark, cfg)}", flush=True)
    try:
        from spark_jobs.input_mapping import map_to_contract

        prepared = prepare_items(map_to_contract(read_input(spark, args.items, cfg.data.encoding), cfg.data), text_cfg)
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
    # The offline event-time rule (store.schema): an item row is valid from the epoch. The version is a
    # column of the files too: one version's folder is a complete Feast source.
    with_spark_event_timestamp(embedded).withColumn(VERSION_COLUMN, F.lit(version)).write.mode("overwrite").parquet(
        out.staging)
    prepared.filter(F.col("reason").isNotNull()).select(ITEM_ID, "reason", "row_json").withColumn(
        VERSION_COLUMN, F.lit(version)).write.mode("overwrite").parquet(rej.staging)

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
        from spark_jobs.online_write import materialize_online

        written = materialize_online(spark, cfg.store, version, [ITEM_EMBEDDING], cfg.spark.materialize_batch_rows,
                                     cfg.spark.partitions)
        print(f"item_embed: materialized {written[ITEM_EMBEDDING]} item embeddings of {version} into the "
              f"{cfg.store.online_store} online store (from the executors)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
