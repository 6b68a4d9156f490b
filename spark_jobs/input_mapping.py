"""A team's files mapped onto the input contract on the Spark side, as feature_gen.data.formats does for
pandas: `data.columns` renames (contract name -> file column) and `data.timestamp_format: iso8601`
converts ISO-8601 text to integer Unix seconds (naive times as UTC); numbers stay as written, for the
contract's reader to take in `data.timestamp_unit`. The jobs apply it right after reading, before their
contract checks."""

from __future__ import annotations

from feature_gen.config import DataConfig


def map_to_contract(df, cfg: DataConfig):
    from pyspark.sql import functions as F

    missing = [theirs for theirs in cfg.columns.values() if theirs not in df.columns]
    if missing:
        raise ValueError(f"data.columns names {missing} but the input has {df.columns}")
    for ours, theirs in cfg.columns.items():
        if theirs != ours:
            df = df.withColumnRenamed(theirs, ours)
    if "timestamp" in df.columns and cfg.timestamp_format == "iso8601":
        # to_timestamp reads ISO-8601 with or without an offset; the session time zone is UTC (job_setup)
        df = df.withColumn("timestamp", F.unix_timestamp(F.to_timestamp(F.col("timestamp").cast("string"))).cast("long"))
    return df
