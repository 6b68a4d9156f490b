"""The generic input contract, read from Parquet or CSV and checked.

items:        item_id (required), title, tags, description (any subset; extra columns are kept and
              may be used as text keys, e.g. `year`)
interactions: user_id, item_id, timestamp (int64 seconds; required); extra columns (rating) kept

Every check fails with the file, the row and the field: a ranking engineer reading the error should
not need a debugger to find the bad line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feature_gen.config import ItemTextConfig
from feature_gen.model.item_text import item_text_or_reject

ITEM_ID = "item_id"
USER_ID = "user_id"
TIMESTAMP = "timestamp"
INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)


class DataError(ValueError):
    """Input data that breaks the contract; the message names the file, row and field."""


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq") or path.is_dir():
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise DataError(f"{path}: unsupported format {suffix!r} (expected .parquet, .csv or .tsv)")


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


def validate_interactions(interactions: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check columns, nulls and timestamp type; return with int64 timestamps and file order kept."""
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
    ts = interactions[TIMESTAMP]
    if not pd.api.types.is_integer_dtype(ts):
        if pd.api.types.is_datetime64_any_dtype(ts):
            # Parquet keeps the stored unit (Spark writes microseconds): convert via the unit, not
            # by assuming nanoseconds.
            ts = ts.dt.as_unit("s").astype("int64")
        else:
            numeric = pd.to_numeric(ts, errors="coerce")
            bad = np.flatnonzero(numeric.isna().to_numpy() | (numeric % 1 != 0).to_numpy())
            if len(bad):
                raise DataError(
                    f"{source}: {_row_label(interactions, bad[0])}: {TIMESTAMP} {_plain(ts.iloc[bad[0]])!r} is not "
                    "an integer number of seconds"
                )
            ts = numeric
    # int64 on purpose: float32 resolves current Unix times only to ~64 s and reorders sequences.
    interactions[TIMESTAMP] = ts.astype("int64")
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


def load_files(items_path: str | Path, interactions_path: str | Path, text_cfg: ItemTextConfig, read=read_table):
    """Read and check both tables of the contract from files (`read`: path -> DataFrame, e.g.
    feature_gen.data.formats.read_mapped, which maps a team's columns and formats onto the contract)."""
    items = validate_items(read(items_path), str(items_path), text_cfg)
    interactions = validate_interactions(read(interactions_path), str(interactions_path))
    check_known_items(interactions, items[ITEM_ID], str(interactions_path))
    return items, interactions
