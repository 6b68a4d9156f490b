"""Typed access to the Feast feature store: the only way jobs and consumers read or write features.

    from feature_gen.store.feature_store import open_store
    store = open_store(cfg.store)                  # reads the Feast repo (creates it once if missing)
    write_feature_repo(cfg.store, active_version=v)   # `hllm feature-repo`: create/update, locked, atomic

    # writes (online: through the views' push sources; offline: Parquet partitioned by version)
    store.push_item_embeddings(frame)              # item_id, embedding, bundle_version
    store.push_user_embeddings(frame)              # user_id, embedding, seq_len, last_event_ts, bundle_version
    store.push_user_embeddings(frame, only_newer_events=True)   # streaming: never move a user backwards
    store.push_recent_items(frame)                 # user_id, recent_item_ids, recent_item_ts, last_event_ts
    store.write_offline(ITEM_EMBEDDING, version, frame)         # replaces that version atomically
    store.materialize_version(version)             # offline Parquet of `version` -> online store

    # reads (online); a missing row is a NaN row with found=False, never an error
    store.item_embeddings(["i1", "i2"], dim=64) -> ItemEmbeddings(ids, vectors [n, D], bundle_versions, found)
    store.user_embeddings(["u1"], dim=64)       -> UserEmbeddingRows(ids, vectors [n, D], seq_len, last_event_ts, ...)
    store.recent_items(["u1"])            -> RecentItems(ids, item_ids, item_ts, last_event_ts, found)

The store reads and writes rows; it does not score. Request-time scoring (the user·item score, the
version check, the ranker) has one path: ranker_integration/serving.py. Column and view names come
from feature_gen.store.schema.

Online store: SQLite (`store.online_store: sqlite`, a file under the repo) or Redis (`redis`, at
`store.redis_connection`). Online rows are stamped with the time they are written (strictly increasing
within a process), so a newer write always replaces an older one; Feast's Redis store drops a write that
is not newer than what it holds. Whether a user embedding is *newer by events* is a separate question
(`last_event_ts`), answered by `only_newer_events`.

Ids are strings in the store; any id passed in is converted with `str()`, except None (and NaN), which
is refused naming the id column: `str(None)` would read the row of a user called "None".

D of a read: the caller's `dim` (the width its schema expects: the bundle manifest's `item_dim`, the
ranker's feature config), else the width of the rows found. With `dim` the result is `[n, dim]` even
when nothing is found, and a stored vector of another width (another bundle's) counts as not found;
without it, a read that finds nothing has no width to give (`[n, 0]`) and two widths are refused.

Errors: FeatureStoreError for wrong input (names the view and column); OnlineStoreError when the online
store itself fails (unreachable Redis, a locked or corrupt SQLite file): a caller cannot fix that by
changing its input, so a consumer stops on it instead of dead-lettering.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
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
from feature_gen.store.offline_store import check_version, list_versions, read_version, write_version
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


class OnlineStoreError(RuntimeError):
    """The online store could not be read or written (not the caller's input: the store itself failed)."""


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


CONFIG_FILE = "feature_store.yaml"
REPO_STATE_FILE = "hllm_repo.json"  # the active version and the versions the definitions were built for
REPO_LOCK_FILE = ".hllm_feature_repo.lock"
_SQL_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql", "oracle")


def _registry_config(cfg: StoreConfig, repo: Path) -> dict:
    ttl = cfg.registry_cache_ttl_s
    if cfg.registry is None:
        return {"path": str(repo / "registry.db"), "cache_ttl_seconds": ttl}
    scheme = cfg.registry.split("://", 1)[0].split("+", 1)[0] if "://" in cfg.registry else ""
    if scheme in _SQL_SCHEMES:  # a SQLAlchemy URL: Feast's SQL registry, transactional and shared
        return {"registry_type": "sql", "path": cfg.registry, "cache_ttl_seconds": ttl}
    path = cfg.registry if scheme else str(Path(cfg.registry).resolve())  # s3://, gs:// files as given
    return {"path": path, "cache_ttl_seconds": ttl}


def _online_config(cfg: StoreConfig, repo: Path) -> dict:
    if cfg.online_store == "sqlite":
        return {"type": "sqlite", "path": str(Path(cfg.sqlite_path).resolve() if cfg.sqlite_path else repo / "online.db")}
    connection = cfg.redis_connection
    if cfg.redis_password_env:
        # Feast expands ${VAR} when it reads the file: the secret stays in the environment.
        connection += f",password=${{{cfg.redis_password_env}}}"
    if cfg.redis_ssl:
        connection += ",ssl=true"
    online = {"type": "redis", "redis_type": cfg.redis_type, "connection_string": connection}
    if cfg.redis_key_ttl_s:
        online["key_ttl_seconds"] = cfg.redis_key_ttl_s
    return online


def repo_config(cfg: StoreConfig) -> dict:
    """The feature_store.yaml keys this project manages, from the `store` config section."""
    repo = Path(cfg.repo_path).resolve()
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": _registry_config(cfg, repo),
        "online_store": _online_config(cfg, repo),
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def _merged_config(existing: dict, managed: dict) -> dict:
    """`managed` over `existing`: keys a user added (flags, auth, an online store option) survive; a key
    the config manages takes the config's value. A changed online store type replaces that section."""
    merged = dict(existing)
    for key, value in managed.items():
        old = existing.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and old.get("type", value.get("type")) == value.get("type"):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return merged


def _generated_repo_module() -> str:
    # `feast apply` imports every .py in the repo folder: this one builds the project's definitions for
    # the offline root and versions recorded next to it (hllm_repo.json), so the CLI sees what hllm applied.
    return (
        '"""Generated by `hllm feature-repo`; edit feature_gen/store/feature_repo/definitions.py instead."""\n'
        "import json\nfrom pathlib import Path\n\n"
        "from feature_gen.store.feature_repo.definitions import feature_definitions\n\n"
        f"_state = json.loads((Path(__file__).parent / {REPO_STATE_FILE!r}).read_text())\n"
        "_objects = feature_definitions(_state['offline_root'], _state['active_version'], _state['versions'])\n"
        "globals().update({getattr(o, 'name', str(i)): o for i, o in enumerate(_objects)})\n"
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _feast_store(config: dict, repo: Path):
    from feast import FeatureStore, RepoConfig

    repo_cfg = RepoConfig(**yaml.safe_load(os.path.expandvars(yaml.safe_dump(config))))
    repo_cfg.repo_path = repo
    return FeatureStore(repo_path=str(repo), config=repo_cfg)


def _apply_atomically(config: dict, repo: Path, objects: list) -> None:
    """Apply `objects` to the registry. A local registry file is updated as a copy that is then renamed
    over the original (Feast itself truncates and rewrites it, which a concurrent reader can catch half
    written); a SQL or object-store registry is written by Feast (a transaction / a whole-object put)."""
    registry = config["registry"]
    path = registry.get("path", "") if isinstance(registry, dict) else str(registry)
    local_file = (not isinstance(registry, dict) or registry.get("registry_type", "file") == "file") and "://" not in path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Feast warns about preview features on every apply
        if not local_file:
            _feast_store(config, repo).apply(objects)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if target.exists():
                shutil.copyfile(target, tmp)
            _feast_store({**config, "registry": {**registry, "path": str(tmp)}}, repo).apply(objects)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


@dataclass
class FeatureRepo:
    """What `write_feature_repo` left: the repo folder, the active version, the versions with their own
    offline views and FeatureService, and the managed keys it changed in feature_store.yaml."""

    path: Path
    active_version: str | None
    versions: list[str]
    changed_keys: list[str]
    created: bool


def _offline_versions(offline_root: str) -> list[str]:
    if "://" in offline_root:
        return []  # listing a remote root needs its file system; versions are then the active one only
    return sorted({v for view in _COLUMNS for v in list_versions(offline_root, view)})


def write_feature_repo(
    cfg: StoreConfig, active_version: str | None = None, lock_timeout_s: float = 600, only_if_missing: bool = False
) -> FeatureRepo | None:
    """Create or update the Feast repo at `cfg.repo_path` and apply it, under a file lock, every file
    written atomically: feature_store.yaml (managed keys from `cfg`; a user's other keys are kept), the
    generated features.py with its hllm_repo.json (offline root, active version, versions offline), the
    registry. `active_version` None keeps the current one. Safe to run from several processes at once.
    Returns None when `only_if_missing` and the repo exists."""
    from filelock import FileLock

    repo = Path(cfg.repo_path).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    offline_root = cfg.offline_root if "://" in cfg.offline_root else str(Path(cfg.offline_root).resolve())
    with FileLock(str(repo / REPO_LOCK_FILE), timeout=lock_timeout_s):
        config_path, state_path = repo / CONFIG_FILE, repo / REPO_STATE_FILE
        existing = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else None
        if only_if_missing and existing is not None:
            return None  # another process created it while this one waited for the lock
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        active = active_version or state.get("active_version")
        if active:
            check_version(active)
        versions = sorted(set(_offline_versions(offline_root)) | ({active} if active else set()))
        managed = repo_config(cfg)
        merged = _merged_config(existing or {}, managed)
        changed = sorted(k for k in managed if (existing or {}).get(k) != merged[k])
        new_state = {"offline_root": offline_root, "active_version": active, "versions": versions}
        _write_atomically(state_path, json.dumps(new_state, indent=2) + "\n")
        _write_atomically(repo / _GENERATED_REPO_FILE, _generated_repo_module())
        _apply_atomically(merged, repo, feature_definitions(offline_root, active, versions))
        # Last: a process that finds feature_store.yaml finds an applied registry next to it.
        if existing is None or changed:
            _write_atomically(config_path, yaml.safe_dump(merged, sort_keys=False))
    return FeatureRepo(repo, active, versions, changed, existing is None)


class HLLMFeatureStore:
    """The feature store of one config: a Feast repo folder, its offline Parquet and its online store.
    Opening it reads the repo; it never writes the repo (see write_feature_repo)."""

    def __init__(self, cfg: StoreConfig, repo_config_dict: dict | None = None):
        self.cfg = cfg
        self.repo_path = Path(cfg.repo_path).resolve()
        self.offline_root = Path(cfg.offline_root).resolve() if "://" not in cfg.offline_root else cfg.offline_root
        self._repo_config_dict = repo_config_dict
        self._feast = None

    @property
    def feast(self):
        """The Feast FeatureStore, opened on first use from feature_store.yaml (or the dict an executor
        was handed, so it needs no repo folder: only the registry and the online store)."""
        if self._feast is None:
            if self._repo_config_dict is not None:
                self._feast = _feast_store(self._repo_config_dict, self.repo_path)
            elif not (self.repo_path / CONFIG_FILE).is_file():
                raise FeatureStoreError(
                    f"{self.repo_path}: no {CONFIG_FILE} (the feature repo was never created); "
                    "run `hllm feature-repo --config ...` (or any job with --materialize)")
            else:
                from feast import FeatureStore

                self._feast = FeatureStore(repo_path=str(self.repo_path))
        return self._feast

    def repo_config_dict(self) -> dict:
        """feature_store.yaml as written (env vars unexpanded): what executors open the store from."""
        return yaml.safe_load((self.repo_path / CONFIG_FILE).read_text())

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
        try:
            self.feast.push(push_source_name(view), online, to=PushMode.ONLINE)
        except Exception as exc:
            raise OnlineStoreError(f"{view}: online write of {len(online)} row(s) failed ({self._where()}): "
                                   f"{type(exc).__name__}: {_one_line(exc)}") from exc
        return len(online)

    def write_online(self, view: str, frame: pd.DataFrame) -> int:
        """Write rows of `view` (its columns, see _COLUMNS) online through the view's push source; returns
        rows written. What the executors of a distributed materialization call per chunk."""
        if view not in _COLUMNS:
            raise FeatureStoreError(f"unknown view {view!r} (expected one of {', '.join(_COLUMNS)})")
        return self._push(view, frame)

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

    def _where(self) -> str:
        if self.cfg.online_store == "redis":
            return f"redis at {self.cfg.redis_connection}"
        return f"sqlite at {_repo_config(self.cfg)['online_store']['path']}"

    def _read(self, view: str, key: str, ids: Iterable, features: Sequence[str]) -> tuple[list[str], dict]:
        ids = _id_strings(view, key, ids)
        if not ids:
            return ids, {f: [] for f in features}
        try:
            response = self.feast.get_online_features(
                features=[f"{view}:{f}" for f in features], entity_rows=[{key: i} for i in ids]
            ).to_dict()
        except Exception as exc:
            raise OnlineStoreError(f"{view}: online read of {len(ids)} row(s) failed ({self._where()}): "
                                   f"{type(exc).__name__}: {_one_line(exc)}") from exc
        return ids, response

    def item_embeddings(self, item_ids: Iterable, dim: int | None = None) -> ItemEmbeddings:
        """Rows in input order; `dim` (D the caller's schema expects) makes an all-missing read [n, D]."""
        ids, got = self._read(ITEM_EMBEDDING, ITEM_ID, item_ids, [EMBEDDING, BUNDLE_VERSION])
        vectors, found = _stack(got[EMBEDDING], dim, ITEM_EMBEDDING, ids)
        return ItemEmbeddings(ids, vectors, list(got[BUNDLE_VERSION]), found)

    def user_embeddings(self, user_ids: Iterable, dim: int | None = None) -> UserEmbeddingRows:
        """Rows in input order; `dim` (D the caller's schema expects) makes an all-missing read [n, D]."""
        ids, got = self._read(
            USER_EMBEDDING, USER_ID, user_ids, [EMBEDDING, SEQ_LEN, LAST_EVENT_TS, BUNDLE_VERSION]
        )
        vectors, found = _stack(got[EMBEDDING], dim, USER_EMBEDDING, ids)
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


def _stack(values: list, dim: int | None = None, view: str = "", ids: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """[n, D] float32 with NaN rows where a value is missing, and found [n] bool."""
    found = np.array([v is not None for v in values], dtype=bool)
    width = next((len(v) for v in values if v is not None), 0) if dim is None else int(dim)
    out = np.full((len(values), width), np.nan, dtype=np.float32)
    for row, v in enumerate(values):
        if v is None:
            continue
        if len(v) != width:
            if dim is None:
                raise FeatureStoreError(f"{view}: embeddings of {len(v)} and {width} values in one read "
                                        f"({ids[row]!r}); pass dim= to read one width")
            found[row] = False  # a vector of another width belongs to another bundle: missing for this caller
            continue
        out[row] = np.asarray(v, dtype=np.float32)
    return out, found


def _id_strings(view: str, key: str, ids: Iterable) -> list[str]:
    out = []
    for position, i in enumerate(ids):
        if i is None or (isinstance(i, float) and np.isnan(i)):
            raise FeatureStoreError(f"{view}: {key} at position {position} is {i!r}; expected an id")
        out.append(str(i))
    return out


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _ints(values: list) -> np.ndarray:
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)


def open_store(cfg: StoreConfig, apply: bool = True) -> HLLMFeatureStore:
    """The feature store of `cfg`. Reads the repo as it is and never rewrites it (a user's edit of
    feature_store.yaml survives); with `apply` a repo that does not exist yet is created and applied
    once (write_feature_repo, under its lock). Update a repo with `hllm feature-repo`."""
    if apply and not (Path(cfg.repo_path).resolve() / CONFIG_FILE).is_file():
        write_feature_repo(cfg, only_if_missing=True)  # re-checked under the lock: the first of several processes creates it
    return HLLMFeatureStore(cfg)
