"""Files as teams have them, mapped onto the input contract before the contract reads them.

    data:
      items_path: catalogue.jsonl              # .parquet | .csv | .tsv | .jsonl (also .json lines)
      interactions_path: events.csv
      columns: {user_id: userId, item_id: productId, timestamp: ts, title: name}
      timestamp_format: iso8601                # seconds | milliseconds | iso8601
    item_text:
      tag_separator: ";"                       # tags given as "a;b" strings (lists work as they are)

This layer only renames columns, reads the file format and converts the timestamp to integer Unix
seconds; every rule of the contract itself (missing values, ids, ordering) stays in
feature_gen/data/contract.py, which reads the frame this returns. Errors name the file, the row
(1-based, header excluded) and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from feature_gen.config import DataConfig
from feature_gen.data.contract import DataError

FORMATS = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".json", ".ndjson")
TIMESTAMP = "timestamp"


class FormatError(DataError):
    """A file this layer cannot map onto the contract (format, column, timestamp), named by file, row, column."""


def read_any(path: str | Path) -> pd.DataFrame:
    """A table from Parquet (file or folder), CSV, TSV or JSON lines, by suffix."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq") or path.is_dir():
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".json", ".ndjson"):
        try:
            return pd.read_json(path, lines=True, dtype=False)  # dtype=False: ids like "007" stay strings
        except ValueError as exc:
            raise FormatError(f"{path}: not JSON lines (one object per line): {exc}") from None
    raise FormatError(f"{path}: unsupported format {suffix!r} (expected one of {', '.join(FORMATS)})")


def rename_columns(frame: pd.DataFrame, columns: dict[str, str], source: str) -> pd.DataFrame:
    """`columns` maps contract names to the file's. One mapping serves both files (items and events), so
    a mapped column a file lacks is skipped; the contract then names any required column still missing."""
    present = {theirs: ours for ours, theirs in columns.items() if theirs in frame.columns and theirs != ours}
    clash = [ours for ours in present.values() if ours in frame.columns and ours not in present]
    if clash:
        raise FormatError(f"{source}: column(s) {clash} exist and are also mapped to by data.columns; drop one")
    return frame.rename(columns=present)


def to_unix_seconds(values: pd.Series, fmt: str, source: str) -> pd.Series:
    """Timestamps as int64 Unix seconds from integer seconds, integer milliseconds or ISO-8601 text."""
    if fmt == "iso8601":
        if pd.api.types.is_datetime64_any_dtype(values):
            parsed = values
        else:
            parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
            bad = np.flatnonzero(parsed.isna().to_numpy() & values.notna().to_numpy())
            if len(bad):
                raise FormatError(f"{source}: row {bad[0] + 1}: {TIMESTAMP} {values.iloc[bad[0]]!r} is not an ISO-8601 "
                                  "time (data.timestamp_format: iso8601)")
        if getattr(parsed.dt, "tz", None) is None:
            parsed = parsed.dt.tz_localize("UTC")  # naive times are read as UTC
        seconds = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[s]").astype("int64")
        return seconds.where(values.notna(), other=pd.NA).astype("Int64") if values.isna().any() else seconds
    if fmt == "milliseconds":
        numeric = pd.to_numeric(values, errors="coerce")
        bad = np.flatnonzero((numeric.isna() & values.notna()).to_numpy() | (numeric.fillna(0) % 1 != 0).to_numpy())
        if len(bad):
            raise FormatError(f"{source}: row {bad[0] + 1}: {TIMESTAMP} {values.iloc[bad[0]]!r} is not an integer "
                              "number of milliseconds (data.timestamp_format: milliseconds)")
        # floor division keeps int64 exact (a float division would round current times to ~64 s)
        return numeric.astype("Int64") // 1000 if values.isna().any() else numeric.astype("int64") // 1000
    if fmt == "seconds":
        return values  # the contract checks and converts integer seconds itself
    raise FormatError(f"data.timestamp_format: expected seconds, milliseconds or iso8601; got {fmt!r}")


def read_mapped(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """The file at `path` in the contract's columns (`data.columns` applied) with `timestamp`, when
    present, as integer Unix seconds per `data.timestamp_format`. Ready for the contract's checks."""
    source = str(path)
    frame = rename_columns(read_any(path), cfg.columns, source)
    if TIMESTAMP in frame.columns and cfg.timestamp_format != "seconds":
        frame[TIMESTAMP] = to_unix_seconds(frame[TIMESTAMP], cfg.timestamp_format, source)
    return frame
