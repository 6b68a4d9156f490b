"""Issue 20, item 5: fencing. A member stalls between reading a user's sequence and writing it back,
longer than the group allows (max_poll_interval_ms, session timeout); another member takes its partition
and writes newer state. When the stalled member resumes, its write is refused (the fence: a commit with
its old generation, which the broker or its own client rejects), so the newer state stands. Without the
fence the stale sequence overwrote the newer one (Feast has no compare-and-set)."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from feature_gen.streaming.clients import make_producer
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.produce import send_paced, user_messages
from feature_gen.streaming.refresh import build_user_loop
from tests.streaming_support import (  # noqa: F401  (broker is a fixture)
    broker,
    create_stream_topics,
    seed_item_embeddings,
    store_of,
    stream_config,
    wait_until,
)
from tests.test_streaming_refresh import check_alive, running


class StallingState(OnlineState):
    """Reads the batch's sequences, then freezes until released, as a stopped process would (a long GC
    pause, SIGSTOP, a swapped-out VM): its consumer's heartbeats stop too. kafka-python has no public
    switch for that; its heartbeat thread's disable/enable is what its own coordinator calls."""

    def __init__(self, *args, consumer, **kwargs):
        super().__init__(*args, **kwargs)
        self.consumer = consumer
        self.stalled, self.release = threading.Event(), threading.Event()

    def sequences(self, user_ids):
        got = super().sequences(user_ids)
        if not self.stalled.is_set():
            self.consumer._coordinator._disable_heartbeat()
            self.stalled.set()
            self.release.wait(180)
            self.consumer._coordinator._enable_heartbeat()
        return got


def _send(cfg, events) -> None:
    send_paced(make_producer(cfg.stream), cfg.stream.user_events_topic,
               user_messages(pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"])))


def test_a_member_that_lost_its_partition_cannot_write_over_its_successor(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle)  # session timeout 6 s
    create_stream_topics(cfg, partitions=1)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(10))
    first, later = [("zed", "1", 1700000100), ("zed", "2", 1700000200)], [("zed", "3", 1700000300), ("zed", "4", 1700000400)]
    _send(cfg, first)

    stalled = build_user_loop(cfg, threading.Event(), encoders, store)
    state = StallingState(store, encoders.version, consumer=stalled.consumer)
    state.fence = stalled.fence
    stalled.processor.state = state
    successor = build_user_loop(cfg, threading.Event(), encoders, store)
    with running(stalled):
        wait_until(lambda: check_alive(stalled) or state.stalled.is_set(), 60, what="the first member to stall")
        _send(cfg, later)
        time.sleep(cfg.stream.session_timeout_ms / 1000 + 2)  # the broker expires the frozen member
        with running(successor):
            wait_until(lambda: check_alive(successor) or store.recent_items(["zed"]).last_event_ts[0] == 1700000400, 120,
                       what="the successor to write the newer sequence")
            state.release.set()
            wait_until(lambda: check_alive(stalled) or stalled.metrics.value(
                "hllm_stream_broker_retries_total", {"call": "fenced"}) >= 1, 60, what="the stale write to be refused")
            assert store.recent_items(["zed"]).item_ids == [["1", "2", "3", "4"]]  # not the stale ["1", "2"]

    assert store.recent_items(["zed"]).item_ids == [["1", "2", "3", "4"]]
    assert store.user_embeddings(["zed"]).last_event_ts[0] == 1700000400
