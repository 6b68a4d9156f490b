"""The generic input contract, read from Parquet or CSV and checked.

items:        item_id (required), title, tags, description (any subset; extra columns are kept and
              may be used as text keys, e.g. `year`)
interactions: user_id, item_id, timestamp (int64 seconds; required); extra columns (rating) kept

Every check fails with the file, the row and the field: a ranking engineer reading the error should
not need a debugger to find the bad line.

Timestamps (one rule for every reader: pandas, Spark, `hllm produce-events`, the stream parser):
an event time is an integer in the configured unit (`data.timestamp_unit` / `stream.timestamp_unit`:
seconds, milliseconds, or auto = by magnitude), converted to int64 Unix seconds, and must lie in the
plausible window [1995-01-01T00:00:00Z, now + MAX_CLOCK_SKEW_S]. A value outside it is refused with a
reason (a reject, a dead letter or a one-line error), never stored: a millisecond value read as
seconds lands in the year ~55,000 and freezes a user's sequence forever. The two units' windows do not
overlap (seconds end near 1.8e9, milliseconds start near 7.9e11), so `auto` decides each value
unambiguously.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from feature_gen.config import ItemTextConfig
from feature_gen.model.item_text import REJECT_BAD_ENCODING, item_text_or_reject  # noqa: F401 (re-exported)

ITEM_ID = "item_id"
USER_ID = "user_id"
TIMESTAMP = "timestamp"
INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)

# Why a row is rejected (kept with its reason, never silently dropped), the same words from every
# reader that skips bad rows: the Spark jobs' item_rejects / user_rejects and the Python API's
# `.rejects` (`hllm encode`). Items: REJECT_NULL_ID / no_text / oversize_text / bad_encoding from the
# item-text builder, and DUPLICATE_ID (a later embeddable row for an id already seen: the first wins).
DUPLICATE_ID = "duplicate_id"
NULL_USER_ID, NULL_ITEM_ID, UNKNOWN_ITEM = "null_user_id", "null_item_id", "unknown_item"
BAD_TIMESTAMP = "bad_timestamp"  # not a whole number
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # a whole number outside the plausible window


class DataError(ValueError):
    """Input data that breaks the contract; the message names the file, row and field."""


log = logging.getLogger(__name__)

# ---------------------------------------------------------------- timestamps

TIMESTAMP_UNITS = ("seconds", "milliseconds", "auto")
# No recommender log we read predates 1995 (MovieLens-100K starts in 1997, latest-small in 1996); a
# smaller value is a unit error (days, minutes) or a placeholder like 0.
EARLIEST_PLAUSIBLE_S = 788_918_400  # 1995-01-01T00:00:00Z
# How far an event may lie ahead of the reader's clock (producer clocks drift; NTP keeps them within
# seconds, so an hour is generous and still refuses every millisecond value read as seconds).
MAX_CLOCK_SKEW_S = 3_600
_PER_SECOND = {"seconds": 1, "milliseconds": 1_000}


def _utc(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def plausible_window(now_s: float | None = None, max_skew_s: int = MAX_CLOCK_SKEW_S) -> tuple[int, int]:
    """[earliest, latest] plausible event time in Unix seconds (inclusive), given the reader's clock."""
    now = time.time() if now_s is None else now_s
    return EARLIEST_PLAUSIBLE_S, int(now) + int(max_skew_s)


@dataclass(frozen=True)
class TimestampCheck:
    """The reading of one timestamp: `seconds` (int Unix seconds) and the `unit` it was read in when
    plausible, else `reason` (one line naming the value, what was expected and the window)."""

    seconds: int | None
    unit: str | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.reason is None


def whole_number(value) -> int | None:
    """An integer value, or None when the value is not a whole number (bool, 1.5, 'abc', NaN)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:  # a CSV written from a float column carries "1700000000.0"
            number = float(text)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number.is_integer() else None
    return None


def check_timestamp(value, unit: str = "seconds", now_s: float | None = None,
                    max_skew_s: int = MAX_CLOCK_SKEW_S) -> TimestampCheck:
    """Read one event time under the contract: an integer in `unit` ("seconds", "milliseconds" or
    "auto": seconds if plausible as seconds, else milliseconds if plausible as those) inside
    `plausible_window(now_s, max_skew_s)`. Milliseconds are floored to whole seconds. Never raises
    for a bad value: returns a TimestampCheck whose `reason` says why (callers add file/row/offset)."""
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit: expected one of {', '.join(TIMESTAMP_UNITS)}; got {unit!r}")
    number = whole_number(value)
    if number is None:
        expected = "seconds or milliseconds" if unit == "auto" else unit
        return TimestampCheck(None, None, f"expected an integer number of {expected}; got {value!r}")
    lo, hi = plausible_window(now_s, max_skew_s)
    candidates = ("seconds", "milliseconds") if unit == "auto" else (unit,)
    for candidate in candidates:
        seconds = number // _PER_SECOND[candidate]
        if lo <= seconds <= hi:
            return TimestampCheck(seconds, candidate, None)
    window = f"[{_utc(lo)}, {_utc(hi)} = now + {max_skew_s} s skew]"
    reading = f"{number} as {unit}" if unit != "auto" else f"{number} (neither seconds nor milliseconds)"
    hint = ""
    if unit != "auto":
        for other in ("seconds", "milliseconds"):
            if other != unit and lo <= number // _PER_SECOND[other] <= hi:
                hint = f"; it reads as {other} ({_utc(number // _PER_SECOND[other])}): set timestamp_unit: {other} or auto"
    return TimestampCheck(None, None, f"{reading} is {_utc(number // _PER_SECOND.get(unit, 1))}, outside the "
                                      f"plausible window {window}{hint}")


@dataclass(frozen=True)
class TimestampColumn:
    """A column of event times read under the contract: `seconds` int64 [n] (0 where refused),
    `reasons` [n] (None where accepted) and how many values each unit read."""

    seconds: np.ndarray
    reasons: list
    units: dict

    @property
    def bad(self) -> np.ndarray:
        """0-based positions of the refused values."""
        return np.flatnonzero(np.array([r is not None for r in self.reasons], dtype=bool))


def read_timestamps(values, unit: str = "seconds", now_s: float | None = None,
                    max_skew_s: int = MAX_CLOCK_SKEW_S, source: str = "") -> TimestampColumn:
    """`check_timestamp` over a column (pandas Series, list or array), one clock for all values.
    Datetime columns (Parquet timestamps) are converted through their own unit first. With unit
    "auto" the decision is logged once per column (which units it read, how many values each)."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    now = time.time() if now_s is None else now_s
    if pd.api.types.is_datetime64_any_dtype(series):
        # Parquet keeps the stored unit (Spark writes microseconds): convert via the unit, not by
        # assuming nanoseconds; a datetime is unambiguous, so it is read as seconds whatever `unit` says.
        # (pandas' Timestamp.timestamp() reads a naive value as UTC, like Spark's session time zone here)
        checks = [TimestampCheck(None, None, "missing") if pd.isna(v)
                  else check_timestamp(math.floor(v.timestamp()), "seconds", now, max_skew_s) for v in series]
    elif pd.api.types.is_signed_integer_dtype(series) and not series.isna().any():
        return _read_integer_timestamps(series.to_numpy(dtype=np.int64), unit, now, max_skew_s, source)
    else:
        checks = [check_timestamp(v, unit, now, max_skew_s) for v in series.tolist()]
    seconds = np.array([c.seconds if c.ok else 0 for c in checks], dtype=np.int64)
    units: dict = {}
    for c in checks:
        if c.ok:
            units[c.unit] = units.get(c.unit, 0) + 1
    if unit == "auto" and units:
        log.info("%stimestamp_unit auto: %s", f"{source}: " if source else "",
                 ", ".join(f"{n} value(s) read as {u}" for u, n in sorted(units.items())))
    return TimestampColumn(seconds, [c.reason for c in checks], units)


# ---------------------------------------------------------------- reading files

ID_COLUMNS = (USER_ID, ITEM_ID)
TEXT_COLUMNS = ("title", "tags", "description")
# Only an empty cell is missing. "N/A", "NA", "None", "NaN", "null" are text a user typed (a film can be
# called "None"); pandas' default would read them as missing while Spark embeds them, so neither does.
MISSING_CELLS = ("",)
# What a decoder puts where bytes are not valid in the declared encoding. Both readers decode with
# replacement and then refuse any cell holding it (reason bad_encoding), so Spark (which can only
# replace) and pandas refuse the same rows and no replacement character is ever embedded.
REPLACEMENT_CHAR = "\ufffd"  # the item-text builder refuses it too (REJECT_BAD_ENCODING), for every reader


# Spark's CSV reader takes only these charsets (Java names); Python spells them differently.
_JAVA_CHARSETS = {"utf-8": "UTF-8", "iso8859-1": "ISO-8859-1", "ascii": "US-ASCII", "utf-16": "UTF-16",
                  "utf-16-be": "UTF-16BE", "utf-16-le": "UTF-16LE", "utf-32": "UTF-32"}


def java_charset(encoding: str) -> str:
    """`data.encoding` as the charset name Spark's CSV reader accepts; ValueError for one it cannot read."""
    import codecs

    name = codecs.lookup(encoding).name
    if name not in _JAVA_CHARSETS:
        raise ValueError(f"data.encoding: Spark reads CSV only as {', '.join(sorted(set(_JAVA_CHARSETS)))}; "
                         f"got {encoding!r} (convert the file to UTF-8)")
    return _JAVA_CHARSETS[name]


def string_columns(text_keys=()) -> tuple[str, ...]:
    """Columns every reader keeps as text (never numbers): ids, the timestamp (the contract parses
    it), the text columns and the configured text keys."""
    return tuple(dict.fromkeys((*ID_COLUMNS, TIMESTAMP, *TEXT_COLUMNS, *text_keys)))


def _read_integer_timestamps(values: np.ndarray, unit: str, now: float, max_skew_s: int, source: str) -> TimestampColumn:
    """read_timestamps for an int64 column, vectorised (a 25M-row log must not loop in Python); the
    per-value rule is check_timestamp's, which also words the reason of each refused value."""
    if unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp_unit: expected one of {', '.join(TIMESTAMP_UNITS)}; got {unit!r}")
    lo, hi = plausible_window(now, max_skew_s)
    as_ms = values // 1000
    as_s_ok = (values >= lo) & (values <= hi)
    as_ms_ok = (as_ms >= lo) & (as_ms <= hi)
    if unit == "seconds":
        seconds, ok, ms_used = values, as_s_ok, np.zeros_like(as_s_ok)
    elif unit == "milliseconds":
        seconds, ok, ms_used = as_ms, as_ms_ok, as_ms_ok
    else:
        ms_used = ~as_s_ok & as_ms_ok
        seconds, ok = np.where(as_s_ok, values, as_ms), as_s_ok | as_ms_ok
    reasons: list = [None] * len(values)
    for i in np.flatnonzero(~ok):
        reasons[i] = check_timestamp(int(values[i]), unit, now, max_skew_s).reason
    units = {name: int(n) for name, n in (("seconds", (ok & ~ms_used).sum()), ("milliseconds", (ok & ms_used).sum())) if n}
    if unit == "auto" and units:
        log.info("%stimestamp_unit auto: %s", f"{source}: " if source else "",
                 ", ".join(f"{n} value(s) read as {u}" for u, n in sorted(units.items())))
    return TimestampColumn(np.where(ok, seconds, 0).astype(np.int64), reasons, units)


def read_table(path: str | Path, encoding: str = "utf-8", text_keys=()) -> pd.DataFrame:
    """A table of the contract from Parquet (file or folder), CSV or TSV, in file order.

    CSV/TSV: ids, timestamp and text columns are read as strings (`007` stays `007`), only an empty
    cell is missing, bytes invalid in `encoding` become U+FFFD (refused later, see REPLACEMENT_CHAR).
    Parquet: its own types, with integer id columns cast to strings (7 -> "7", never "7.0").
    Raises DataError naming the file when it is missing, of an unknown format, or unreadable as its
    format (an empty CSV, a row with more fields than the header, an unclosed quote, a file that is
    not Parquet, a folder without Parquet files, an encoding that cannot be the file's)."""
    import pyarrow as pa

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if path.is_dir() and not any(p.is_file() and not p.name.startswith(("_", ".")) for p in path.rglob("*")):
        # (any name: Spark writes part-*.parquet, Hive part-00000; _SUCCESS and .crc files are not data)
        raise DataError(f"{path}: a folder with no data files (a data path is a file, or a Parquet dataset folder)")
    if suffix in (".parquet", ".pq") or path.is_dir():
        try:
            return _parquet_with_string_ids(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file or dataset ({_first_line(exc)})") from None
    if suffix in (".csv", ".tsv"):
        strings = string_columns(text_keys)
        try:
            return pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", dtype={c: str for c in strings},
                keep_default_na=False, na_values=list(MISSING_CELLS), encoding=encoding, encoding_errors="replace",
            )
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: empty file (no header row)") from None
        except pd.errors.ParserError as exc:
            raise DataError(f"{path}: not well-formed {suffix[1:].upper()} ({_first_line(exc)})") from None
        except UnicodeError as exc:
            raise DataError(f"{path}: cannot be read as {encoding} ({_first_line(exc)}); set data.encoding") from None
    raise DataError(f"{path}: unsupported format {suffix!r} (expected .parquet, .csv or .tsv)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parquet_with_string_ids(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import json

    table = pq.read_table(path)
    cast = [n for n in ID_COLUMNS if n in table.column_names and pa.types.is_integer(table.schema.field(n).type)]
    for name in cast:
        # in Arrow, before pandas: an integer column with a null would become float64 ("7.0") there
        table = table.set_column(table.schema.get_field_index(name), name, pc.cast(table.column(name), pa.string()))
    metadata = dict(table.schema.metadata or {})
    if cast and b"pandas" in metadata:
        # the stored pandas dtype (Int64, int64) would be restored over the strings: say they are strings now
        pandas_meta = json.loads(metadata[b"pandas"])
        for column in pandas_meta.get("columns", []):
            if column.get("name") in cast:
                column.update(pandas_type="unicode", numpy_type="object", metadata=None)
        metadata[b"pandas"] = json.dumps(pandas_meta).encode()
        table = table.replace_schema_metadata(metadata)
    return table.to_pandas()


def bad_encoding_cells(frame: pd.DataFrame, columns) -> list[tuple[int, str]]:
    """(0-based row, column) of every cell holding U+FFFD, in row order."""
    hits = []
    for col in columns:
        if col in frame.columns and frame[col].dtype == object:
            mask = frame[col].map(lambda v: isinstance(v, str) and REPLACEMENT_CHAR in v).to_numpy(dtype=bool)
            hits += [(int(r), col) for r in np.flatnonzero(mask)]
    return sorted(hits)


def _plain(value):
    """numpy scalars print as np.int64(5); people want 5."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _row_label(df: pd.DataFrame, position: int) -> str:
    # Rows are reported 1-based as a person counts data lines in a file (header excluded).
    return f"row {position + 1}"


def check_item_columns(columns, source: str, text_cfg: ItemTextConfig) -> list[str]:
    """The item table's columns hold an id and at least one text key (pandas and Spark readers alike);
    returns the text keys present. DataError naming `source` and the columns it has otherwise."""
    columns = [str(c) for c in columns]
    if ITEM_ID not in columns:
        raise DataError(f"{source}: missing column {ITEM_ID!r} (have: {', '.join(columns)})")
    usable = [k for k in text_cfg.text_keys if k in columns]
    if not usable:
        raise DataError(
            f"{source}: none of the text columns {text_cfg.text_keys} is present "
            f"(have: {', '.join(columns)}); set item_text.text_keys"
        )
    return usable


def validate_items(items: pd.DataFrame, source: str, text_cfg: ItemTextConfig) -> pd.DataFrame:
    """Check the item table; return it with a clean RangeIndex. Does not drop rows (see split_rejects)."""
    check_item_columns(items.columns, source, text_cfg)
    items = items.reset_index(drop=True)
    ids = items[ITEM_ID]
    nulls = np.flatnonzero(ids.isna().to_numpy())
    if len(nulls):
        raise DataError(f"{source}: {_row_label(items, nulls[0])}: {ITEM_ID} is null ({len(nulls)} such rows)")
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[pos]).to_numpy())[0])
        raise DataError(
            f"{source}: {_row_label(items, pos)}: duplicate {ITEM_ID} {_plain(ids.iloc[pos])!r} "
            f"(first seen at {_row_label(items, first)}; {int(dup.sum())} duplicates in all)"
        )
    return items


def validate_interactions(interactions: pd.DataFrame, source: str, timestamp_unit: str = "seconds",
                          now_s: float | None = None) -> pd.DataFrame:
    """Check columns, nulls, encodings and timestamps; return a copy with int64 Unix-second timestamps
    (read in `timestamp_unit` under the plausible window, see check_timestamp) and file order kept.
    Raises DataError naming the file, the 1-based data row and the field of the first bad row."""
    missing = [c for c in INTERACTION_COLUMNS if c not in interactions.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))} "
            f"(have: {', '.join(map(str, interactions.columns))})"
        )
    interactions = interactions.reset_index(drop=True)
    for col in INTERACTION_COLUMNS:
        nulls = np.flatnonzero(interactions[col].isna().to_numpy())
        if len(nulls):
            raise DataError(f"{source}: {_row_label(interactions, nulls[0])}: {col} is null ({len(nulls)} such rows)")
    garbled = bad_encoding_cells(interactions, INTERACTION_COLUMNS)
    if garbled:
        row, col = garbled[0]
        raise DataError(f"{source}: {_row_label(interactions, row)}: {col} {interactions[col].iloc[row]!r} holds bytes "
                        f"that are not valid in the declared encoding (set data.encoding; {len(garbled)} such cells)")
    read = read_timestamps(interactions[TIMESTAMP], timestamp_unit, now_s, source=source)
    bad = read.bad
    if len(bad):
        raise DataError(f"{source}: {_row_label(interactions, bad[0])}: {TIMESTAMP} {read.reasons[bad[0]]} "
                        f"({len(bad)} such rows)")
    # int64 on purpose: float32 resolves current Unix times only to ~64 s and reorders sequences.
    interactions[TIMESTAMP] = read.seconds
    return interactions


def check_known_items(interactions: pd.DataFrame, item_ids: pd.Series, source: str) -> None:
    known = pd.Index(item_ids)
    unknown = ~interactions[ITEM_ID].isin(known).to_numpy()
    if unknown.any():
        pos = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{source}: {_row_label(interactions, pos)}: {ITEM_ID} {_plain(interactions[ITEM_ID].iloc[pos])!r} is not in "
            f"the item table ({int(unknown.sum())} interactions name unknown items)"
        )


@dataclass
class ItemRejects:
    """Items that cannot be embedded, with the reason; kept, never silently dropped."""

    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[ITEM_ID, "reason"]))

    def __len__(self) -> int:
        return len(self.rows)


def split_rejects(items: pd.DataFrame, text_cfg: ItemTextConfig) -> tuple[pd.DataFrame, ItemRejects]:
    """Separate items with usable text from those that have none (or oversize text), with reasons."""
    reasons = [item_text_or_reject(row, text_cfg).reject_reason for row in items.to_dict("records")]
    bad = np.array([r is not None for r in reasons], dtype=bool)
    rejects = items.loc[bad, [ITEM_ID]].copy()
    rejects["reason"] = [r for r in reasons if r is not None]
    return items.loc[~bad].reset_index(drop=True), ItemRejects(rejects.reset_index(drop=True))


def fingerprint(items: pd.DataFrame, interactions: pd.DataFrame) -> str:
    """A content hash of the data a model was trained on (goes into the bundle manifest)."""
    h = hashlib.sha256()
    for df in (items, interactions):
        h.update(",".join(map(str, df.columns)).encode())
        h.update(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def load_files(items_path: str | Path, interactions_path: str | Path, text_cfg: ItemTextConfig,
               encoding: str = "utf-8", timestamp_unit: str = "seconds", now_s: float | None = None, read=None):
    """Read and check both tables of the contract from files (see read_table, validate_items,
    validate_interactions): ids as strings, only empty cells missing, timestamps in int64 seconds.
    `read`: path -> DataFrame (default read_table with `encoding`), e.g. feature_gen.data.formats.read_mapped,
    which maps a team's columns and formats onto the contract."""
    read = read or (lambda path: read_table(path, encoding, text_cfg.text_keys))
    items = validate_items(read(items_path), str(items_path), text_cfg)
    interactions = validate_interactions(read(interactions_path), str(interactions_path), timestamp_unit, now_s)
    check_known_items(interactions, items[ITEM_ID], str(interactions_path))
    return items, interactions
