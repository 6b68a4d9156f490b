"""Shared pieces of the streaming tests: a real Tansu broker, configs, event logs, the batch recomputation
the stream must agree with, and polling helpers. No mocks: every test talks Kafka protocol to Tansu."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from feature_gen.config import HLLMConfig
from feature_gen.model.item_text import build_item_text

_SUFFIX = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    from hllm.local_broker import LocalBroker

    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker.start(log_path=log) as b:
        yield b


def stream_config(tmp_path: Path, broker, bundle, **stream) -> HLLMConfig:
    """A config of its own topics, group and store, so tests sharing a broker never see each other."""
    n = f"{os.getpid()}-{next(_SUFFIX)}"  # unique even across test runs sharing a machine
    raw = {
        # a Feast project of its own too: Feast caches per project within a process
        "store": {"repo_path": str(tmp_path / "repo"), "offline_root": str(tmp_path / "offline"),
                  "project": "stream_" + n.replace("-", "_")},
        "stream": {
            "bundle_path": str(bundle),
            "bootstrap_servers": broker.bootstrap,
            "user_events_topic": f"user-events-{n}",
            "item_events_topic": f"item-events-{n}",
            "dead_letter_topic": f"dead-letter-{n}",
            "group_id": f"refresh-{n}",
            "item_group_id": f"refresh-items-{n}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_batch_ms": 100,
            "max_batch_events": 100,
            "max_recent_items": 20,
            "unknown_item_wait_ms": 1000,
            "retry_backoff_ms": 100,
            "retry_backoff_max_ms": 1000,
            **stream,
        },
    }
    return HLLMConfig.model_validate(raw)


def write_config(cfg: HLLMConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path


def create_stream_topics(cfg: HLLMConfig, partitions: int = 4) -> None:
    from feature_gen.streaming.clients import create_topics

    s = cfg.stream
    create_topics(s, {s.user_events_topic: partitions, s.item_events_topic: 2, s.dead_letter_topic: 1})


def item_row(item_id) -> dict:
    return {"item_id": str(item_id), "timestamp": 1_700_000_000, "title": f"movie number {item_id}",
            "tags": ["drama", f"tag{int(item_id) % 5}"], "description": f"the story of item {item_id}"}


def user_events(num_users: int, num_items: int, num_events: int, seed: int = 0, start_ts: int = 1_700_000_000):
    """(user_id, item_id, timestamp) in produce order; each user's timestamps strictly increase."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, num_events)
    items = rng.integers(0, num_items, num_events)
    clock = {}
    out = []
    for u, i in zip(users.tolist(), items.tolist()):
        clock[u] = clock.get(u, start_ts) + int(rng.integers(1, 600))
        out.append((f"u{u}", str(i), clock[u]))
    return out


def expected_sequences(events, capacity: int) -> dict[str, list[tuple[str, int]]]:
    """The recent-item sequence each user should end with: (item, ts) deduplicated, ordered by time with
    arrival order breaking ties, newest `capacity` kept (the rule of streaming.recent_items)."""
    per_user: dict[str, list[tuple[str, int]]] = {}
    for u, i, t in events:
        seq = per_user.setdefault(u, [])
        if (i, t) not in seq:
            seq.append((i, t))
    return {u: sorted(seq, key=lambda e: e[1])[-capacity:] for u, seq in per_user.items()}


def batch_user_embeddings(bundle_path, item_ids, sequences: dict[str, list[tuple[str, int]]]):
    """The batch recomputation: item texts -> Item LLM -> item table, sequences -> User LLM, all through
    feature_gen.inference.encoders (what a batch job runs), independent of the streaming code."""
    from feature_gen.model.bundle import load_bundle
    from feature_gen.inference.encoders import embed_texts, embed_users

    b = load_bundle(bundle_path)
    ids = [str(i) for i in item_ids]
    texts = [build_item_text(item_row(i), b.cfg.item_text) for i in ids]
    vectors = embed_texts(b.model.item_llm, b.tokenizer, texts, b.cfg.item_text.max_item_tokens,
                          padding_side=b.cfg.item_llm.padding_side)
    table = torch.cat([torch.zeros(1, vectors.shape[1]), torch.from_numpy(vectors)])
    index = {i: k + 1 for k, i in enumerate(ids)}
    users = sorted(sequences)
    out = embed_users(
        b.model.user_llm, table,
        [np.array([index[i] for i, _ in sequences[u]]) for u in users],
        [np.array([t for _, t in sequences[u]], dtype=np.int64) for u in users],
        b.cfg.data.max_seq_len,
    )
    return users, out


def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of `topic` (at least `expected` of them), read without a group from offset 0.

    Offset 0, not the broker's "earliest": after two producers write one partition at the same instant
    (the user and item loops dead-lettering together), Tansu's in-memory engine can answer ListOffsets
    with log start 1 and a high watermark one short while the record at offset 0 is there and fetchable
    (measured: 6 of 120 trials of two concurrent 512 KiB sends, Tansu 0.6.0). The topics here are fresh,
    so offset 0 is where they begin; an out-of-range 0 (a broker with retention) falls back to earliest."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, 0)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def store_of(cfg: HLLMConfig):
    from feature_gen.store.feature_store import open_store

    return open_store(cfg.store)


def seed_item_embeddings(store, encoders, item_ids) -> None:
    """Item embeddings written directly (what the item-embedding batch job does)."""
    from feature_gen.streaming.online_state import OnlineState

    ids = [str(i) for i in item_ids]
    vectors = encoders.embed_texts([build_item_text(item_row(i), encoders.text_cfg) for i in ids])
    OnlineState(store, encoders.version).write_item_embeddings(ids, vectors)
