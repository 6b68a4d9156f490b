"""What both entry points share: arguments, config, the Spark session, reading input, output paths."""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from feature_gen.config import HLLMConfig, config_from_dict, load_config, parse_override, set_dotted
from feature_gen.store.offline_store import PARTITION_PREFIX, STAGING_DIR, check_version
from spark_jobs.item_frames import InferenceOptions


def job_arguments(description: str, input_flag: str, input_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", required=True,
                   help="model bundle folder (<root>/<version>): a path or any Hadoop URI (file://, hdfs://, s3a://, gs://); "
                        "a path or file:// must be visible to every executor, other schemes are shipped by Spark")
    p.add_argument("--ship-bundle", action="store_true",
                   help="have Spark copy the bundle to each executor once (SparkContext.addFile) even for a path or "
                        "file:// URI (default only for other schemes)")
    p.add_argument("--device", default=None,
                   help="torch device of the Python workers' models: cpu, cuda, cuda:N (one GPU per executor: "
                        "spark.executor.resource.gpu.amount=1 and a task's share)")
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
    p.add_argument("--materialize", action="store_true",
                   help="write the new version into the online store from the executors (each task writes its "
                        "partition through Feast's online write path; nothing is collected on the driver)")
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
                        ("bucket", "bucket_by_length"), ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg.spark, field, value)
    if args.output:
        cfg.store.offline_root = args.output
    return cfg


# The job's defaults, applied only where the user (spark-submit --conf, spark-defaults.conf, the cluster's
# settings) did not set the key: the operator's configuration always wins.
def job_defaults(cfg: HLLMConfig) -> dict[str, str]:
    threads = str(cfg.spark.torch_threads)
    return {
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


SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
_USER_KEYS: set[str] = set()  # what the user set, as found by the last spark_session() of this driver


def user_spark_conf():
    """The configuration the user gave before the session exists: spark-submit's --conf and
    spark-defaults.conf reach the driver JVM as system properties, which SparkConf() loads."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # attach to spark-submit's JVM (or start one) so the defaults load
    return SparkConf()


def spark_session(app_name: str, cfg: HLLMConfig, master: str | None):
    """The job's session. `master` (the --master flag) wins; otherwise spark-submit's --master applies
    (its default is local[*]), so the same command runs unchanged on a cluster. Every key of
    `job_defaults` and spark.sql.shuffle.partitions is set only when the user did not set it; the
    effective values are printed (`spark_settings_line`)."""
    from pyspark.sql import SparkSession

    conf = user_spark_conf()
    user_keys = {k for k, _ in conf.getAll()}
    for key, value in job_defaults(cfg).items():
        if key not in user_keys:
            conf.set(key, value)
    conf.setIfMissing("spark.app.name", app_name)
    if master:
        conf.setMaster(master)
    builder = SparkSession.builder.config(conf=conf)
    spark = builder.getOrCreate()
    if "spark.log.level" not in user_keys:
        spark.sparkContext.setLogLevel("WARN")
    if cfg.spark.partitions is None:
        cfg.spark.partitions = 2 * spark.sparkContext.defaultParallelism
    # Shuffles of a feature job are small per row; Spark's default of 200 partitions mostly schedules
    # empty tasks. A user's own value stays.
    if SHUFFLE_PARTITIONS not in user_keys:
        spark.conf.set(SHUFFLE_PARTITIONS, str(cfg.spark.partitions))
    _USER_KEYS.clear()
    _USER_KEYS.update(user_keys)
    return spark


def spark_settings_line(spark, cfg: HLLMConfig) -> str:
    """The effective value of every setting the job has a default for, read back from the session,
    marked `(user)` where the user's value won: what ran, not what was asked for."""
    user_keys = _USER_KEYS
    keys = [*job_defaults(cfg), SHUFFLE_PARTITIONS]
    conf = spark.sparkContext.getConf()
    parts = []
    for key in keys:
        value = spark.conf.get(key, None) if key.startswith("spark.sql.") else conf.get(key)
        parts.append(f"{key}={value}{' (user)' if key in user_keys else ''}")
    return "spark settings: " + ", ".join(parts)


@dataclass(frozen=True)
class DriverBundle:
    uri: str  # what the operator gave; what executors resolve
    local_dir: str  # a folder on the driver: manifest, tokenizer
    manifest: dict


def driver_bundle_before_spark(uri: str) -> DriverBundle | None:
    """The bundle read before Spark starts when it is a local path or file:// URI (so a bad bundle costs no
    session); None for a remote URI, which needs Spark's file system (`driver_bundle_with_spark`)."""
    from feature_gen.model.bundle import read_manifest
    from spark_jobs.worker_model import local_path

    local = local_path(uri)
    if local is None:
        return None
    return DriverBundle(uri, local, read_manifest(local))


def driver_bundle_with_spark(spark, uri: str, ship: bool) -> DriverBundle:
    """Fetch a remote bundle to the driver, and ship it to the executors when asked or when it is remote
    (each executor fetches it once through Spark; loading verifies its checksums there)."""
    from feature_gen.model.bundle import read_manifest
    from spark_jobs.worker_model import fetch_bundle_to_driver, local_path, ship_bundle

    local_dir = fetch_bundle_to_driver(spark, uri)
    manifest = read_manifest(local_dir)
    if ship or local_path(uri) is None:
        ship_bundle(spark, uri)
    return DriverBundle(uri, local_dir, manifest)


def run_job(job: str, args, input_path: str, run: Callable[..., int],
            check_bundle: Callable[[DriverBundle], None] | None = None) -> int:
    """The frame of both entry points: config and bundle checked before a Spark session exists where
    they can be (a bad bundle costs no session), the session, a remote bundle fetched through it, Spark's
    progress, and `run(spark, args, cfg, bundle, started) -> exit code`. What the operator must fix (a
    bad config or bundle, an input that cannot be read at all) is one line on stderr and exit 2, no trace;
    anything else is a bug and propagates. `check_bundle` refuses a bundle by raising."""
    try:
        cfg = job_config(args)
    except Exception as exc:  # a ConfigError names the file and field itself (a flag's value: pydantic's
        # ValidationError names the field): the bundle has nothing to do with it, so it is not named
        print(f"{job}: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        bundle = driver_bundle_before_spark(args.bundle)  # None: a remote URI, fetched once Spark is up
        if bundle is not None and check_bundle is not None:
            check_bundle(bundle)
    except Exception as exc:
        print(f"{job}: {args.bundle}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    spark = spark_session(f"hllm {job}" + (f" {bundle.manifest['version']}" if bundle else ""), cfg, args.master)
    try:
        from spark_jobs.progress import job_progress

        try:
            bundle = driver_bundle_with_spark(spark, args.bundle, args.ship_bundle)
            if check_bundle is not None:
                check_bundle(bundle)
        except Exception as exc:
            print(f"{job}: {args.bundle}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        with job_progress(spark, job):
            return run(spark, args, cfg, bundle, started)
    except Exception as exc:
        line = unreadable_input_line(exc, input_path)
        if line is None:
            raise
        print(f"{job}: {line}", file=sys.stderr)  # one line: the input is the operator's to fix
        return 2
    finally:
        spark.stop()


def inference_options(cfg: HLLMConfig) -> InferenceOptions:
    return InferenceOptions(
        batch_size=cfg.spark.batch_size,
        torch_threads=cfg.spark.torch_threads,
        bucket=cfg.spark.bucket_by_length,
        partitions=cfg.spark.partitions,
        device=cfg.spark.device,
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


_SPARK_ERROR = re.compile(r"\[([A-Z_]+(?:\.[A-Z_]+)?)\] (.*?)(?: SQLSTATE: \w+|$)", re.S)
# Spark error classes that mean "this input cannot be read": the job's input is the operator's to fix.
_UNREADABLE = ("FAILED_READ_FILE", "UNABLE_TO_INFER_SCHEMA", "PATH_NOT_FOUND", "CANNOT_READ_FILE_FOOTER")


def unreadable_input_line(exc: BaseException, path: str) -> str | None:
    """One line for an error meaning the input at `path` cannot be read (an empty folder, a file that is
    not Parquet, files whose column types differ), naming the file and column Spark names; None for any
    other error. Spark raises the type mismatch only when a task reads the file, so the job maps errors
    from anywhere in the run, not just from `read_input`."""
    match = _SPARK_ERROR.search(str(exc))
    if match is None or not match.group(1).startswith(_UNREADABLE):
        return None
    condition, message = match.group(1), " ".join(match.group(2).split())
    if condition == "UNABLE_TO_INFER_SCHEMA":
        message = "no readable data files (an empty folder?): " + message
    return f"{path}: cannot read the input ({condition}): {message}"


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
