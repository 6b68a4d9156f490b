"""What the refresh consumers read and write, through the store's batched online paths (online_io).

    users:  one read per batch of the users' recent-item sequences (user_recent_items) together with
            their current embeddings' bundle version and last_event_ts; one write per batch of the
            sequences and the new embeddings together. The "only newer events" rule (the one of
            HLLMFeatureStore.push_user_embeddings(only_newer_events=True)) is served from what that
            read returned: a replay never moves an embedding backwards. A user's events all arrive on
            one partition, so between the batch's read and its write no other consumer writes that user
            (a zombie member after a rebalance could, in the same read-then-write window the plain
            push_user_embeddings(only_newer_events=True) has).
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

from feature_gen.inference.encoders import UserEmbeddings
from feature_gen.store.schema import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS
from feature_gen.streaming.recent_items import RecentSequence

if TYPE_CHECKING:  # the store modules import Feast at use; this one is imported by every consumer
    from feature_gen.store.feature_store import HLLMFeatureStore


MAX_CACHED_ITEMS = 500_000  # ~130 MB at 64 floats; past it the cache starts over


class OnlineState:
    def __init__(self, store: HLLMFeatureStore, bundle_version: str, item_cache_ttl_ms: int = 10_000):
        from feature_gen.store.online_io import OnlineIO

        self.store = store
        self.io = OnlineIO(store)
        self.version = bundle_version
        self.item_cache_ttl_s = item_cache_ttl_ms / 1000
        self._items: dict[str, tuple[float, np.ndarray]] = {}  # item_id -> (read at, vector)
        # user_id -> (bundle_version, last_event_ts) of its stored embedding, as the batch's read saw it
        self._stored: dict[str, tuple[str | None, int]] = {}

    # ------------------------------------------------------------------ users

    def sequences(self, user_ids: list[str]) -> dict[str, RecentSequence]:
        """The users' stored sequences (empty where none); remembers their embeddings' version and
        last_event_ts for the "only newer events" rule of the write that follows."""
        recent, users = self.io.user_state(user_ids)
        self._stored = {u: (v, int(t)) for u, v, t in zip(users.user_ids, users.bundle_versions, users.last_event_ts)}
        return {
            uid: RecentSequence(list(items), ts.tolist())
            for uid, items, ts in zip(recent.user_ids, recent.item_ids, recent.item_ts)
        }

    def write_users(self, sequences: dict[str, RecentSequence], user_ids: list[str],
                    emb: UserEmbeddings | None) -> int:
        """One write of the batch: every sequence, and the embeddings of `user_ids` that are not older by
        events than the stored one of the same bundle version. Returns embeddings written."""
        from feature_gen.store.online_io import recent_item_rows, user_embedding_rows

        rows = {USER_RECENT_ITEMS: recent_item_rows(
            list(sequences), [s.item_ids for s in sequences.values()], [s.timestamps for s in sequences.values()],
            [s.last_event_ts for s in sequences.values()])}
        written = 0
        if emb is not None and len(user_ids):
            keep = [k for k, (u, ts) in enumerate(zip(user_ids, emb.last_event_ts)) if self._newer(u, int(ts))]
            rows[USER_EMBEDDING] = user_embedding_rows(
                [user_ids[k] for k in keep], emb.vectors[keep], np.asarray(emb.seq_len)[keep],
                np.asarray(emb.last_event_ts)[keep], self.version)
            written = len(keep)
        self.io.write(rows)
        self._stored = {}  # what the batch read is now out of date: a later write reads again
        return written

    def _newer(self, user_id: str, last_event_ts: int) -> bool:
        if user_id not in self._stored:  # not read by this batch: ask the store, never guess
            _, users = self.io.user_state([user_id])
            self._stored[user_id] = (users.bundle_versions[0], int(users.last_event_ts[0]))
        version, stored_ts = self._stored[user_id]
        return not (version == self.version and stored_ts > last_event_ts)

    def write_sequences(self, sequences: dict[str, RecentSequence]) -> None:
        if sequences:
            self.write_users(sequences, [], None)

    def write_user_embeddings(self, user_ids: list[str], emb: UserEmbeddings) -> None:
        self.write_users({}, user_ids, emb)

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
            got = self.io.item_embeddings(to_read)
            for i, vector, version, found in zip(got.item_ids, got.vectors, got.bundle_versions, got.found):
                if found and version == self.version:
                    out[i] = vector
                    self._items[i] = (now, vector)
                else:
                    self._items.pop(i, None)
        return out

    def write_item_embeddings(self, item_ids: list[str], vectors: np.ndarray) -> None:
        from feature_gen.store.online_io import item_embedding_rows

        self.io.write({ITEM_EMBEDDING: item_embedding_rows(item_ids, vectors, self.version)})
        now = time.monotonic()
        for i, v in zip(item_ids, vectors):
            self._items[i] = (now, v)
