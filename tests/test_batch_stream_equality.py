"""Issue 20: one event log, with duplicates, bad rows and timestamp ties, through the batch jobs and
through the stream consumer must leave identical state: every user's recent items (ids, timestamps,
order) and embedding (vector, seq_len, last_event_ts). The batch jobs run in this process on a real
local Spark; the consumer on a real Tansu broker into a real Feast (SQLite) store."""

from __future__ import annotations

import json
import os
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.model.bundle import read_manifest
from feature_gen.store.offline_store import USER_EMBEDDING, USER_RECENT_ITEMS, USER_REJECTS, read_version
from feature_gen.streaming.clients import make_producer
from feature_gen.inference.encoders import load_encoders
from feature_gen.streaming.events import user_event_json
from feature_gen.streaming.produce import send_paced
from feature_gen.streaming.refresh import build_user_loop
from tests.streaming_support import broker, create_stream_topics, item_row, store_of, stream_config, wait_until  # noqa: F401
from tests.test_streaming_refresh import check_alive, running

pytestmark = pytest.mark.integration
CAPACITY = 20  # both sides keep 20 recent items (the tiny bundle's max_seq_len is 20 too)


def _log() -> tuple[pd.DataFrame, list[tuple[bytes, bytes]]]:
    """The good events (file order) and the same log as messages, with bad rows in both forms."""
    rng = np.random.default_rng(11)
    rows = []
    for k in range(90):
        user = f"u{rng.integers(0, 8)}"
        rows.append((user, str(rng.integers(0, 8)), int(1_700_000_000 + rng.integers(0, 30))))  # many ties
    rows += rows[10:25]  # a replayed stretch: exact duplicates
    good = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    # Under the window: at a full window the two sides differ on a timestamp tie with the oldest entry
    # (the stream drops the later arrival as too late, the batch keeps it: later file order is newer).
    assert good.drop_duplicates().groupby("user_id").size().max() < CAPACITY
    bad_rows = [(None, "1", 1_700_000_005), ("u1", "1", 2**63 - 1), ("u2", "no-such-item", 1_700_000_006)]
    batch = pd.concat([good, pd.DataFrame(bad_rows, columns=good.columns)], ignore_index=True)
    messages = [(str(u).encode(), user_event_json(u, i, t)) for u, i, t in rows]
    messages += [(None, json.dumps({"user_id": None, "item_id": "1", "timestamp": 1_700_000_005, "event_type": "click"}).encode()),
                 (b"u1", user_event_json("u1", "1", 2**63 - 1)),
                 (b"u2", user_event_json("u2", "no-such-item", 1_700_000_006))]
    return batch, messages


def test_batch_jobs_and_the_consumer_store_identical_state(tmp_path, broker, tiny_bundle, monkeypatch):
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    from spark_jobs.item_embed import main as item_embed
    from spark_jobs.user_embed import main as user_embed

    cfg = stream_config(tmp_path, broker, tiny_bundle, max_recent_items=CAPACITY, unknown_item_wait_ms=0)
    create_stream_topics(cfg, partitions=1)
    batch_log, messages = _log()
    pd.DataFrame([item_row(i) for i in range(8)]).to_parquet(tmp_path / "items.parquet")
    batch_log.to_parquet(tmp_path / "events.parquet")
    config = tmp_path / "store.yaml"
    config.write_text(json.dumps({"store": cfg.store.model_dump(), "spark": {"max_recent_items": CAPACITY}}))
    common = ["--bundle", str(tiny_bundle), "--config", str(config), "--master", "local[1]", "--partitions", "1"]
    # items online (what the consumer reads), users offline only (the consumer writes them online)
    assert item_embed(["--items", str(tmp_path / "items.parquet"), "--materialize", *common]) == 0
    assert user_embed(["--interactions", str(tmp_path / "events.parquet"), *common]) == 0
    version = read_manifest(tiny_bundle)["version"]
    offline = cfg.store.offline_root
    batch_users = read_version(offline, USER_EMBEDDING, version).set_index("user_id").sort_index()
    batch_recent = read_version(offline, USER_RECENT_ITEMS, version).set_index("user_id").sort_index()
    assert sorted(read_version(offline, USER_REJECTS, version).reason) == ["null_user_id", "timestamp_out_of_range",
                                                                           "unknown_item"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoders = load_encoders(tiny_bundle)
        store = store_of(cfg)
        send_paced(make_producer(cfg.stream), cfg.stream.user_events_topic, messages)
        loop = build_user_loop(cfg, threading.Event(), encoders, store)
        with running(loop):
            wait_until(lambda: check_alive(loop) or loop.metrics.value("hllm_stream_dead_letters_total",
                                                                       {"reason": "unknown_item"}) == 1
                       and store.user_embeddings(list(batch_users.index)).found.all(), 120, what="the stream")
            lags = lambda: loop.metrics.registry.get_sample_value(  # noqa: E731
                "hllm_stream_consumer_lag", {"topic": cfg.stream.user_events_topic, "partition": "0"})
            wait_until(lambda: lags() == 0.0, 60, what="lag 0")
    finally:
        torch.set_num_threads(threads)

    users = list(batch_users.index)
    recent = store.recent_items(users)
    assert recent.found.all()
    for uid, items, ts in zip(users, recent.item_ids, recent.item_ts):
        assert list(items) == list(batch_recent.loc[uid, "recent_item_ids"]), uid
        assert ts.tolist() == list(batch_recent.loc[uid, "recent_item_ts"]), uid
    got = store.user_embeddings(users)
    np.testing.assert_array_equal(got.last_event_ts, batch_users.last_event_ts.to_numpy())
    np.testing.assert_array_equal(got.seq_len, batch_users.seq_len.to_numpy())
    np.testing.assert_allclose(got.vectors, np.stack(batch_users.embedding.to_numpy()), rtol=1e-4, atol=1e-5)
