"""Item-event consumer (`hllm refresh-items`): a new or changed item is embedded on arrival.

One micro-batch: each message is parsed (events.parse_item_event) and its text built by the one item
text builder (feature_gen.model.item_text: an item with no text, or oversize text, is dead-lettered with that
reason); the newest event of each item in the batch is embedded with the Item LLM (feature_gen.inference.encoders)
and written to the online store under the consumer's bundle version. Offsets are committed after the
write (consumer_loop).

Ordering of changes: item events are keyed by item_id, so one item's changes arrive in order and the
last one in the log wins. Within a batch the event with the newest timestamp wins (the later offset on
a tie). A replay re-applies the same changes in the same order and ends in the same state.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from feature_gen.config import HLLMConfig
from feature_gen.inference.encoders import Encoders
from feature_gen.model.item_text import item_text_or_reject
from feature_gen.streaming.consumer_loop import BatchOutcome, ConsumerLoop
from feature_gen.streaming.dead_letter import DeadLetter
from feature_gen.streaming.events import InvalidEvent, parse_item_event
from feature_gen.streaming.metrics import StreamMetrics
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.wiring import consumer_encoders, consumer_store, run_until_signalled, wire_loop

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord

    from feature_gen.store.feature_store import HLLMFeatureStore


class ItemRefresh:
    """The batch processor of the item-event consumer."""

    def __init__(self, state: OnlineState, encoders: Encoders, metrics: StreamMetrics, max_event_bytes: int = 1_000_000):
        self.state = state  # item embeddings out, under the encoders' bundle version
        self.encoders = encoders  # the bundle's Item LLM and text config (embed_texts)
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes

    def has_held(self) -> bool:
        return False  # an item event needs nothing but itself

    def forget(self, partitions: set) -> None:
        pass

    def process(self, records: list[ConsumerRecord]) -> BatchOutcome:
        newest: dict[str, tuple] = {}  # item_id -> (timestamp, offset, text, record)
        letters, accepted = [], []
        for r in records:
            try:
                event = parse_item_event(r.value, r.key, self.max_event_bytes)
            except InvalidEvent as exc:
                letters.append(DeadLetter.of(r, exc.reason, exc.detail))
                continue
            text = item_text_or_reject(event.fields, self.encoders.text_cfg)
            if text.reject_reason is not None:
                letters.append(DeadLetter.of(r, text.reject_reason, f"item_id {event.item_id!r}: {text.reject_reason} "
                                             f"(text keys {', '.join(self.encoders.text_cfg.text_keys)})"))
                continue
            accepted.append(r)
            current = newest.get(event.item_id)
            if current is None or (event.timestamp, r.offset) >= current[:2]:
                newest[event.item_id] = (event.timestamp, r.offset, text.text, r)
        if newest:
            ids = list(newest)
            vectors = self.encoders.embed_texts([newest[i][2] for i in ids])
            self.state.write_item_embeddings(ids, vectors)
            written_at = time.time()
            self.metrics.observe_freshness([max(0.0, written_at - r.timestamp / 1000) for r in accepted])
            self.metrics.count("embedded", len(ids))
            self.metrics.count("superseded", len(accepted) - len(ids))
            self.metrics.batch_entities.observe(len(ids))
        return BatchOutcome(letters, {})


def build_item_loop(cfg: HLLMConfig, stop: threading.Event | None = None, encoders: Encoders | None = None,
                    store: HLLMFeatureStore | None = None) -> ConsumerLoop:
    """Everything `hllm refresh-items` runs, wired from one config."""
    s = cfg.stream
    encoders = encoders or consumer_encoders(cfg)
    metrics = StreamMetrics("item_refresh")
    processor = ItemRefresh(OnlineState(consumer_store(cfg, store), encoders.version, s.item_cache_ttl_ms), encoders,
                            metrics, s.max_item_event_bytes)
    return wire_loop(cfg, processor, metrics, topic=s.item_events_topic, group_id=s.item_group_id, stop=stop)


def run_item_refresh(cfg: HLLMConfig, max_batches: int | None = None) -> int:
    """`hllm refresh-items`: consume item events until SIGTERM/SIGINT; returns the exit code."""
    return run_until_signalled(cfg, build_item_loop, "refresh-items", cfg.stream.item_events_topic,
                               cfg.stream.item_group_id, max_batches)
