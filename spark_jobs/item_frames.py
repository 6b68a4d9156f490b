"""Item transformations, `DataFrame -> DataFrame`: prepare (text or reject reason) and embed."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from feature_gen.config import ItemTextConfig
from feature_gen.data.contract import DUPLICATE_ID, check_item_columns
from feature_gen.store.schema import ITEM_EMBEDDING_SPARK_SCHEMA, ITEM_ID
from spark_jobs.item_batches import ORDER, PREPARED_SCHEMA, embed_item_batch, prepare_item_batch
from spark_jobs.worker_model import WorkerStats, timed_batches, worker_encoders

# DUPLICATE_ID (feature_gen.data.contract): a second row for an item id already in the input (the first one wins)


@dataclass(frozen=True)
class InferenceOptions:
    batch_size: int = 64
    torch_threads: int = 1
    bucket: bool = True
    partitions: int = 2
    device: str = "cpu"  # torch device of the workers' models (cpu, cuda, cuda:N)


def prepare_items(raw: DataFrame, text_cfg: ItemTextConfig) -> DataFrame:
    """item_id (string), text, reason, row_json, _order: one row per input row. `reason` is null for an
    embeddable item; otherwise null_id / no_text / oversize_text / duplicate_id and `row_json` holds
    the input row."""
    check_item_columns(raw.columns, "items", text_cfg)
    # File order, fixed before any shuffle: the first row of a duplicated id wins, every run the same.
    # Ids become strings in Spark, before pandas sees them: an integer column with a null would reach
    # pandas as float64 and turn id 7 into "7.0", which no interaction (cast by Spark to "7") matches.
    numbered = raw.withColumn(ITEM_ID, F.col(ITEM_ID).cast("string")).withColumn(ORDER, F.monotonically_increasing_id())
    prepared = numbered.mapInPandas(
        lambda batches: (prepare_item_batch(pdf, text_cfg) for pdf in batches), PREPARED_SCHEMA
    )
    # Only embeddable rows compete for an id: a rejected row never shadows a good one.
    first = Window.partitionBy(ITEM_ID, F.col("reason").isNull()).orderBy(ORDER)
    rank = F.when(F.col("reason").isNull(), F.row_number().over(first))
    return prepared.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (rank > 1), F.lit(DUPLICATE_ID)).otherwise(F.col("reason")),
    ).withColumn(
        "row_json", F.when(F.col("reason") == DUPLICATE_ID, F.to_json(F.struct(ITEM_ID, "text"))).otherwise(F.col("row_json"))
    )


def embed_items(accepted: DataFrame, bundle_path: str, opts: InferenceOptions, stats: WorkerStats | None = None) -> DataFrame:
    """item_id, embedding (array<float>) for prepared rows with a text, via mapInPandas.

    With `opts.bucket`, rows are spread evenly over the tasks and sorted by text length inside each, so
    every Arrow batch holds texts of similar length and pads little; feature_gen.inference.encoders then sorts
    by token length within the batch."""
    spread = accepted.select(ITEM_ID, "text").repartition(opts.partitions)
    if opts.bucket:
        spread = spread.sortWithinPartitions(F.length("text").desc())

    def run(batches):
        encoders = worker_encoders(bundle_path, opts.torch_threads, stats, device=opts.device)
        yield from timed_batches(batches, lambda pdf: embed_item_batch(pdf, encoders, opts.batch_size, opts.bucket), stats)

    return spread.mapInPandas(run, ITEM_EMBEDDING_SPARK_SCHEMA)
