"""What both entry points share: arguments, config, the Spark session, reading input, output paths."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from feature_gen.config import HLLMConfig, config_from_dict, load_config, parse_override, set_dotted
from feature_gen.store.offline_store import PARTITION_PREFIX, STAGING_DIR, check_version
from spark_jobs.item_frames import InferenceOptions


def job_arguments(description: str, input_flag: str, input_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", required=True, help="model bundle folder (<root>/<version>), visible to every executor")
    p.add_argument(input_flag, required=True, help=input_help)
    p.add_argument("--output", default=None, help="offline store root (default: store.offline_root of the config)")
    p.add_argument("--config", default=None, help="YAML config; its spark and store sections are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set spark.batch_size=32 (repeatable)")
    p.add_argument("--master", default=None, help="Spark master, e.g. local[2] (default: spark-submit's --master; local[*] if none)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward pass (spark.batch_size)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads per Python worker (spark.torch_threads)")
    p.add_argument("--partitions", type=int, default=None, help="inference tasks (spark.partitions)")
    p.add_argument("--bucket", dest="bucket", action="store_true", default=None, help="bucket texts by length")
    p.add_argument("--no-bucket", dest="bucket", action="store_false", help="do not bucket texts by length")
    p.add_argument("--materialize", action="store_true", help="push the new version into the online store")
    return p


def job_config(args) -> HLLMConfig:
    overrides = dict(parse_override(o) for o in args.overrides)
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        raw: dict = {}
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        cfg = config_from_dict(raw, "<defaults>")
    # Flags win over the config file: they are what the operator typed for this run.
    for flag, field in (("batch_size", "batch_size"), ("torch_threads", "torch_threads"), ("partitions", "partitions"),
                        ("bucket", "bucket_by_length")):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg.spark, field, value)
    if args.output:
        cfg.store.offline_root = args.output
    return cfg


def spark_session(app_name: str, cfg: HLLMConfig, master: str | None):
    """The job's session. `master` (the --master flag) wins; otherwise spark-submit's --master applies
    (its default is local[*]), so the same command runs unchanged on a cluster."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    threads = str(cfg.spark.torch_threads)
    settings = {
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.spark.arrow_batch_rows),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.enabled": "false",
        "spark.log.level": "WARN",
        "spark.python.worker.reuse": "true",  # the model cache lives in the worker: keep workers
        # Executors must never reach for the Hugging Face hub, and each worker gets its thread share.
        "spark.executorEnv.HF_HUB_OFFLINE": "1",
        "spark.executorEnv.TRANSFORMERS_OFFLINE": "1",
        "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
        "spark.executorEnv.OMP_NUM_THREADS": threads,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if cfg.spark.partitions is None:
        cfg.spark.partitions = 2 * spark.sparkContext.defaultParallelism
    # Shuffles of a feature job are small per row; Spark's default of 200 partitions mostly schedules empty tasks.
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.spark.partitions))
    return spark


def inference_options(cfg: HLLMConfig) -> InferenceOptions:
    return InferenceOptions(
        batch_size=cfg.spark.batch_size,
        torch_threads=cfg.spark.torch_threads,
        bucket=cfg.spark.bucket_by_length,
        partitions=cfg.spark.partitions,
    )


def read_input(spark, path: str, encoding: str = "utf-8"):
    """Parquet (file or folder), CSV/TSV (with header) or JSON lines, by extension, read under the input
    contract (feature_gen/data/contract.py) exactly as the pandas reader reads it: no type inference.

    CSV/TSV: every column a string (ids keep `007`; the contract parses timestamps), only an empty
    cell is null (`N/A`, `None`, `null` stay text), bytes invalid in `encoding` become U+FFFD, which the
    item-text builder and check_interactions refuse (bad_encoding), and quoted newlines stay inside
    their cell (multiLine, which also reads a file as one partition, so file order is row order).
    JSON lines: primitives as strings. Parquet: the file's types, integer id columns cast to strings."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegralType

    from feature_gen.data.contract import ID_COLUMNS, MISSING_CELLS, java_charset

    lowered = path.lower()
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"{path}: input not found")
    if lowered.endswith((".csv", ".tsv")):
        frame = spark.read.csv(
            path, header=True, inferSchema=False, sep="\t" if lowered.endswith(".tsv") else ",",
            encoding=java_charset(encoding), multiLine=True, nullValue=MISSING_CELLS[0], mode="PERMISSIVE",
        )
        # a quoted empty cell ("") is empty too: null, as pandas reads it
        cells = [F.col(f"`{c}`") for c in frame.columns]  # backticks: a header may hold dots
        return frame.select([F.when(c == "", F.lit(None)).otherwise(c).alias(n) for c, n in zip(cells, frame.columns)])
    if lowered.endswith((".json", ".jsonl")):
        return spark.read.json(path, primitivesAsString=True)
    frame = spark.read.parquet(path)
    for name in ID_COLUMNS:
        if name in frame.columns and isinstance(frame.schema[name].dataType, IntegralType):
            frame = frame.withColumn(name, F.col(name).cast("string"))
    return frame


def uri(root: str) -> str:
    """A local root as an absolute path; anything with a scheme (hdfs://, s3a://) as given."""
    return root if "://" in root else str(Path(root).resolve())


@dataclass(frozen=True)
class TablePaths:
    staging: str
    target: str


def table_paths(root: str, table: str, version: str, run_id: str) -> TablePaths:
    # Staging sits outside the table folder (a reader of the table never lists it) but on the same file
    # system, so publishing is a rename. Not under an underscore-named leaf: Spark would ignore it.
    base = uri(root).rstrip("/")
    return TablePaths(
        staging=f"{base}/{STAGING_DIR}/{table}-{run_id}",
        target=f"{base}/{table}/{PARTITION_PREFIX}{check_version(version)}",
    )
