"""The replay scenario, run by tests/test_streaming_refresh.py in an interpreter of its own.

In a full-suite process this test counted ~2,000 'added' events that belong to no topic it wrote
(state left by an earlier test module; the root cause is still open, see the issue note). Alone, and
with every streaming test module, it passes; so it runs here, in a fresh process, where it checks the
consumer and not the test suite's leftovers. Not collected by the main run (no test_ file prefix).
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from feature_gen.streaming.clients import make_producer
from feature_gen.streaming.produce import send_paced, user_messages
from feature_gen.streaming.refresh import build_user_loop
from tests.streaming_support import (  # noqa: F401  (own_broker is a fixture)
    create_stream_topics,
    own_broker,
    seed_item_embeddings,
    store_of,
    stream_config,
    user_events,
    wait_until,
)
from tests.test_streaming_refresh import USER, encoders, running, settled  # noqa: F401  (encoders is a fixture)


def test_replay_never_moves_sequences_or_embeddings_backwards(tmp_path, own_broker, tiny_bundle, encoders):
    """The whole log read again by a fresh group (a full replay), plus stale events, changes nothing."""
    cfg = stream_config(tmp_path, own_broker, tiny_bundle, max_recent_items=20)
    create_stream_topics(cfg)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(20))
    events = user_events(num_users=5, num_items=20, num_events=150, seed=2)  # ~30 per user: windows are full
    producer = make_producer(cfg.stream)
    send_paced(producer, cfg.stream.user_events_topic, user_messages(pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"])))
    loop = build_user_loop(cfg, threading.Event(), encoders, store)
    with running(loop):
        wait_until(lambda: settled(loop) >= len(events), 60, what="first pass")
    users = sorted({u for u, _, _ in events})
    before_seq = store.recent_items(users)
    before_emb = store.user_embeddings(users)

    # stale events: older than every user's window (too late), and a second group replaying everything
    first_ts = {u: min(t for uu, _, t in events if uu == u) for u in users}
    stale = [(u, "3", first_ts[u] - 10) for u in users]
    send_paced(producer, cfg.stream.user_events_topic, user_messages(pd.DataFrame(stale, columns=["user_id", "item_id", "timestamp"])))
    replay_cfg = cfg.model_copy(update={"stream": cfg.stream.model_copy(update={"group_id": cfg.stream.group_id + "-replay"})})
    replay = build_user_loop(replay_cfg, threading.Event(), encoders, store)
    with running(replay):
        wait_until(lambda: settled(replay) >= len(events) + len(stale), 60, what="the replay")

    m = replay.metrics
    assert m.value("hllm_stream_events_total", {"consumer": USER, "outcome": "added"}) == 0
    assert m.value("hllm_stream_events_total", {"consumer": USER, "outcome": "too_late"}) >= len(stale)
    after_seq = store.recent_items(users)
    after_emb = store.user_embeddings(users)
    assert after_seq.item_ids == before_seq.item_ids
    for a, b in zip(after_seq.item_ts, before_seq.item_ts):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after_emb.last_event_ts, before_emb.last_event_ts)
    np.testing.assert_allclose(after_emb.vectors, before_emb.vectors, rtol=1e-5, atol=1e-6)
