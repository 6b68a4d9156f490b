"""The refresh consumers in-process against a real Tansu broker and a real Feast (SQLite) store:
events in -> sequences and embeddings in the store equal to a batch recomputation; replays and late
events; new items; dead letters."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest

from feature_gen.model.item_text import build_item_text
from feature_gen.streaming.clients import make_producer
from feature_gen.streaming.dead_letter import read_headers
from feature_gen.streaming.events import user_event_json
from feature_gen.streaming.item_refresh import build_item_loop
from feature_gen.streaming.produce import item_messages, send_paced, user_messages
from feature_gen.streaming.refresh import build_user_loop
from tests.streaming_support import (  # noqa: F401  (broker is a fixture)
    batch_user_embeddings,
    broker,
    create_stream_topics,
    expected_sequences,
    item_row,
    read_topic,
    seed_item_embeddings,
    store_of,
    stream_config,
    user_events,
    wait_until,
)

USER = "user_refresh"


def _run(loop) -> None:
    try:
        loop.run()
    except BaseException as exc:  # surfaced by check_alive in the waiting test, not lost in a thread
        loop.crashed = exc
        raise


def check_alive(*loops) -> None:
    for loop in loops:
        if getattr(loop, "crashed", None) is not None:
            raise AssertionError(f"consumer loop crashed: {loop.crashed!r}") from loop.crashed


@contextmanager
def running(*loops):
    threads = [threading.Thread(target=_run, args=(loop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a consumer loop did not stop"


def settled(loop) -> float:
    """Events the user consumer has finished with (written, skipped by rule, or dead-lettered)."""
    check_alive(loop)
    m = loop.metrics
    return sum(m.value("hllm_stream_events_total", {"consumer": USER, "outcome": o})
               for o in ("added", "duplicate", "too_late", "dead_letter"))


def test_events_in_embeddings_equal_batch_recomputation(tmp_path, broker, tiny_bundle, encoders):
    # user events may arrive before the item consumer has embedded their items: they wait for them
    cfg = stream_config(tmp_path, broker, tiny_bundle, unknown_item_wait_ms=60_000)
    create_stream_topics(cfg)
    store = store_of(cfg)
    num_items = 30
    producer = make_producer(cfg.stream)
    # the catalogue arrives through the item topic (produce-events' item path)
    send_paced(producer, cfg.stream.item_events_topic, item_messages(pd.DataFrame([item_row(i) for i in range(num_items)])))

    events = user_events(num_users=25, num_items=num_items, num_events=400, seed=1)
    # a replayed stretch (duplicates) and an out-of-order late event that still fits in its user's window
    u, i, t = events[-1]
    late = (u, "7", t - 1)
    sent = events + events[100:130] + [late]
    log = pd.DataFrame(sent, columns=["user_id", "item_id", "timestamp"])
    send_paced(producer, cfg.stream.user_events_topic, user_messages(log))

    user_loop = build_user_loop(cfg, threading.Event(), encoders, store)
    with running(build_item_loop(cfg, threading.Event(), encoders, store), user_loop):
        wait_until(lambda: settled(user_loop) >= len(sent), 90, what="every user event to settle")
        lags = lambda: [user_loop.metrics.registry.get_sample_value(  # noqa: E731
            "hllm_stream_consumer_lag", {"topic": cfg.stream.user_events_topic, "partition": str(p)}) for p in range(4)]
        wait_until(lambda: lags() == [0.0] * 4, 30, what="consumer lag 0 on every partition")

    m = user_loop.metrics
    assert m.value("hllm_stream_events_total", {"consumer": USER, "outcome": "duplicate"}) == 30
    assert m.value("hllm_stream_dead_letters_total", {"reason": "unknown_item"}) == 0

    expected = expected_sequences(sent, capacity=cfg.stream.max_recent_items)
    assert (late[1], late[2]) in expected[u]  # the late event belongs in the window
    users, batch = batch_user_embeddings(tiny_bundle, range(num_items), expected)

    recent = store.recent_items(users)
    assert recent.found.all()
    for uid, items, ts in zip(users, recent.item_ids, recent.item_ts):
        assert list(zip(items, ts.tolist())) == expected[uid], uid

    got = store.user_embeddings(users)
    assert got.found.all()
    assert set(got.bundle_versions) == {encoders.version}
    np.testing.assert_array_equal(got.last_event_ts, batch.last_event_ts)
    np.testing.assert_array_equal(got.seq_len, batch.seq_len)
    np.testing.assert_allclose(got.vectors, batch.vectors, rtol=1e-4, atol=1e-5)


def test_replay_never_moves_sequences_or_embeddings_backwards(tmp_path, broker, tiny_bundle, encoders):
    """The whole log read again by a fresh group (a full replay), plus stale events, changes nothing."""
    cfg = stream_config(tmp_path, broker, tiny_bundle, max_recent_items=20)
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


def test_new_item_event_makes_its_embedding_readable_and_releases_waiting_user_events(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle, unknown_item_wait_ms=60_000)
    create_stream_topics(cfg)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(5))
    producer = make_producer(cfg.stream)
    user_loop = build_user_loop(cfg, threading.Event(), encoders, store)
    item_loop = build_item_loop(cfg, threading.Event(), encoders, store)
    events = [("alice", "1", 1_700_000_100), ("alice", "new-item", 1_700_000_200), ("bob", "2", 1_700_000_150)]
    with running(user_loop):
        send_paced(producer, cfg.stream.user_events_topic,
                   user_messages(pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"])))
        # bob's event goes through; alice's event on the unknown item waits (not dropped, not dead-lettered)
        wait_until(lambda: check_alive(user_loop) or store.user_embeddings(["bob"]).found[0], 60, what="bob's embedding")
        wait_until(lambda: user_loop.metrics.value("hllm_stream_waiting_events") == 1, 30, what="a held event")
        assert not store.item_embeddings(["new-item"]).found[0]
        with running(item_loop):
            new_item = dict(item_row(99), item_id="new-item")
            send_paced(producer, cfg.stream.item_events_topic,
                       [(b"new-item", json.dumps(new_item).encode()),
                        (b"empty", json.dumps({"item_id": "empty", "timestamp": 1_700_000_005}).encode())])
            wait_until(lambda: check_alive(item_loop) or store.item_embeddings(["new-item"]).found[0], 60, what="the new item's embedding")
            wait_until(lambda: check_alive(user_loop) or store.user_embeddings(["alice"]).last_event_ts[0] == 1_700_000_200, 60,
                       what="alice's embedding to take the new item")

    got = store.item_embeddings(["new-item"])
    expected = encoders.embed_texts([build_item_text(new_item, encoders.text_cfg)])
    np.testing.assert_allclose(got.vectors[0], expected[0], rtol=1e-5, atol=1e-6)
    assert got.bundle_versions == [encoders.version]
    assert store.recent_items(["alice"]).item_ids == [["1", "new-item"]]
    assert user_loop.metrics.value("hllm_stream_dead_letters_total", {"reason": "unknown_item"}) == 0
    letters = read_topic(broker.bootstrap, cfg.stream.dead_letter_topic, expected=1)
    assert [read_headers(r)["hllm.reason"] for r in letters] == ["no_text"]  # the item event without text


def test_malformed_events_land_in_the_dead_letter_topic_and_the_consumer_keeps_going(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle, unknown_item_wait_ms=0, max_event_bytes=300)
    create_stream_topics(cfg)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(5))
    good = user_event_json("carol", "1", 1_700_000_010)
    bad = {
        "invalid_json": (b"carol", b'{"user_id": "carol", "item_id": '),
        "not_an_object": (b"carol", b'["carol", "1", 10, "click"]'),
        "missing_field": (b"carol", b'{"user_id": "carol", "item_id": "1", "event_type": "click"}'),
        "bad_field": (b"carol", b'{"user_id": "carol", "item_id": "1", "timestamp": "yesterday", "event_type": "click"}'),
        "oversize": (b"carol", json.dumps({"user_id": "carol", "item_id": "1", "timestamp": 1_700_000_011, "event_type": "x" * 400}).encode()),
        "key_mismatch": (b"dave", user_event_json("carol", "1", 1_700_000_012)),
        "unknown_item": (b"carol", user_event_json("carol", "no-such-item", 1_700_000_013)),
    }
    producer = make_producer(cfg.stream)
    # everything on one key, so the bad messages sit in front of the good one in one partition
    send_paced(producer, cfg.stream.user_events_topic, list(bad.values()) + [(b"carol", good)])
    loop = build_user_loop(cfg, threading.Event(), encoders, store)
    with running(loop):
        wait_until(lambda: check_alive(loop) or store.user_embeddings(["carol"]).found[0], 60, what="the good event after the bad ones")
        wait_until(lambda: settled(loop) >= len(bad) + 1, 30, what="every event to settle")

    letters = read_topic(broker.bootstrap, cfg.stream.dead_letter_topic, expected=len(bad))
    by_reason = {read_headers(r)["hllm.reason"]: r for r in letters}
    assert set(by_reason) == set(bad)
    for reason, (key, value) in bad.items():
        record = by_reason[reason]
        assert record.value == value and record.key == key, reason  # the original bytes, unchanged
        headers = read_headers(record)
        assert headers["hllm.source"].startswith(cfg.stream.user_events_topic + "/")
        assert headers["hllm.detail"]
    assert loop.metrics.value("hllm_stream_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert store.recent_items(["carol"]).item_ids == [["1"]]


def test_produce_events_replays_a_csv_log_and_an_item_parquet_in_file_order(tmp_path, broker, tiny_bundle):
    from hllm.cli import main
    from tests.streaming_support import write_config

    cfg = stream_config(tmp_path, broker, tiny_bundle)
    create_stream_topics(cfg, partitions=1)
    config = write_config(cfg, tmp_path / "stream.yaml")
    log = tmp_path / "events.csv"
    pd.DataFrame({"user_id": [3, 1, 3], "item_id": [10, 11, 12], "timestamp": [1_700_000_005, 1_700_000_006, 1_700_000_007],
                  "event_type": ["click", "rating", "click"]}).to_csv(log, index=False)
    items = tmp_path / "items.parquet"
    pd.DataFrame([item_row(1), {**item_row(2), "tags": None}]).to_parquet(items)

    assert main(["produce-events", "--config", str(config), "--input", str(log)]) == 0
    assert main(["produce-events", "--config", str(config), "--input", str(items), "--kind", "item"]) == 0
    assert main(["produce-events", "--config", str(config), "--input", str(tmp_path / "missing.csv")]) == 2

    users = read_topic(broker.bootstrap, cfg.stream.user_events_topic, expected=3)
    assert [(r.key, json.loads(r.value)) for r in users] == [
        (b"3", {"user_id": "3", "item_id": "10", "timestamp": 1_700_000_005, "event_type": "click"}),
        (b"1", {"user_id": "1", "item_id": "11", "timestamp": 1_700_000_006, "event_type": "rating"}),
        (b"3", {"user_id": "3", "item_id": "12", "timestamp": 1_700_000_007, "event_type": "click"}),
    ]
    got = sorted((json.loads(r.value) for r in read_topic(broker.bootstrap, cfg.stream.item_events_topic, expected=2)),
                 key=lambda g: g["item_id"])  # two partitions: order holds per key, not across keys
    assert [g["item_id"] for g in got] == ["1", "2"]
    assert got[0]["tags"] == item_row(1)["tags"] and got[1]["tags"] is None
