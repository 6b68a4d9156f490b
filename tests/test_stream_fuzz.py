"""Property-based fuzzing of the event parsers and the two stream processors (issue 20): arbitrary bytes,
JSON shapes, nesting depths, sizes, numbers, ids (lone surrogates included) and keys. The only
outcomes allowed are "applied" and "dead-lettered": never an exception, never a record lost between
the two. The processors run against a real Feast (SQLite) store and the real tiny bundle's encoders.

The example budget is fixed and the generation derandomized, so `make test` runs the same cases every
time (raise FUZZ_EXAMPLES locally to search harder)."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from feature_gen.config import StoreConfig
from feature_gen.inference.encoders import load_encoders
from feature_gen.streaming.events import InvalidEvent, ItemEvent, UserEvent, parse_item_event, parse_user_event
from feature_gen.streaming.item_refresh import ItemRefresh
from feature_gen.streaming.metrics import StreamMetrics
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.refresh import UserRefresh
from tests.streaming_support import seed_item_embeddings

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
KNOWN_ITEMS = [str(i) for i in range(5)]
MAX_EVENT_BYTES = 4096
MAX_ITEM_EVENT_BYTES = 20_000

# ------------------------------------------------------------------------------------------ strategies

any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # lone surrogates too
texts = st.text(alphabet=any_char, max_size=12)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 253_402_300_800, int(time.time())]),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(texts, inner, max_size=4), max_leaves=10)
ids = st.one_of(st.sampled_from(["u1", "u2", "42", 42, 7]), texts, numbers, json_values)
item_ids = st.one_of(st.sampled_from(KNOWN_ITEMS + [3, "no-such-item"]), texts, numbers, json_values)
timestamps = st.one_of(st.integers(min_value=0, max_value=2_000_000_000), numbers, texts, json_values)


def _dumps(obj) -> bytes:
    return json.dumps(obj).encode()  # ensure_ascii: a lone surrogate travels as a \\udXXX escape


user_objects = st.fixed_dictionaries({}, optional={
    "user_id": ids, "item_id": item_ids, "timestamp": timestamps,
    "event_type": st.one_of(st.sampled_from(["click", "rating"]), texts, json_values), "extra": json_values,
})
likely_user_objects = st.fixed_dictionaries({  # mostly valid, so the processors get past validation
    "user_id": st.sampled_from(["u1", "u2", "u3", 42]), "item_id": st.sampled_from(KNOWN_ITEMS + ["no-such-item"]),
    "timestamp": st.one_of(st.integers(min_value=0, max_value=2_000_000_000), numbers), "event_type": st.just("click"),
})


def nested(depth: int) -> bytes:
    return b'{"user_id": "u1", "item_id": "1", "timestamp": 1700000005, "event_type": "click", "x": ' + b"[" * depth + b"]" * depth + b"}"


def raw_messages(objects):
    return st.one_of(
        objects.map(_dumps),
        json_values.map(_dumps),
        st.binary(max_size=64),
        st.integers(min_value=1, max_value=3000).map(nested),
        st.integers(min_value=1, max_value=3 * MAX_EVENT_BYTES).map(
            lambda n: _dumps({"user_id": "u1", "item_id": "1", "timestamp": 1700000005, "event_type": "c" * n})),
        st.just(None),  # a tombstone
    )


@st.composite
def keyed(draw, objects, id_field: str):
    """(key, value): the key is the message's own id (the producer contract), absent, or anything."""
    value = draw(raw_messages(objects))
    choice = draw(st.sampled_from(["own", "none", "bytes"]))
    if choice == "bytes":
        return draw(st.binary(max_size=16)), value
    if choice == "none" or value is None:
        return None, value
    try:
        own = json.loads(value).get(id_field)
    except Exception:  # noqa: BLE001 (not an object: any key will do)
        return None, value
    return str(own).encode("utf-8", "surrogatepass"), value


item_objects = st.fixed_dictionaries({"item_id": st.one_of(st.sampled_from(["n1", "n2", 9]), item_ids),
                                      "timestamp": timestamps}, optional={
    "title": st.one_of(texts, json_values), "tags": st.one_of(st.lists(texts, max_size=4), json_values),
    "description": st.one_of(texts, st.text(max_size=300)), "year": json_values,
})

# ------------------------------------------------------------------------------------------- parsers


@settings(FUZZ, max_examples=300 * SCALE)
@given(message=keyed(user_objects, "user_id"))
def test_the_user_event_parser_returns_an_event_or_an_invalid_event(message):
    key, value = message
    try:
        event = parse_user_event(value, key, MAX_EVENT_BYTES)
    except InvalidEvent as exc:
        assert exc.reason and exc.detail
        return
    assert isinstance(event, UserEvent) and 0 <= event.timestamp < 2**63
    event.user_id.encode("utf-8")  # storable
    event.item_id.encode("utf-8")


@settings(FUZZ, max_examples=200 * SCALE)
@given(message=keyed(item_objects, "item_id"))
def test_the_item_event_parser_returns_an_event_or_an_invalid_event(message):
    key, value = message
    try:
        event = parse_item_event(value, key, MAX_ITEM_EVENT_BYTES)
    except InvalidEvent as exc:
        assert exc.reason and exc.detail
        return
    assert isinstance(event, ItemEvent) and 0 <= event.timestamp < 2**63


# ---------------------------------------------------------------------------------------- processors


@pytest.fixture(scope="module")
def world(tiny_bundle, tmp_path_factory):
    from feature_gen.store.feature_store import open_store

    root = tmp_path_factory.mktemp("fuzz_store")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoders = load_encoders(tiny_bundle)
    store = open_store(StoreConfig(repo_path=str(root / "repo"), offline_root=str(root / "offline"), project="fuzz"))
    seed_item_embeddings(store, encoders, KNOWN_ITEMS)
    yield store, encoders
    torch.set_num_threads(threads)


_OFFSETS = iter(range(10**9))


def _records(topic: str, messages) -> list:
    now_ms = int(time.time() * 1000)
    return [ConsumerRecord(topic, 0, -1, next(_OFFSETS), now_ms, 0, k, v, [], None, -1, -1, -1) for k, v in messages]


def _settled(metrics: StreamMetrics, consumer: str, outcomes: tuple[str, ...]) -> float:
    return sum(metrics.value("hllm_stream_events_total", {"consumer": consumer, "outcome": o}) for o in outcomes)


@settings(FUZZ, max_examples=40 * SCALE)
@given(batch=st.lists(st.one_of(keyed(likely_user_objects, "user_id"), keyed(user_objects, "user_id")),
                      min_size=1, max_size=6))
def test_the_user_processor_applies_or_dead_letters_every_record(world, batch):
    store, encoders = world
    metrics = StreamMetrics("user_refresh")
    # no waiting for unknown items: a record's outcome is decided in its own batch
    refresh = UserRefresh(OnlineState(store, encoders.version), encoders, metrics, max_event_bytes=MAX_EVENT_BYTES,
                          unknown_item_wait_ms=0)
    records = _records("user-events", batch)
    outcome = refresh.process(records)  # never raises

    lettered = [d.offset for d in outcome.dead_letters]
    assert len(set(lettered)) == len(lettered) and not outcome.held and not refresh.has_held()
    applied = [r for r in records if r.offset not in set(lettered)]
    assert _settled(metrics, "user_refresh", ("added", "duplicate", "too_late")) == len(applied)
    for r in applied:  # applied means: a valid event on a known item, now part of its user's state
        event = parse_user_event(r.value, r.key, MAX_EVENT_BYTES)
        assert event.item_id in KNOWN_ITEMS
        seq = store.recent_items([event.user_id])
        assert seq.found[0] and store.user_embeddings([event.user_id]).found[0]
        # the store is shared by every example, so "found" alone would hold after the first: the event
        # itself is in the user's window, or the window is full and the event not newer than its oldest
        # entry (too late, recent_items.merge_event)
        entries = set(zip(seq.item_ids[0], seq.item_ts[0].tolist()))
        in_window = (event.item_id, event.timestamp) in entries
        too_late = len(entries) >= refresh.capacity and event.timestamp <= int(seq.item_ts[0][0])
        assert in_window or too_late, (event, len(entries))


@settings(FUZZ, max_examples=30 * SCALE)
@given(batch=st.lists(keyed(item_objects, "item_id"), min_size=1, max_size=5))
def test_the_item_processor_embeds_or_dead_letters_every_record(world, batch):
    store, encoders = world
    metrics = StreamMetrics("item_refresh")
    refresh = ItemRefresh(OnlineState(store, encoders.version), encoders, metrics, MAX_ITEM_EVENT_BYTES)
    records = _records("item-events", batch)
    outcome = refresh.process(records)  # never raises

    lettered = {d.offset for d in outcome.dead_letters}
    assert len(lettered) == len(outcome.dead_letters)
    applied = [r for r in records if r.offset not in lettered]
    assert _settled(metrics, "item_refresh", ("embedded", "superseded")) == len(applied)
    for r in applied:
        event = parse_item_event(r.value, r.key, MAX_ITEM_EVENT_BYTES)
        got = store.item_embeddings([event.item_id])
        assert got.found[0] and got.bundle_versions[0] == encoders.version
