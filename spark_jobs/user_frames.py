"""User transformations, `DataFrame -> DataFrame`: validate interactions, build time-ordered recent
sequences, join item embeddings, run the User LLM."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, LongType, NumericType, TimestampType

from feature_gen.data.contract import (
    BAD_TIMESTAMP, NULL_ITEM_ID, NULL_USER_ID, REJECT_BAD_ENCODING, REPLACEMENT_CHAR, TIMESTAMP_OUT_OF_RANGE, TIMESTAMP_UNITS,
    UNKNOWN_ITEM, plausible_window,
)

from spark_jobs.item_frames import InferenceOptions
from spark_jobs.user_batches import embed_user_batch
from feature_gen.store.schema import (
    EMBEDDING, ITEM_ID, LAST_EVENT_TS, RECENT_ITEM_IDS, RECENT_ITEM_TS, USER_EMBEDDING_SPARK_SCHEMA, USER_ID,
)
from spark_jobs.worker_model import WorkerStats, timed_batches, worker_encoders

TIMESTAMP, ORDER = "timestamp", "_order"  # the interactions' time column; the input-order tie-break
# Reasons an interaction is rejected (user_rejects), never silently dropped: the contract's words
# (feature_gen.data.contract), which the Python API's rejects use too. TIMESTAMP_OUT_OF_RANGE: a whole
# number outside the plausible window (a far-future value would overflow the job's datetime conversion
# and fail it for everyone, or become a user's newest event forever).
BAD_ENCODING = REJECT_BAD_ENCODING


def _whole_number(col, dtype):
    """The column as a long when it holds a whole number, else null (never an error, never rounded)."""
    if isinstance(dtype, NumericType):
        return F.when(col == F.floor(col), col.try_cast(LongType()))
    text = F.trim(col.cast("string"))
    as_double = text.try_cast(DoubleType())
    # "1700000000" directly; "1700000000.0" (a CSV written from a float column) through a double
    return F.coalesce(text.try_cast(LongType()), F.when(as_double == F.floor(as_double), as_double.try_cast(LongType())))


def contract_seconds(col, dtype, timestamp_unit: str = "seconds", now_s: float | None = None):
    """The contract's timestamp rule (feature_gen.data.contract.check_timestamp) as a Spark column:
    int64 Unix seconds, or null when the value is not a whole number in `timestamp_unit` inside the
    plausible window. Datetime columns are read as what they are."""
    lo, hi = plausible_window(now_s)

    def inside(seconds):
        return F.when((seconds >= F.lit(lo)) & (seconds <= F.lit(hi)), seconds)

    if isinstance(dtype, TimestampType):
        return inside(F.unix_timestamp(col).cast(LongType()))
    value = _whole_number(col, dtype)
    in_ms = F.floor(value / F.lit(1000)).cast(LongType())  # floored to the second, as check_timestamp does
    if timestamp_unit == "seconds":
        return inside(value)
    if timestamp_unit == "milliseconds":
        return inside(in_ms)
    if timestamp_unit == "auto":  # the two windows do not overlap, so each value has one reading
        return F.coalesce(inside(value), inside(in_ms))
    raise ValueError(f"timestamp_unit: expected one of {', '.join(TIMESTAMP_UNITS)}; got {timestamp_unit!r}")


def check_interactions(raw: DataFrame, timestamp_unit: str = "seconds", now_s: float | None = None) -> DataFrame:
    """user_id, item_id (strings), timestamp (int64 seconds), _order (file order), reason (null = ok),
    row_json. Reasons: null_user_id, null_item_id, bad_encoding (a U+FFFD in an id: bytes invalid in
    the declared encoding), bad_timestamp (not a whole number), timestamp_out_of_range (a whole number outside
    the contract's plausible window in `timestamp_unit`)."""
    missing = [c for c in (USER_ID, ITEM_ID, TIMESTAMP) if c not in raw.columns]
    if missing:
        raise ValueError(f"interactions: missing column(s) {', '.join(missing)} (have: {', '.join(raw.columns)})")
    ts_type = raw.schema[TIMESTAMP].dataType
    seconds = contract_seconds(F.col(TIMESTAMP), ts_type, timestamp_unit, now_s)
    whole = (F.unix_timestamp(F.col(TIMESTAMP)).cast(LongType()) if isinstance(ts_type, TimestampType)
             else _whole_number(F.col(TIMESTAMP), ts_type))
    numbered = raw.withColumn(ORDER, F.monotonically_increasing_id())
    garbled = F.lit(False)
    for c in (USER_ID, ITEM_ID):
        garbled = garbled | F.coalesce(F.col(c).cast("string").contains(REPLACEMENT_CHAR), F.lit(False))
    reason = (
        F.when(F.col(USER_ID).isNull(), F.lit(NULL_USER_ID))
        .when(F.col(ITEM_ID).isNull(), F.lit(NULL_ITEM_ID))
        .when(garbled, F.lit(BAD_ENCODING))
        .when(whole.isNull(), F.lit(BAD_TIMESTAMP))
        .when(seconds.isNull(), F.lit(TIMESTAMP_OUT_OF_RANGE))
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
    """Each user's newest `keep` events with `rank` (1 = newest); ties on timestamp broken by file order.
    An exact repeat (same user, item and timestamp: a replayed log) counts once, at its first position:
    the stream's merge rule (feature_gen/streaming/recent_items.py), so batch and stream agree."""
    first_seen = Window.partitionBy(USER_ID, ITEM_ID, TIMESTAMP).orderBy(F.col(ORDER))
    unique = valid.withColumn("_repeat", F.row_number().over(first_seen)).filter(F.col("_repeat") == 1).drop("_repeat")
    newest_first = Window.partitionBy(USER_ID).orderBy(F.col(TIMESTAMP).desc(), F.col(ORDER).desc())
    return unique.withColumn("rank", F.row_number().over(newest_first)).filter(F.col("rank") <= keep)


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
        encoders = worker_encoders(bundle_path, opts.torch_threads, stats, device=opts.device)
        yield from timed_batches(batches, lambda pdf: embed_user_batch(pdf, encoders, opts.batch_size), stats)

    return sequences.repartition(opts.partitions).mapInPandas(run, USER_EMBEDDING_SPARK_SCHEMA)
