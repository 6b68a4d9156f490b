"""User transformations, `DataFrame -> DataFrame`: validate interactions, build time-ordered recent
sequences, join item embeddings, run the User LLM."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, NumericType, TimestampType

from spark_jobs.item_frames import InferenceOptions
from spark_jobs.user_batches import embed_user_batch
from feature_gen.store.schema import (
    EMBEDDING, ITEM_ID, LAST_EVENT_TS, RECENT_ITEM_IDS, RECENT_ITEM_TS, USER_EMBEDDING_SPARK_SCHEMA, USER_ID,
)
from spark_jobs.worker_model import WorkerStats, timed_batches, worker_encoders

TIMESTAMP, ORDER = "timestamp", "_order"  # the interactions' time column; the input-order tie-break
# Reasons an interaction is rejected (user_rejects), never silently dropped.
NULL_USER_ID, NULL_ITEM_ID, BAD_TIMESTAMP, UNKNOWN_ITEM = "null_user_id", "null_item_id", "bad_timestamp", "unknown_item"


def check_interactions(raw: DataFrame) -> DataFrame:
    """user_id, item_id (strings), timestamp (int64 seconds), _order (file order), reason (null = ok),
    row_json."""
    missing = [c for c in (USER_ID, ITEM_ID, TIMESTAMP) if c not in raw.columns]
    if missing:
        raise ValueError(f"interactions: missing column(s) {', '.join(missing)} (have: {', '.join(raw.columns)})")
    ts_type = raw.schema[TIMESTAMP].dataType
    if isinstance(ts_type, TimestampType):
        seconds = F.unix_timestamp(F.col(TIMESTAMP)).cast(LongType())
    elif isinstance(ts_type, NumericType):
        # a fractional value is not a whole number of seconds: rejected below rather than rounded
        seconds = F.when(F.col(TIMESTAMP) == F.floor(F.col(TIMESTAMP)), F.col(TIMESTAMP).cast(LongType()))
    else:
        seconds = F.col(TIMESTAMP).cast("string").try_cast(LongType())
    numbered = raw.withColumn(ORDER, F.monotonically_increasing_id())
    reason = (
        F.when(F.col(USER_ID).isNull(), F.lit(NULL_USER_ID))
        .when(F.col(ITEM_ID).isNull(), F.lit(NULL_ITEM_ID))
        .when(seconds.isNull(), F.lit(BAD_TIMESTAMP))
    )
    return numbered.select(
        F.col(USER_ID).cast("string").alias(USER_ID),
        F.col(ITEM_ID).cast("string").alias(ITEM_ID),
        seconds.alias(TIMESTAMP),
        F.col(ORDER),
        reason.alias("reason"),
        F.when(reason.isNotNull(), F.to_json(F.struct(*[F.col(c) for c in raw.columns]))).alias("row_json"),
    )


def mark_unknown_items(checked: DataFrame, item_ids: DataFrame) -> DataFrame:
    """Interactions whose item has no embedding of this version (unknown or itself rejected) get
    reason unknown_item."""
    known = item_ids.select(F.col(ITEM_ID).alias("_known")).distinct()
    joined = checked.join(known, checked[ITEM_ID] == known["_known"], "left")
    return joined.withColumn(
        "reason", F.when(F.col("reason").isNull() & F.col("_known").isNull(), F.lit(UNKNOWN_ITEM)).otherwise(F.col("reason"))
    ).withColumn(
        "row_json",
        F.when((F.col("reason") == UNKNOWN_ITEM), F.to_json(F.struct(USER_ID, ITEM_ID, TIMESTAMP))).otherwise(F.col("row_json")),
    ).drop("_known")


def recent_events(valid: DataFrame, keep: int) -> DataFrame:
    """Each user's newest `keep` events with `rank` (1 = newest); ties on timestamp broken by file order."""
    newest_first = Window.partitionBy(USER_ID).orderBy(F.col(TIMESTAMP).desc(), F.col(ORDER).desc())
    return valid.withColumn("rank", F.row_number().over(newest_first)).filter(F.col("rank") <= keep)


def recent_items(recent: DataFrame) -> DataFrame:
    """user_id, recent_item_ids, recent_item_ts (oldest first), last_event_ts."""
    ordered = F.sort_array(F.collect_list(F.struct(F.col(TIMESTAMP), F.col(ORDER), F.col(ITEM_ID))))
    return recent.groupBy(USER_ID).agg(ordered.alias("seq")).select(
        USER_ID,
        F.col(f"seq.{ITEM_ID}").alias(RECENT_ITEM_IDS),
        F.col(f"seq.{TIMESTAMP}").alias(RECENT_ITEM_TS),
        F.element_at(F.col(f"seq.{TIMESTAMP}"), -1).alias(LAST_EVENT_TS),
    )


def user_sequences(recent: DataFrame, item_embeddings: DataFrame, max_seq_len: int) -> DataFrame:
    """user_id, seq_embeddings (oldest first), seq_ts: the User LLM's input for each user."""
    window = recent.filter(F.col("rank") <= max_seq_len)
    with_emb = window.join(item_embeddings.select(ITEM_ID, EMBEDDING), ITEM_ID, "inner")
    ordered = F.sort_array(F.collect_list(F.struct(F.col(TIMESTAMP), F.col(ORDER), F.col(EMBEDDING))))
    return with_emb.groupBy(USER_ID).agg(ordered.alias("seq")).select(
        USER_ID, F.col("seq.embedding").alias("seq_embeddings"), F.col(f"seq.{TIMESTAMP}").alias("seq_ts")
    )


def embed_user_sequences(sequences: DataFrame, bundle_path: str, opts: InferenceOptions, stats: WorkerStats | None = None) -> DataFrame:
    """user_id, embedding, seq_len, last_event_ts via mapInPandas over the User LLM."""

    def run(batches):
        encoders = worker_encoders(bundle_path, opts.torch_threads, stats)
        yield from timed_batches(batches, lambda pdf: embed_user_batch(pdf, encoders, opts.batch_size), stats)

    return sequences.repartition(opts.partitions).mapInPandas(run, USER_EMBEDDING_SPARK_SCHEMA)
