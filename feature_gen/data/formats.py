"""Files as teams have them, mapped onto the input contract before the contract reads them.

    data:
      items_path: catalogue.jsonl              # .parquet | .csv | .tsv | .jsonl (also .json lines)
      interactions_path: events.csv
      columns: {user_id: userId, item_id: productId, timestamp: ts, title: name}
      timestamp_format: iso8601                # number (in data.timestamp_unit) | iso8601
    item_text:
      tag_separator: ";"                       # tags given as "a;b" strings (lists work as they are)

This layer only renames columns, reads the file format and converts ISO-8601 text to integer Unix
seconds; numbers are left to the contract, which reads them in `data.timestamp_unit`; every rule of the contract itself (missing values, ids, ordering) stays in
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


def read_any(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A table from Parquet (file or folder), CSV, TSV or JSON lines, by suffix."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq", ".csv", ".tsv") or path.is_dir():
        from feature_gen.data.contract import read_table

        return read_table(path, encoding)  # the contract's reader: string ids, only empty cells missing
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


def _is_iso_time(value) -> bool:
    """An ISO-8601 time pandas cannot hold (its datetimes end in 2262): the value is a time, just not a
    plausible one, and the error should say that rather than call it malformed."""
    from datetime import datetime

    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def to_unix_seconds(values: pd.Series, fmt: str, source: str) -> pd.Series:
    """ISO-8601 text (`fmt` iso8601; naive times read as UTC) as int64 Unix seconds; numbers (`fmt`
    number) unchanged, for the contract to read in `data.timestamp_unit`. FormatError names the row."""
    if fmt == "number":
        return values
    if fmt != "iso8601":
        raise FormatError(f"data.timestamp_format: expected number or iso8601; got {fmt!r}")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & values.notna().to_numpy())
        if len(bad):
            value = values.iloc[bad[0]]
            raise FormatError(f"{source}: row {bad[0] + 1}: {TIMESTAMP} {value!r} "
                              + ("is a time outside the contract's plausible window (1995-01-01 to now)"
                                 if _is_iso_time(value) else "is not an ISO-8601 time (data.timestamp_format: iso8601)"))
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize("UTC")  # naive times are read as UTC
    seconds = parsed.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[s]").astype("int64")
    return seconds.where(values.notna(), other=pd.NA).astype("Int64") if values.isna().any() else seconds


def read_mapped(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """The file at `path` in the contract's columns (`data.columns` applied) with `timestamp`, when
    present, as written (numbers) or as integer Unix seconds (iso8601 text). Ready for the contract's checks."""
    source = str(path)
    frame = rename_columns(read_any(path, cfg.encoding), cfg.columns, source)
    if TIMESTAMP in frame.columns and cfg.timestamp_format != "number":
        frame[TIMESTAMP] = to_unix_seconds(frame[TIMESTAMP], cfg.timestamp_format, source)
    return frame
