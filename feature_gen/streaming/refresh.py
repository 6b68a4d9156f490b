"""User-event consumer (`hllm refresh`): keeps users' recent-item sequences and embeddings fresh.

One micro-batch (see consumer_loop for the loop and its delivery rules):

1. **validate**: each message is parsed (events.parse_user_event); a bad one becomes a dead letter.
2. **resolve items**: an event whose item has no embedding of this bundle version yet is *held*: kept
   in memory and retried every batch for `stream.unknown_item_wait_ms` (an item event may be just
   behind it), its partition's commit staying below it; then it is dead-lettered as `unknown_item`.
   Beyond `stream.max_waiting_events` held events, the longest-held go to the dead-letter topic at once.
3. **merge**: the users' sequences are read from the online store and the events merged by the rule of
   recent_items (duplicates skipped, late events placed by timestamp, too-late ones dropped).
4. **write**: the sequences and the embeddings of every user with an event in the batch (a duplicate
   too: after a crash mid-write, the replay is what repairs the embedding), recomputed with the User
   LLM over the newest `max_seq_len` items, in one write per store (OnlineState.write_users; on Redis a
   user's sequence and embedding land in one HSET), embeddings under the `only_newer_events` rule.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feature_gen.config import HLLMConfig
from feature_gen.inference.encoders import Encoders
from feature_gen.streaming.consumer_loop import BatchOutcome, ConsumerLoop
from feature_gen.streaming.dead_letter import DeadLetter
from feature_gen.streaming.events import REASON_UNKNOWN_ITEM, InvalidEvent, UserEvent, parse_user_event
from feature_gen.streaming.metrics import StreamMetrics
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.recent_items import merge_events
from feature_gen.streaming.wiring import consumer_encoders, consumer_store, run_until_signalled, wire_loop

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord

    from feature_gen.store.feature_store import HLLMFeatureStore


@dataclass
class _Held:
    record: ConsumerRecord  # offset, partition, bytes for a dead letter
    event: UserEvent
    since: float  # time.monotonic() when first held


class UserRefresh:
    """The batch processor of the user-event consumer."""

    def __init__(self, state: OnlineState, encoders: Encoders, metrics: StreamMetrics, *, max_event_bytes: int = 4096,
                 max_recent_items: int = 50, unknown_item_wait_ms: int = 30_000, max_waiting_events: int = 10_000):
        self.state = state  # sequences and item vectors in, sequences and user embeddings out
        self.encoders = encoders  # the bundle's User LLM (embed_histories)
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self.capacity = max_recent_items
        self.wait_s = unknown_item_wait_ms / 1000
        self.max_waiting = max_waiting_events
        self.held: list[_Held] = []

    def has_held(self) -> bool:
        return bool(self.held)

    def forget(self, partitions: set) -> None:
        from kafka import TopicPartition

        self.held = [h for h in self.held if TopicPartition(h.record.topic, h.record.partition) not in partitions]
        self.metrics.waiting.set(len(self.held))

    def process(self, records: list[ConsumerRecord]) -> BatchOutcome:
        with self.metrics.timed("parse"):
            events, letters = self.validate(records)
        with self.metrics.timed("store_read"):  # item embeddings (mostly from the in-process cache)
            ready, more_letters = self.resolve_items(events)
        self.write(ready)
        return BatchOutcome(letters + more_letters, self._held_offsets())

    # ------------------------------------------------------------------ steps

    def validate(self, records: list[ConsumerRecord]) -> tuple[list[_Held], list[DeadLetter]]:
        now = time.monotonic()
        events, letters = [], []
        for r in records:
            try:
                events.append(_Held(r, parse_user_event(r.value, r.key, self.max_event_bytes), now))
            except InvalidEvent as exc:
                letters.append(DeadLetter.of(r, exc.reason, exc.detail))
        return events, letters

    def resolve_items(self, new: list[_Held]) -> tuple[list[_Held], list[DeadLetter]]:
        """Split held + new events into those whose item has an embedding and those still waiting."""
        candidates = self.held + new
        known = self.state.item_vectors(h.event.item_id for h in candidates)
        ready = [h for h in candidates if h.event.item_id in known]
        waiting = [h for h in candidates if h.event.item_id not in known]
        now = time.monotonic()
        expired = [h for h in waiting if now - h.since >= self.wait_s]
        waiting = [h for h in waiting if now - h.since < self.wait_s]
        if len(waiting) > self.max_waiting:
            overflow = len(waiting) - self.max_waiting
            expired += waiting[:overflow]  # the longest-held first: they are the least likely to resolve
            waiting = waiting[overflow:]
        self.held = waiting
        self.metrics.waiting.set(len(waiting))
        still = {id(h) for h in waiting}
        self.metrics.count("waiting", sum(id(h) in still for h in new))
        letters = [
            DeadLetter.of(h.record, REASON_UNKNOWN_ITEM,
                          f"item_id {h.event.item_id!r} has no embedding of bundle {self.state.version} "
                          f"after {now - h.since:.1f} s")
            for h in expired
        ]
        return ready, letters

    def write(self, ready: list[_Held]) -> None:
        if not ready:
            return
        by_user: dict[str, list[_Held]] = defaultdict(list)
        for h in ready:
            by_user[h.event.user_id].append(h)
        users = list(by_user)
        with self.metrics.timed("store_read"):
            sequences = self.state.sequences(users)
        for uid in users:
            counts = merge_events(sequences[uid], [(h.event.item_id, h.event.timestamp) for h in by_user[uid]], self.capacity)
            self.metrics.count("added", counts.added)
            self.metrics.count("duplicate", counts.duplicate)
            self.metrics.count("too_late", counts.too_late)

        histories = [sequences[u] for u in users]
        with self.metrics.timed("store_read"):
            vectors = self.state.item_vectors(i for s in histories for i in s.item_ids)
        # An older item of a history may lack this version's embedding (e.g. right after a version
        # switch); it is left out of the User LLM's input rather than failing the whole batch.
        kept = [[(i, t) for i, t in zip(s.item_ids, s.timestamps) if i in vectors] for s in histories]
        missing = sum(len(s) for s in histories) - sum(len(k) for k in kept)
        self.metrics.count("history_item_without_embedding", missing)
        # (a user whose only new events were too late, over a history of another version's items)
        embeddable = [k for k, history in enumerate(kept) if history]
        embeddings = None
        if embeddable:
            with self.metrics.timed("model"):
                embeddings = self.encoders.embed_histories(
                    vectors, [[i for i, _ in kept[k]] for k in embeddable], [[t for _, t in kept[k]] for k in embeddable]
                )
        with self.metrics.timed("store_write"):
            self.state.write_users(sequences, [users[k] for k in embeddable], embeddings)

        written_at = time.time()  # the record timestamp is the producer's clock (CreateTime)
        self.metrics.observe_freshness([max(0.0, written_at - h.record.timestamp / 1000) for h in ready])
        self.metrics.batch_entities.observe(len(embeddable))

    def _held_offsets(self) -> dict:
        from kafka import TopicPartition

        lowest: dict = {}
        for h in self.held:
            tp = TopicPartition(h.record.topic, h.record.partition)
            lowest[tp] = min(lowest.get(tp, h.record.offset), h.record.offset)
        return lowest


# ---------------------------------------------------------------------------------------------------
# Entry point


def build_user_loop(cfg: HLLMConfig, stop: threading.Event | None = None, encoders: Encoders | None = None,
                    store: HLLMFeatureStore | None = None) -> ConsumerLoop:
    """Everything `hllm refresh` runs, wired from one config (tests pass a preloaded encoders/store)."""
    s = cfg.stream
    encoders = encoders or consumer_encoders(cfg)
    metrics = StreamMetrics("user_refresh")
    processor = UserRefresh(
        OnlineState(consumer_store(cfg, store), encoders.version, s.item_cache_ttl_ms), encoders, metrics,
        max_event_bytes=s.max_event_bytes, max_recent_items=max(s.max_recent_items, encoders.max_seq_len),
        unknown_item_wait_ms=s.unknown_item_wait_ms, max_waiting_events=s.max_waiting_events,
    )
    return wire_loop(cfg, processor, metrics, topic=s.user_events_topic, group_id=s.group_id, stop=stop)


def run_refresh(cfg: HLLMConfig, max_batches: int | None = None) -> int:
    """`hllm refresh`: consume user events until SIGTERM/SIGINT; returns the exit code."""
    return run_until_signalled(cfg, build_user_loop, "refresh", cfg.stream.user_events_topic, cfg.stream.group_id,
                               max_batches)
