"""What the refresh consumers read and write, through the feature store's API (never their own keys).

    users:  recent-item sequence (user_recent_items view) -> RecentSequence; user embeddings written
            with `only_newer_events`, so a replay or a zombie consumer never moves one backwards
    items:  item embeddings of the consumer's bundle version; another version's embedding counts as
            missing (a user embedding must never mix versions)

Item embeddings are cached in the process for `item_cache_ttl_ms`: a user's history is re-read every
time one of its events arrives, and the same popular items recur in almost every batch. An item changed
by an item event is seen by the user consumers within that TTL. A missing item is never cached, so a
new item's embedding is found as soon as it is written.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from feature_gen.inference.encoders import UserEmbeddings
from feature_gen.streaming.recent_items import RecentSequence
from feature_gen.store.schema import BUNDLE_VERSION, EMBEDDING, LAST_EVENT_TS, RECENT_ITEM_IDS, RECENT_ITEM_TS, SEQ_LEN, USER_ID, ITEM_ID

if TYPE_CHECKING:  # the store module imports Feast at use; this one is imported by every consumer
    from feature_gen.store.feature_store import HLLMFeatureStore


MAX_CACHED_ITEMS = 500_000  # ~130 MB at 64 floats; past it the cache starts over


class OnlineState:
    def __init__(self, store: HLLMFeatureStore, bundle_version: str, item_cache_ttl_ms: int = 10_000):
        self.store = store
        self.version = bundle_version
        self.item_cache_ttl_s = item_cache_ttl_ms / 1000
        self._items: dict[str, tuple[float, np.ndarray]] = {}  # item_id -> (read at, vector)

    # ------------------------------------------------------------------ users

    def sequences(self, user_ids: list[str]) -> dict[str, RecentSequence]:
        got = self.store.recent_items(user_ids)
        return {
            uid: RecentSequence(list(items), ts.tolist())
            for uid, items, ts in zip(got.user_ids, got.item_ids, got.item_ts)
        }

    def write_sequences(self, sequences: dict[str, RecentSequence]) -> None:
        if not sequences:
            return
        frame = pd.DataFrame({
            USER_ID: list(sequences),
            RECENT_ITEM_IDS: [s.item_ids for s in sequences.values()],
            RECENT_ITEM_TS: [np.asarray(s.timestamps, dtype=np.int64) for s in sequences.values()],
            LAST_EVENT_TS: [s.last_event_ts for s in sequences.values()],
        })
        self.store.push_recent_items(frame)

    def write_user_embeddings(self, user_ids: list[str], emb: UserEmbeddings) -> None:
        frame = pd.DataFrame({
            USER_ID: user_ids,
            EMBEDDING: list(emb.vectors),
            SEQ_LEN: emb.seq_len,
            LAST_EVENT_TS: emb.last_event_ts,
            BUNDLE_VERSION: self.version,
        })
        self.store.push_user_embeddings(frame, only_newer_events=True)

    # ------------------------------------------------------------------ items

    def item_vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Embeddings of this bundle version for the ids that have one."""
        now = time.monotonic()
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, np.ndarray] = {}
        to_read = []
        for i in ids:
            cached = self._items.get(i)
            if cached is not None and now - cached[0] <= self.item_cache_ttl_s:
                out[i] = cached[1]
            else:
                to_read.append(i)
        if to_read:
            if len(self._items) + len(to_read) > MAX_CACHED_ITEMS:
                self._items.clear()
            got = self.store.item_embeddings(to_read)
            for i, vector, version, found in zip(got.item_ids, got.vectors, got.bundle_versions, got.found):
                if found and version == self.version:
                    out[i] = vector
                    self._items[i] = (now, vector)
                else:
                    self._items.pop(i, None)
        return out

    def write_item_embeddings(self, item_ids: list[str], vectors: np.ndarray) -> None:
        frame = pd.DataFrame({ITEM_ID: item_ids, EMBEDDING: list(vectors), BUNDLE_VERSION: self.version})
        self.store.push_item_embeddings(frame)
        now = time.monotonic()
        for i, v in zip(item_ids, vectors):
            self._items[i] = (now, v)
