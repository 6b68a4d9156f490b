"""Typed access to the Feast feature store: the only way jobs and consumers read or write features.

    from feature_gen.store.feature_store import open_store
    store = open_store(cfg.store)                  # writes + applies the Feast repo on first use

    # writes (online: through the views' push sources; offline: Parquet partitioned by version)
    store.push_item_embeddings(frame)              # item_id, embedding, bundle_version
    store.push_user_embeddings(frame)              # user_id, embedding, seq_len, last_event_ts, bundle_version
    store.push_user_embeddings(frame, only_newer_events=True)   # streaming: never move a user backwards
    store.push_recent_items(frame)                 # user_id, recent_item_ids, recent_item_ts, last_event_ts
    store.write_offline(ITEM_EMBEDDING, version, frame)         # replaces that version atomically
    store.materialize_version(version)             # offline Parquet of `version` -> online store

    # reads (online)
    store.item_embeddings(["i1", "i2"])   -> ItemEmbeddings(ids, vectors [n, D], bundle_versions, found)
    store.user_embeddings(["u1"])         -> UserEmbeddingRows(ids, vectors, seq_len, last_event_ts, ...)
    store.recent_items(["u1"])            -> RecentItems(ids, item_ids, item_ts, last_event_ts, found)

The store reads and writes rows; it does not score. Request-time scoring (the user·item score, the
version check, the ranker) has one path: ranker_integration/serving.py. Column and view names come
from feature_gen.store.schema.

Online store: SQLite (`store.online_store: sqlite`, a file under the repo) or Redis (`redis`, at
`store.redis_connection`). Online rows are stamped with the time they are written (strictly increasing
within a process), so a newer write always replaces an older one; Feast's Redis store drops a write that
is not newer than what it holds. Whether a user embedding is *newer by events* is a separate question
(`last_event_ts`), answered by `only_newer_events`.

Ids are strings in the store; any id passed in is converted with `str()`.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from feature_gen.config import StoreConfig
from feature_gen.store.feature_repo.definitions import feature_definitions, push_source_name
from feature_gen.store.offline_store import read_version, write_version
from feature_gen.store.schema import (
    BUNDLE_VERSION,
    EMBEDDING,
    EVENT_TIMESTAMP,
    ITEM_EMBEDDING,
    ITEM_ID,
    LAST_EVENT_TS,
    RECENT_ITEM_IDS,
    RECENT_ITEM_TS,
    SEQ_LEN,
    USER_EMBEDDING,
    USER_ID,
    USER_RECENT_ITEMS,
    VIEWS,
    offline_event_timestamps,
)

_COLUMNS = {name: view.columns for name, view in VIEWS.items()}
VERSION_COLUMN = BUNDLE_VERSION
_GENERATED_REPO_FILE = "features.py"


class FeatureStoreError(RuntimeError):
    """A feature-store call with the wrong input; the message names the view and the column."""


@dataclass
class ItemEmbeddings:
    item_ids: list[str]
    vectors: np.ndarray  # [n, D] float32; NaN rows where not found
    bundle_versions: list[str | None]
    found: np.ndarray  # [n] bool


@dataclass
class UserEmbeddingRows:
    user_ids: list[str]
    vectors: np.ndarray  # [n, D] float32; NaN rows where not found
    seq_len: np.ndarray  # [n] int64 (-1 where not found)
    last_event_ts: np.ndarray  # [n] int64 unix seconds (-1 where not found)
    bundle_versions: list[str | None]
    found: np.ndarray  # [n] bool


@dataclass
class RecentItems:
    user_ids: list[str]
    item_ids: list[list[str]]  # per user, oldest first ([] where not found)
    item_ts: list[np.ndarray]  # per user, int64 unix seconds aligned with item_ids
    last_event_ts: np.ndarray  # [n] int64 (-1 where not found)
    found: np.ndarray  # [n] bool


class _WriteClock:
    """Strictly increasing UTC write times: two writes in the same microsecond still order (Redis keeps
    the first of two equal stamps)."""

    def __init__(self):
        self._last = datetime.fromtimestamp(0, timezone.utc)
        self._lock = threading.Lock()

    def stamp(self) -> datetime:
        with self._lock:
            now = datetime.now(timezone.utc)
            self._last = max(now, self._last + timedelta(microseconds=1))
            return self._last


_CLOCK = _WriteClock()


def _repo_config(cfg: StoreConfig) -> dict:
    repo = Path(cfg.repo_path).resolve()
    if cfg.online_store == "sqlite":
        online = {"type": "sqlite", "path": str(Path(cfg.sqlite_path).resolve() if cfg.sqlite_path else repo / "online.db")}
    else:
        online = {"type": "redis", "connection_string": cfg.redis_connection}
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": str(repo / "registry.db"),
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def _generated_repo_module(offline_root: Path) -> str:
    # `feast apply` imports every .py in the repo folder: this one re-exports the project's definitions.
    return (
        '"""Generated by feature_gen.store.feature_store; edit feature_gen/store/feature_repo/definitions.py instead."""\n'
        "from feature_gen.store.feature_repo.definitions import feature_definitions\n\n"
        f"_objects = feature_definitions({str(offline_root)!r})\n"
        "globals().update({getattr(o, 'name', str(i)): o for i, o in enumerate(_objects)})\n"
    )


class HLLMFeatureStore:
    """The feature store of one config: a Feast repo folder, its offline Parquet and its online store."""

    def __init__(self, cfg: StoreConfig):
        from feast import FeatureStore

        self.cfg = cfg
        self.repo_path = Path(cfg.repo_path).resolve()
        self.offline_root = Path(cfg.offline_root).resolve()
        self._write_repo_files()
        self.feast = FeatureStore(repo_path=str(self.repo_path))

    # ----------------------------------------------------------------------------- repo

    def _write_repo_files(self) -> None:
        self.repo_path.mkdir(parents=True, exist_ok=True)
        (self.repo_path / "feature_store.yaml").write_text(yaml.safe_dump(_repo_config(self.cfg), sort_keys=False))
        (self.repo_path / _GENERATED_REPO_FILE).write_text(_generated_repo_module(self.offline_root))

    def apply(self) -> None:
        """Register every definition (idempotent) and create the online tables."""
        objects = feature_definitions(self.offline_root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Feast warns about preview features on every apply
            self.feast.apply(objects)

    # ----------------------------------------------------------------------------- writes

    def _checked_frame(self, view: str, frame: pd.DataFrame) -> pd.DataFrame:
        columns = _COLUMNS[view]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise FeatureStoreError(
                f"{view}: frame lacks column(s) {', '.join(missing)} (expected {', '.join(columns)}; "
                f"have {', '.join(map(str, frame.columns))})"
            )
        out = frame.loc[:, list(columns)].copy()
        key = USER_ID if USER_ID in columns else ITEM_ID
        if out[key].isna().any():
            raise FeatureStoreError(f"{view}: {key} is null in {int(out[key].isna().sum())} row(s)")
        out[key] = out[key].astype(str)
        if EMBEDDING in out:
            out[EMBEDDING] = [np.asarray(v, dtype=np.float32) for v in out[EMBEDDING]]
        if RECENT_ITEM_IDS in out:
            out[RECENT_ITEM_IDS] = [[str(i) for i in v] for v in out[RECENT_ITEM_IDS]]
            out[RECENT_ITEM_TS] = [np.asarray(v, dtype=np.int64) for v in out[RECENT_ITEM_TS]]
        for col in (SEQ_LEN, LAST_EVENT_TS):
            if col in out:
                out[col] = out[col].astype("int64")
        if VERSION_COLUMN in out and out[VERSION_COLUMN].isna().any():
            raise FeatureStoreError(f"{view}: {VERSION_COLUMN} is null; every embedding row carries its bundle version")
        return out

    def _push(self, view: str, frame: pd.DataFrame) -> int:
        from feast.data_source import PushMode

        if len(frame) == 0:
            return 0
        online = self._checked_frame(view, frame)
        online[EVENT_TIMESTAMP] = _CLOCK.stamp()
        self.feast.push(push_source_name(view), online, to=PushMode.ONLINE)
        return len(online)

    def push_item_embeddings(self, frame: pd.DataFrame) -> int:
        """Write item embeddings online (columns item_id, embedding, bundle_version); returns rows written."""
        return self._push(ITEM_EMBEDDING, frame)

    def push_user_embeddings(self, frame: pd.DataFrame, only_newer_events: bool = False) -> int:
        """Write user embeddings online. With `only_newer_events`, a row is skipped when the store already
        holds the same user under the same bundle version with a later `last_event_ts` (a replayed or
        late event never moves an embedding backwards); a new bundle version always replaces."""
        if only_newer_events and len(frame):
            current = self.user_embeddings(frame[USER_ID].astype(str).tolist())
            stale = (
                current.found
                & (np.asarray(current.bundle_versions, dtype=object) == frame[VERSION_COLUMN].to_numpy(dtype=object))
                & (current.last_event_ts > frame[LAST_EVENT_TS].to_numpy(dtype=np.int64))
            )
            frame = frame.loc[~stale]
        return self._push(USER_EMBEDDING, frame)

    def push_recent_items(self, frame: pd.DataFrame) -> int:
        """Write users' recent items online (user_id, recent_item_ids, recent_item_ts, last_event_ts)."""
        return self._push(USER_RECENT_ITEMS, frame)

    def write_offline(self, view: str, version: str, frame: pd.DataFrame) -> Path:
        """Replace `version` of an offline table with `frame` (atomically); returns its folder."""
        if view not in _COLUMNS:
            raise FeatureStoreError(f"unknown view {view!r} (expected one of {', '.join(_COLUMNS)})")
        data = self._checked_frame(view, frame.assign(**{VERSION_COLUMN: version}) if view != USER_RECENT_ITEMS else frame)
        data[EVENT_TIMESTAMP] = offline_event_timestamps(data)
        return write_version(self.offline_root, view, version, data)

    def materialize_version(
        self, version: str, views: Sequence[str] = (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS), chunk_rows: int = 5000
    ) -> dict[str, int]:
        """Push one bundle version's offline tables online; returns rows written per view. Views with no
        offline data for the version are reported as 0 (items and users are written by separate jobs)."""
        from feature_gen.store.offline_store import OfflineStoreError

        written: dict[str, int] = {}
        for view in views:
            try:
                frame = read_version(self.offline_root, view, version)
            except OfflineStoreError:
                written[view] = 0
                continue
            written[view] = sum(
                self._push(view, frame.iloc[start : start + chunk_rows]) for start in range(0, len(frame), chunk_rows)
            )
        return written

    # ----------------------------------------------------------------------------- reads

    def _read(self, view: str, key: str, ids: Iterable, features: Sequence[str]) -> tuple[list[str], dict]:
        ids = [str(i) for i in ids]
        if not ids:
            return ids, {f: [] for f in features}
        response = self.feast.get_online_features(
            features=[f"{view}:{f}" for f in features], entity_rows=[{key: i} for i in ids]
        ).to_dict()
        return ids, response

    def item_embeddings(self, item_ids: Iterable) -> ItemEmbeddings:
        ids, got = self._read(ITEM_EMBEDDING, ITEM_ID, item_ids, [EMBEDDING, BUNDLE_VERSION])
        vectors, found = _stack(got[EMBEDDING])
        return ItemEmbeddings(ids, vectors, list(got[BUNDLE_VERSION]), found)

    def user_embeddings(self, user_ids: Iterable) -> UserEmbeddingRows:
        ids, got = self._read(
            USER_EMBEDDING, USER_ID, user_ids, [EMBEDDING, SEQ_LEN, LAST_EVENT_TS, BUNDLE_VERSION]
        )
        vectors, found = _stack(got[EMBEDDING])
        return UserEmbeddingRows(
            ids, vectors, _ints(got[SEQ_LEN]), _ints(got[LAST_EVENT_TS]), list(got[BUNDLE_VERSION]), found
        )

    def recent_items(self, user_ids: Iterable) -> RecentItems:
        ids, got = self._read(USER_RECENT_ITEMS, USER_ID, user_ids, [RECENT_ITEM_IDS, RECENT_ITEM_TS, LAST_EVENT_TS])
        found = np.array([v is not None for v in got[RECENT_ITEM_IDS]], dtype=bool)
        return RecentItems(
            ids,
            [list(v) if v is not None else [] for v in got[RECENT_ITEM_IDS]],
            [np.asarray(v if v is not None else [], dtype=np.int64) for v in got[RECENT_ITEM_TS]],
            _ints(got[LAST_EVENT_TS]),
            found,
        )


def _stack(values: list) -> tuple[np.ndarray, np.ndarray]:
    found = np.array([v is not None for v in values], dtype=bool)
    dim = next((len(v) for v in values if v is not None), 0)
    out = np.full((len(values), dim), np.nan, dtype=np.float32)
    for row, v in enumerate(values):
        if v is not None:
            out[row] = np.asarray(v, dtype=np.float32)
    return out, found


def _ints(values: list) -> np.ndarray:
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)


def open_store(cfg: StoreConfig, apply: bool = True) -> HLLMFeatureStore:
    """The feature store of `cfg`, with its definitions applied (cheap when nothing changed)."""
    store = HLLMFeatureStore(cfg)
    if apply:
        store.apply()
    return store
