"""Online reads and writes sized for the stream and the request: one round trip per batch per store.

    io = OnlineIO(store)                                     # store: feature_store.HLLMFeatureStore
    io.write({USER_RECENT_ITEMS: recent_item_rows(...), USER_EMBEDDING: user_embedding_rows(...)})
    recent, stored = io.user_state(["u1", "u2"])             # sequences + embeddings' versions, one round trip
    user, items = io.request_rows("u1", ["i1", ..., "i100"]) # 1 user + n items, one round trip

Same views, same values, same results as the plain Feast API (HLLMFeatureStore.push_* and
get_online_features; tests/test_online_io.py compares them on SQLite and Redis). What is skipped is
Feast's per-call plumbing, not its contract:

- **views resolved once**: the FeatureView objects, the provider and the repo config are looked up when
  OnlineIO is built, not on every call (a registry lookup per push was a large share of a batch).
- **no DataFrame round trip**: rows are built straight as Feast's protos (EntityKey, Value); an
  embedding's Value is parsed from its float32 bytes, so no Python float is made per element.
- **writes**: SQLite goes through the provider's `online_write_batch` (one transaction per view);
  Redis gets one pipeline for every view of the batch, and the views of one entity share one HSET, so
  a user's sequence and embedding land together. The hash layout is Feast's own (`_redis_key`,
  `_mmh3`, `_ts:<view>`), exactly what Feast's `online_write_batch` writes with `skip_dedup`; Feast's
  rule of dropping a write whose stamp is not newer is not re-checked: every stamp comes from
  feature_store's strictly increasing write clock, and a user is written by the one consumer that owns
  its partition. Whether an embedding is *newer by events* is the caller's rule (streaming's
  OnlineState applies `only_newer_events` from the state the batch already read).
- **reads**: Redis: one pipeline of HMGETs over every (view, entity) asked for; SQLite: the provider's
  `online_read`, one SELECT per view. Embeddings are decoded with numpy from the stored bytes. A read
  asks only for the features its caller uses: the consumer's read of a user's stored embedding takes its
  version and last_event_ts, not its vector (reading and decoding the vector was a fifth of the store's
  time in a refresh batch).

Ids are strings in the store; any id is converted with `str()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Int64List, StringList, Value

from feature_gen.store.feature_store import (
    _CLOCK,
    FeatureStoreError,
    ItemEmbeddings,
    RecentItems,
    UserEmbeddingRows,
)
from feature_gen.store.schema import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, VIEWS

VIEW_FEATURES = {name: tuple(f.name for f in view.features) for name, view in VIEWS.items()}
VIEW_KEY = {name: view.key for name, view in VIEWS.items()}
MAX_CACHED_KEYS = 1_000_000  # (join key, id) -> key; ~150 MB at the cap, then the cache starts over

# Protobuf wire tags: Value.float_list_val is field 16 (length-delimited), FloatList.val field 1 (packed).
_FLOAT_LIST_VAL_TAG = b"\x82\x01"
_PACKED_VAL_TAG = b"\x0a"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def float_list_value_bytes(vector: np.ndarray) -> bytes:
    """The serialized Feast `Value(float_list_val=FloatList(val=vector))`, built from the float32 bytes."""
    payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    inner = _PACKED_VAL_TAG + _varint(len(payload)) + payload if payload else b""  # protobuf omits an empty packed field
    return _FLOAT_LIST_VAL_TAG + _varint(len(inner)) + inner


def float_list_from_value_bytes(blob: bytes | None) -> np.ndarray | None:
    """float32 [D] from a serialized Feast Value holding float_list_val; None for an empty/absent value.
    Raises FeatureStoreError when the bytes hold another type (never guesses)."""
    if not blob:
        return None
    if not blob.startswith(_FLOAT_LIST_VAL_TAG):
        raise FeatureStoreError(f"online value is not a float list (starts {blob[:4].hex()}); expected Array(Float32)")
    inner_len, pos = _read_varint(blob, len(_FLOAT_LIST_VAL_TAG))
    end = pos + inner_len
    if end != len(blob):
        raise FeatureStoreError(f"online float list: {len(blob) - pos} bytes, header says {inner_len}")
    if pos == end:  # an empty list
        return np.zeros(0, dtype=np.float32)
    if blob[pos:pos + 1] != _PACKED_VAL_TAG:
        raise FeatureStoreError("online float list is not packed; expected the encoding Feast writes")
    size, pos = _read_varint(blob, pos + 1)
    if pos + size != end or size % 4:
        raise FeatureStoreError(f"online float list: payload of {end - pos} bytes, header says {size}")
    return np.frombuffer(blob, dtype="<f4", count=size // 4, offset=pos)


@dataclass
class _Fetched:
    """One view's rows as read: per entity, feature -> serialized Value bytes (None where absent)."""

    ids: list[str]
    values: list[dict[str, bytes | None] | None]  # None: no row for that entity


@dataclass
class StoredVersions:
    """Of users' stored embeddings, what the "only newer events" rule compares (no vectors are read)."""

    user_ids: list[str]
    last_event_ts: np.ndarray  # [n] int64 unix seconds (-1 where none is stored)
    bundle_versions: list[str | None]
    found: np.ndarray  # [n] bool


# what a refresh reads of a user's stored embedding: enough to decide whether a new one is newer
_VERSION_FEATURES = ("last_event_ts", "bundle_version")


class OnlineIO:
    """Batched online reads and writes of one HLLMFeatureStore (see the module docstring)."""

    def __init__(self, store):
        self.store = store
        feast = store.feast
        self.config = feast.config
        self.provider = feast._get_provider()
        self.online_store = self.provider.online_store
        self.views = {name: feast.get_feature_view(name) for name in VIEW_FEATURES}
        self.key_version = self.config.entity_key_serialization_version
        self.is_redis = self.config.online_store.type == "redis"
        self._protos: dict[tuple[str, str], EntityKey] = {}
        self._redis_keys: dict[tuple[str, str], bytes] = {}
        if self.is_redis:
            from feast.infra.online_stores.helpers import _mmh3
            from feast.infra.online_stores.redis import _versioned_fv_name

            self._client = self.online_store._get_client(self.config.online_store)
            self._fv_name = {v: _versioned_fv_name(self.views[v], self.config) for v in VIEW_FEATURES}
            self._field = {(v, f): _mmh3(f"{self._fv_name[v]}:{f}") for v, fs in VIEW_FEATURES.items() for f in fs}

    # ------------------------------------------------------------------ keys

    # Keys are cached: a request's candidates and a batch's users recur, and building an EntityKey proto
    # and serialising it (Feast's serialize_entity_key) was the largest cost of a read.

    def _entity_key(self, view: str, entity_id: str) -> EntityKey:
        cache_key = (VIEW_KEY[view], entity_id)
        key = self._protos.get(cache_key)
        if key is None:
            if len(self._protos) >= MAX_CACHED_KEYS:
                self._protos.clear()
            key = self._protos[cache_key] = EntityKey(join_keys=[VIEW_KEY[view]], entity_values=[Value(string_val=entity_id)])
        return key

    def _redis_key(self, view: str, entity_id: str) -> bytes:
        cache_key = (VIEW_KEY[view], entity_id)
        key = self._redis_keys.get(cache_key)
        if key is None:
            if len(self._redis_keys) >= MAX_CACHED_KEYS:
                self._redis_keys.clear()
            key = self._redis_keys[cache_key] = _redis_key(
                self.config.project, self._entity_key(view, entity_id), self.key_version)
        return key

    # ------------------------------------------------------------------ writes

    def write(self, rows: dict[str, list[tuple[str, dict]]]) -> dict[str, int]:
        """Write every view's rows in one go: `{view: [(entity_id, {feature: Value proto}), ...]}`, each
        row carrying every feature of its view. Returns rows written per view."""
        rows = {v: r for v, r in rows.items() if r}
        for view, view_rows in rows.items():
            if view not in VIEW_FEATURES:
                raise FeatureStoreError(f"unknown view {view!r} (expected one of {', '.join(VIEW_FEATURES)})")
            missing = set(VIEW_FEATURES[view]) - set(view_rows[0][1])
            if missing:
                raise FeatureStoreError(f"{view}: row for {view_rows[0][0]!r} lacks feature(s) {sorted(missing)}")
        if not rows:
            return {}
        stamp = _CLOCK.stamp()
        if self.is_redis:
            self._write_redis(rows, stamp)
        else:
            for view, view_rows in rows.items():
                data = [
                    (self._entity_key(view, eid),
                     {f: Value.FromString(v) if isinstance(v, bytes) else v for f, v in values.items()}, stamp, None)
                    for eid, values in view_rows
                ]
                self.provider.online_write_batch(self.config, self.views[view], data, None)
        return {view: len(view_rows) for view, view_rows in rows.items()}

    def _write_redis(self, rows: dict[str, list[tuple[str, dict]]], stamp) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromDatetime(stamp)
        ts_bytes = ts.SerializeToString()
        hsets: dict[bytes, dict] = {}
        for view, view_rows in rows.items():
            ts_field = f"_ts:{self._fv_name[view]}"
            for eid, values in view_rows:
                mapping = hsets.setdefault(self._redis_key(view, eid), {})
                mapping[ts_field] = ts_bytes
                for feature, value in values.items():
                    mapping[self._field[(view, feature)]] = value if isinstance(value, bytes) else value.SerializeToString()
        ttl = self.config.online_store.key_ttl_seconds
        with self._client.pipeline(transaction=False) as pipe:
            for key, mapping in hsets.items():
                pipe.hset(key, mapping=mapping)
                if ttl:
                    pipe.expire(name=key, time=ttl)
            pipe.execute()

    # ------------------------------------------------------------------ reads

    def fetch(self, requests: Sequence[tuple]) -> list[_Fetched]:
        """Raw rows of several requests, each (view, ids) or (view, ids, features) to read only those
        features of the view: one pipeline on Redis, one SELECT per view on SQLite."""
        asked = []
        for view, ids, *features in requests:
            features = tuple(features[0]) if features else VIEW_FEATURES[view]
            unknown = set(features) - set(VIEW_FEATURES[view])
            if unknown:
                raise FeatureStoreError(f"{view}: no feature(s) {sorted(unknown)} (it has {', '.join(VIEW_FEATURES[view])})")
            asked.append((view, [str(i) for i in ids], features))
        if self.is_redis:
            return self._fetch_redis(asked)
        out = []
        for view, ids, features in asked:
            if not ids:
                out.append(_Fetched(ids, []))
                continue
            keys = [self._entity_key(view, i) for i in ids]
            got = self.provider.online_read(self.config, self.views[view], keys, list(features))
            out.append(_Fetched(ids, [
                None if values is None else {f: (values[f].SerializeToString() if f in values else None)
                                              for f in features}
                for _, values in got
            ]))
        return out

    def _fetch_redis(self, requests: list[tuple[str, list[str], tuple[str, ...]]]) -> list[_Fetched]:
        # Views of one entity live in one hash (Feast's layout), so a user's sequence and embedding
        # come back from one HMGET: one command per key, however many views ask for it.
        fields_of: dict[bytes, list] = {}
        slots = []  # per request, per id: (key, offset of its fields in that key's HMGET)
        for view, ids, features in requests:
            fields = [self._field[(view, f)] for f in features]
            view_slots = []
            for i in ids:
                key = self._redis_key(view, i)
                asked = fields_of.setdefault(key, [])
                view_slots.append((key, len(asked)))
                asked.extend(fields)
            slots.append(view_slots)
        replies: dict[bytes, list] = {}
        if fields_of:
            with self._client.pipeline(transaction=False) as pipe:
                for key, fields in fields_of.items():
                    pipe.hmget(key, fields)
                replies = dict(zip(fields_of, pipe.execute()))
        out = []
        for (view, ids, features), view_slots in zip(requests, slots):
            rows = []
            for key, start in view_slots:
                row = {f: (v or None) for f, v in zip(features, replies[key][start:start + len(features)])}
                rows.append(row if any(v is not None for v in row.values()) else None)
            out.append(_Fetched(ids, rows))
        return out

    # ------------------------------------------------------------------ typed reads

    def item_embeddings(self, item_ids: Iterable) -> ItemEmbeddings:
        return item_rows(self.fetch([(ITEM_EMBEDDING, list(item_ids))])[0])

    def user_embeddings(self, user_ids: Iterable) -> UserEmbeddingRows:
        return user_rows(self.fetch([(USER_EMBEDDING, list(user_ids))])[0])

    def recent_items(self, user_ids: Iterable) -> RecentItems:
        return recent_rows(self.fetch([(USER_RECENT_ITEMS, list(user_ids))])[0])

    def user_state(self, user_ids: Sequence) -> tuple[RecentItems, StoredVersions]:
        """Users' recent-item sequences and their stored embeddings' version and last_event_ts, read
        together (one round trip on Redis): what a refresh needs before it writes."""
        ids = [str(u) for u in user_ids]
        recent, users = self.fetch([(USER_RECENT_ITEMS, ids), (USER_EMBEDDING, ids, _VERSION_FEATURES)])
        return recent_rows(recent), StoredVersions(ids, _ints(_column(users, "last_event_ts")),
                                                   _column(users, "bundle_version"),
                                                   np.array([row is not None for row in users.values], dtype=bool))

    def request_rows(self, user_id, item_ids: Sequence) -> tuple[UserEmbeddingRows, ItemEmbeddings]:
        """One request's user embedding and candidate item embeddings (one round trip on Redis)."""
        user, items = self.fetch([(USER_EMBEDDING, [str(user_id)]), (ITEM_EMBEDDING, list(item_ids))])
        return user_rows(user), item_rows(items)


# ---------------------------------------------------------------------- decoding


def _value(blob: bytes | None):
    """A scalar or list Value as Python (None where absent), the way get_online_features returns it."""
    if not blob:
        return None
    v = Value.FromString(blob)
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    got = getattr(v, kind)
    return list(got.val) if kind.endswith("_list_val") else got


def _column(fetched: _Fetched, feature: str) -> list:
    return [None if row is None else _value(row.get(feature)) for row in fetched.values]


def _vectors(fetched: _Fetched) -> tuple[np.ndarray, np.ndarray]:
    """[n, D] float32 (NaN rows where absent) and found [n]. Rows of one length with one header (every
    embedding of a bundle has the same D) are decoded in one numpy view of all the bytes."""
    blobs = [None if row is None else row.get("embedding") for row in fetched.values]
    found = np.array([bool(b) for b in blobs], dtype=bool)
    present = [b for b in blobs if b]
    if not present:
        return np.full((len(blobs), 0), np.nan, dtype=np.float32), found
    first = float_list_from_value_bytes(present[0])
    dim, header = len(first), len(present[0]) - 4 * len(first)
    out = np.full((len(blobs), dim), np.nan, dtype=np.float32)
    raw = np.frombuffer(b"".join(present), dtype=np.uint8) if all(len(b) == len(present[0]) for b in present) else None
    if raw is not None:
        raw = raw.reshape(len(present), -1)
        if not (raw[:, :header] == raw[0, :header]).all():
            raw = None
    if raw is not None:
        out[found] = raw[:, header:].copy().view("<f4")
        return out, found
    for row, blob in enumerate(blobs):  # mixed lengths: decode row by row, and name the odd one
        if blob:
            v = float_list_from_value_bytes(blob)
            if len(v) != dim:
                raise FeatureStoreError(f"embedding of {fetched.ids[row]!r} has {len(v)} dims, others {dim}")
            out[row] = v
    return out, found


def _ints(values: list) -> np.ndarray:
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)


def item_rows(fetched: _Fetched) -> ItemEmbeddings:
    vectors, found = _vectors(fetched)
    return ItemEmbeddings(fetched.ids, vectors, _column(fetched, "bundle_version"), found)


def user_rows(fetched: _Fetched) -> UserEmbeddingRows:
    vectors, found = _vectors(fetched)
    return UserEmbeddingRows(fetched.ids, vectors, _ints(_column(fetched, "seq_len")),
                             _ints(_column(fetched, "last_event_ts")), _column(fetched, "bundle_version"), found)


def recent_rows(fetched: _Fetched) -> RecentItems:
    item_ids = _column(fetched, "recent_item_ids")
    item_ts = _column(fetched, "recent_item_ts")
    return RecentItems(
        fetched.ids,
        [list(v) if v is not None else [] for v in item_ids],
        [np.asarray(v if v is not None else [], dtype=np.int64) for v in item_ts],
        _ints(_column(fetched, "last_event_ts")),
        np.array([v is not None for v in item_ids], dtype=bool),
    )


# ---------------------------------------------------------------------- row builders


def _proto(**field) -> Value:
    return Value(**field)


def item_embedding_rows(item_ids: Sequence, vectors: np.ndarray, bundle_version: str) -> list[tuple[str, dict]]:
    """Rows of the item_embedding view; vectors [n, D] float32."""
    version = _proto(string_val=bundle_version)
    return [(str(i), {"embedding": float_list_value_bytes(v), "bundle_version": version})
            for i, v in zip(item_ids, vectors)]


def user_embedding_rows(user_ids: Sequence, vectors: np.ndarray, seq_len: Sequence[int],
                        last_event_ts: Sequence[int], bundle_version: str) -> list[tuple[str, dict]]:
    """Rows of the user_embedding view; vectors [n, D] float32, last_event_ts unix seconds."""
    version = _proto(string_val=bundle_version)
    return [
        (str(u), {"embedding": float_list_value_bytes(v), "seq_len": _proto(int64_val=int(n)),
                  "last_event_ts": _proto(int64_val=int(t)), "bundle_version": version})
        for u, v, n, t in zip(user_ids, vectors, seq_len, last_event_ts)
    ]


def recent_item_rows(user_ids: Sequence, item_ids: Sequence[Sequence], item_ts: Sequence[Sequence[int]],
                     last_event_ts: Sequence[int]) -> list[tuple[str, dict]]:
    """Rows of the user_recent_items view: per user its item ids (oldest first) and their unix seconds."""
    return [
        (str(u), {"recent_item_ids": _proto(string_list_val=StringList(val=list(map(str, items)))),
                  # numpy's tolist builds the Python ints in C (a per-element int() was ~10 % of the store time)
                  "recent_item_ts": _proto(int64_list_val=Int64List(val=np.asarray(ts, dtype=np.int64).tolist())),
                  "last_event_ts": _proto(int64_val=int(last))})
        for u, items, ts, last in zip(user_ids, item_ids, item_ts, last_event_ts)
    ]
