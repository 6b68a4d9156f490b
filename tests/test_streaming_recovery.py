"""`hllm refresh` as real processes against a real Tansu broker: SIGTERM commits what it wrote, kill -9
mid-stream and a restart lose no update and move no embedding backwards, two members split the
partitions; and an in-process consumer rides out a broker outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hllm.local_broker import LocalBroker, free_port
from feature_gen.streaming.clients import make_producer
from feature_gen.streaming.produce import send_paced, user_messages
from feature_gen.streaming.refresh import build_user_loop
from tests.streaming_support import (  # noqa: F401  (broker is a fixture)
    batch_user_embeddings,
    broker,
    create_stream_topics,
    expected_sequences,
    seed_item_embeddings,
    store_of,
    stream_config,
    user_events,
    wait_until,
    write_config,
)

NUM_ITEMS = 20
ROOT = Path(__file__).resolve().parents[1]


def start_refresh(config: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hllm.cli", "refresh", "--config", str(config),
                                 "--set", "stream.torch_threads=1"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def assert_running(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"hllm refresh exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


def produce(cfg, events) -> None:
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"])
    send_paced(make_producer(cfg.stream), cfg.stream.user_events_topic, user_messages(frame))


def committed_offsets(cfg, partitions: int = 4) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=cfg.stream.bootstrap_servers, group_id=cfg.stream.group_id,
                      enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(cfg.stream.user_events_topic, p)) or 0 for p in range(partitions)}
    finally:
        c.close()


def events_by_offset(cfg, expected: int) -> list:
    """(partition, offset, user_id, timestamp) of every user event, as the broker holds them."""
    import json

    from tests.streaming_support import read_topic

    return [(r.partition, r.offset, json.loads(r.value)["user_id"], json.loads(r.value)["timestamp"])
            for r in read_topic(cfg.stream.bootstrap_servers, cfg.stream.user_events_topic, expected)]


def assert_store_matches_batch(store, bundle, events, capacity) -> None:
    expected = expected_sequences(events, capacity)
    users, batch = batch_user_embeddings(bundle, range(NUM_ITEMS), expected)
    recent = store.recent_items(users)
    for uid, items, ts in zip(users, recent.item_ids, recent.item_ts):
        assert list(zip(items, ts.tolist())) == expected[uid], uid
    got = store.user_embeddings(users)
    np.testing.assert_array_equal(got.last_event_ts, batch.last_event_ts)
    np.testing.assert_allclose(got.vectors, batch.vectors, rtol=1e-4, atol=1e-5)


def all_written(store, events) -> bool:
    last = {}
    for u, _, t in events:
        last[u] = max(t, last.get(u, -1))
    users = sorted(last)
    return bool((store.user_embeddings(users).last_event_ts == np.array([last[u] for u in users])).all())


def test_sigterm_commits_what_it_wrote_and_kill_9_then_restart_loses_nothing(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle, max_batch_events=50, max_batch_ms=100)
    create_stream_topics(cfg)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(NUM_ITEMS))
    config = write_config(cfg, tmp_path / "refresh.yaml")
    log = tmp_path / "refresh.log"
    events = user_events(num_users=60, num_items=NUM_ITEMS, num_events=1500, seed=3)
    produce(cfg, events)
    users = sorted({u for u, _, _ in events})

    # 1. SIGTERM: the member finishes its batch, commits and exits 0; what it committed is in the store
    first = start_refresh(config, log)
    wait_until(lambda: assert_running(first, log) or store.user_embeddings(users).found.any(), 120,
               what="the first embeddings")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, log.read_text()[-3000:]
    committed = committed_offsets(cfg)
    assert sum(committed.values()) > 0
    stored = dict(zip(users, store.user_embeddings(users).last_event_ts.tolist()))
    for partition, offset, user, ts in events_by_offset(cfg, len(events)):
        if offset < committed[partition]:
            assert stored[user] >= ts, f"committed event {partition}/{offset} of {user} is not in its embedding"

    # 2. kill -9 while a second member is busy writing
    second = start_refresh(config, log)
    before_kill = store.user_embeddings(users).last_event_ts.copy()
    wait_until(lambda: assert_running(second, log) or (store.user_embeddings(users).last_event_ts > before_kill).any(),
               120, interval_s=0.02, what="the second member's first writes")
    floor = store.user_embeddings(users).last_event_ts.copy()
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)

    # 3. a restart finishes the stream: every update there, nothing older than before the kill
    third = start_refresh(config, log)
    try:
        wait_until(lambda: assert_running(third, log) or all_written(store, events), 180, what="the restart to catch up")
    finally:
        third.send_signal(signal.SIGTERM)
        third.wait(timeout=60)
    assert (store.user_embeddings(users).last_event_ts >= floor).all()
    assert_store_matches_batch(store, tiny_bundle, events, cfg.stream.max_recent_items)


def scrape(port: int, name: str, label: str = "") -> float:
    """The sum of a metric's samples (those whose labels contain `label`) from a consumer's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {" and label in line)


def test_two_members_split_partitions(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle)
    create_stream_topics(cfg, partitions=4)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(NUM_ITEMS))
    ports = [free_port(), free_port()]
    members = []
    for k, port in enumerate(ports):
        config = write_config(cfg.model_copy(update={"stream": cfg.stream.model_copy(update={"metrics_port": port})}),
                              tmp_path / f"member{k}.yaml")
        members.append((start_refresh(config, tmp_path / f"member{k}.log"), tmp_path / f"member{k}.log"))
    try:
        def split() -> bool:
            for proc, log in members:
                assert_running(proc, log)
            try:
                return [scrape(p, "hllm_stream_assigned_partitions") for p in ports] == [2.0, 2.0]
            except OSError:  # not serving yet
                return False

        wait_until(split, 120, interval_s=0.3, what="both members to own two partitions each")
        events = user_events(num_users=40, num_items=NUM_ITEMS, num_events=600, seed=4)
        produce(cfg, events)
        wait_until(lambda: all_written(store, events), 120, what="both members to write every user")
        added = [scrape(p, "hllm_stream_events_total", 'outcome="added"') for p in ports]
    finally:
        for proc, _ in members:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc, _ in members]
    assert codes == [0, 0]
    assert all(a > 0 for a in added) and sum(added) == len(events), added
    assert_store_matches_batch(store, tiny_bundle, events, cfg.stream.max_recent_items)


def test_broker_outage_is_retried_and_resumed_without_loss(tmp_path, tiny_bundle, encoders):
    """The broker freezes (SIGSTOP: connections hang, nothing answers) in the middle of the stream for
    longer than the session timeout, then comes back: the consumer resumes and loses nothing."""
    with LocalBroker.start(log_path=tmp_path / "tansu.log") as own_broker:
        cfg = stream_config(tmp_path, own_broker, tiny_bundle, max_batch_events=20)
        create_stream_topics(cfg)
        store = store_of(cfg)
        seed_item_embeddings(store, encoders, range(NUM_ITEMS))
        events = user_events(num_users=30, num_items=NUM_ITEMS, num_events=1500, seed=5)
        produce(cfg, events)
        loop = build_user_loop(cfg, threading.Event(), encoders, store)
        errors = []
        thread = threading.Thread(target=lambda: _run(loop, errors), daemon=True)
        thread.start()
        try:
            wait_until(lambda: errors or loop.metrics.value("hllm_stream_batch_events_count") >= 2, 60,
                       interval_s=0.01, what="a first batch")
            os.kill(own_broker.process.pid, signal.SIGSTOP)
            try:
                threading.Event().wait(cfg.stream.session_timeout_ms / 1000 + 1)
                assert not all_written(store, events)  # the outage really fell mid-stream
            finally:
                os.kill(own_broker.process.pid, signal.SIGCONT)
            wait_until(lambda: errors or all_written(store, events), 180, what="the stream to resume")
        finally:
            loop.stop.set()
            thread.join(timeout=60)
        assert not errors, errors
    assert_store_matches_batch(store, tiny_bundle, events, cfg.stream.max_recent_items)


def _run(loop, errors: list) -> None:
    try:
        loop.run()
    except BaseException as exc:
        errors.append(exc)
        raise
