"""The offline store's layout: Parquet tables partitioned by bundle version, replaced atomically.

    <offline_root>/<table>/bundle_version=<version>/part-*.parquet

Tables: item_embedding, user_embedding, user_recent_items (what the feature views read) and
item_rejects, user_rejects (what the jobs could not embed, with a reason). The version lives in the
partition folder name, the Hive/Spark convention, so every reader of the table (Spark, pyarrow, Feast)
gets a `bundle_version` column on every row without the files repeating it.

A version is published by writing it completely into a staging folder (`<root>/_staging/<table>-<run>`,
outside every table folder) and then renaming it into place, so a reader sees the old
version or the new one, never half of one. The same two-rename swap is done through Hadoop's FileSystem
API by the Spark jobs (spark_jobs/publish.py) so it also works on HDFS.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pandas as pd

from feature_gen.store.schema import (  # noqa: F401  (table names re-exported: readers import them from here)
    BUNDLE_VERSION,
    ITEM_EMBEDDING,
    ITEM_REJECTS,
    USER_EMBEDDING,
    USER_RECENT_ITEMS,
    USER_REJECTS,
)

TABLES = (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, ITEM_REJECTS, USER_REJECTS)

VERSION_COLUMN = BUNDLE_VERSION
PARTITION_PREFIX = VERSION_COLUMN + "="
STAGING_DIR = "_staging"  # <root>/_staging/<table>-<run>: outside every table, same file system
# Bundle versions are `hllm-<hex>`; anything that could escape a path segment is refused.
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class OfflineStoreError(RuntimeError):
    """A missing table or version, or a bad version name; the message names the path."""


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise OfflineStoreError(f"bundle version {version!r} is not a valid name (letters, digits, . _ -)")
    return version


def table_path(root: str | Path, table: str) -> Path:
    if table not in TABLES:
        raise OfflineStoreError(f"unknown offline table {table!r} (expected one of {', '.join(TABLES)})")
    return Path(root) / table


def version_path(root: str | Path, table: str, version: str) -> Path:
    return table_path(root, table) / f"{PARTITION_PREFIX}{check_version(version)}"


def staging_path(root: str | Path, table: str) -> Path:
    return Path(root) / STAGING_DIR / f"{table_path(root, table).name}-{uuid.uuid4().hex[:12]}"


def publish_local(staging: Path, target: Path) -> None:
    """Move a completely written `staging` folder to `target`, replacing what was there.

    Two renames: the old version goes aside first, then the new one moves in. Each rename is atomic on a
    POSIX file system, so a concurrent reader finds the old folder, the new one, or (for the instant
    between the renames) none, and never a mix of files from two runs."""
    staging, target = Path(staging), Path(target)
    if not staging.is_dir():
        raise OfflineStoreError(f"{staging}: staging folder not found; nothing to publish")
    retired = target.parent / f"_replaced-{uuid.uuid4().hex[:12]}"  # underscore: readers skip it
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def write_version(root: str | Path, table: str, version: str, frame: pd.DataFrame) -> Path:
    """Write `frame` as the whole of `version` in `table` (replacing it), without the version column."""
    target = version_path(root, table, version)
    staging = staging_path(root, table)
    staging.mkdir(parents=True)
    try:
        data = frame.drop(columns=[VERSION_COLUMN], errors="ignore")
        data.to_parquet(staging / "part-00000.parquet", index=False)
        publish_local(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def list_versions(root: str | Path, table: str) -> list[str]:
    folder = table_path(root, table)
    if not folder.is_dir():
        return []
    return sorted(p.name[len(PARTITION_PREFIX):] for p in folder.iterdir() if p.name.startswith(PARTITION_PREFIX))


def read_version(root: str | Path, table: str, version: str) -> pd.DataFrame:
    """One version of a table, with its `bundle_version` column filled in."""
    folder = version_path(root, table, version)
    if not folder.is_dir():
        have = list_versions(root, table)
        raise OfflineStoreError(
            f"{folder}: no version {version!r} in offline table {table!r} "
            f"(have: {', '.join(have) if have else 'none'})"
        )
    frame = pd.read_parquet(folder)
    frame[VERSION_COLUMN] = version
    return frame
