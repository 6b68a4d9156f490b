"""Issue 20: no message can stop a refresh consumer. The three messages that put `hllm refresh` into a
crash loop (a value just over 1 MB, a timestamp of 2**64, 2,000-deep JSON), a year-10000 timestamp,
and their item-event twins go through real consumers on a real Tansu broker into the dead-letter topic,
and the events behind them are applied; the dead-letter writer delivers what the producer refuses as
too large (cut, with headers saying so) and reports, rather than raises, a broker that is gone; a
record whose processing fails is dead-lettered while the rest of its batch is applied, and a store
failure stops the consumer."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from kafka.consumer.fetcher import ConsumerRecord

from feature_gen.streaming.clients import make_producer
from feature_gen.streaming.dead_letter import (
    MAX_VALUE_BYTES,
    DeadLetter,
    DeadLetterError,
    DeadLetterWriter,
    read_headers,
)
from feature_gen.streaming.events import InvalidEvent, parse_item_event, parse_user_event, user_event_json
from feature_gen.streaming.item_refresh import build_item_loop
from feature_gen.streaming.metrics import StreamMetrics
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.produce import send_paced
from feature_gen.streaming.refresh import UserRefresh, build_user_loop
from hllm.local_broker import LocalBroker
from tests.streaming_support import (  # noqa: F401  (broker is a fixture)
    broker,
    create_stream_topics,
    item_row,
    read_topic,
    seed_item_embeddings,
    store_of,
    stream_config,
    wait_until,
)
from tests.test_streaming_refresh import check_alive, running

YEAR_10000 = 253_402_300_800


def over_1mb_user_event() -> bytes:
    return json.dumps({"user_id": "erin", "item_id": "1", "timestamp": 1700000020, "event_type": "x" * 1_048_600}).encode()


def deep_json_event(depth: int = 2000) -> bytes:
    head = b'{"user_id": "erin", "item_id": "1", "timestamp": 1700000021, "event_type": "click", "extra": '
    return head + b"[" * depth + b"]" * depth + b"}"


def user_event_with_ts(ts) -> bytes:
    return b'{"user_id": "erin", "item_id": "1", "timestamp": %d, "event_type": "click"}' % ts


# ------------------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize("raw, reason, detail", [
    (over_1mb_user_event(), "oversize", "the limit is 4096"),
    (user_event_with_ts(2**64), "bad_field", "timestamp"),
    (user_event_with_ts(2**63), "bad_field", "timestamp"),
    (user_event_with_ts(YEAR_10000), "bad_field", "outside the plausible window"),
    (deep_json_event(), "invalid_json", "nested too deeply"),
    (b'{"user_id": "erin", "item_id": ' + b"9" * 5000 + b', "timestamp": 1700000001, "event_type": "click"}', "invalid_json", "digits"),
    (b'{"user_id": "\\ud800", "item_id": "1", "timestamp": 1700000001, "event_type": "click"}', "bad_field", "user_id: not valid Unicode"),
    (b'{"user_id": 18446744073709551616, "item_id": "1", "timestamp": 1700000001, "event_type": "click"}', "bad_field", "int64"),
    (json.dumps({"user_id": "u" * 2000, "item_id": "1", "timestamp": 1700000001, "event_type": "c"}).encode(), "bad_field", "limit is 1024"),
])
def test_each_crash_message_is_an_invalid_event_with_its_reason(raw, reason, detail):
    with pytest.raises(InvalidEvent) as exc:
        parse_user_event(raw, max_bytes=4096 if reason == "oversize" else 1_000_000)
    assert exc.value.reason == reason and detail in exc.value.detail


def test_item_event_strings_must_be_valid_unicode_and_the_largest_valid_timestamp_passes():
    with pytest.raises(InvalidEvent, match="title: not valid Unicode"):
        parse_item_event(b'{"item_id": "9", "timestamp": 1700000005, "title": ["ok", "\\udc80"]}')
    assert parse_user_event(user_event_with_ts(1_700_000_000)).timestamp == 1_700_000_000


# ------------------------------------------------------------------------------- through the consumers


def test_the_three_crash_messages_are_dead_lettered_and_the_consumers_go_on(tmp_path, broker, tiny_bundle, encoders):
    cfg = stream_config(tmp_path, broker, tiny_bundle, unknown_item_wait_ms=0)
    assert len(deep_json_event()) < cfg.stream.max_event_bytes  # the case: small, yet it crashed
    create_stream_topics(cfg)
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(5))
    big_producer = make_producer(cfg.stream, max_request_size=4_000_000)  # what a foreign producer may send
    bad_users = {
        "oversize": over_1mb_user_event(),
        "bad_field": user_event_with_ts(2**64),
        "invalid_json": deep_json_event(),
        "bad_field/year-10000": user_event_with_ts(YEAR_10000),
    }
    good = [user_event_json("erin", "1", 1700000010), user_event_json("erin", "2", 1700000030)]
    # one key: every bad message sits in front of the good ones in one partition
    send_paced(big_producer, cfg.stream.user_events_topic,
               [(b"erin", v) for v in [good[0], *bad_users.values(), good[1]]])
    big_item = json.dumps({**item_row(77), "description": "y" * 1_100_000}).encode()
    bad_items = {
        "oversize": (b"77", big_item),
        "invalid_json": (b"78", b'{"item_id": "78", "timestamp": 1700000005, "title": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        "bad_field": (b"79", b'{"item_id": "79", "timestamp": 1700000005, "title": "\\ud800 lone surrogate"}'),
    }
    send_paced(big_producer, cfg.stream.item_events_topic,
               [*bad_items.values(), (b"80", json.dumps(item_row(80)).encode())])

    user_loop = build_user_loop(cfg, threading.Event(), encoders, store)
    item_loop = build_item_loop(cfg, threading.Event(), encoders, store)
    with running(user_loop, item_loop):
        wait_until(lambda: check_alive(user_loop, item_loop) or store.user_embeddings(["erin"]).last_event_ts[0] == 1_700_000_030,
                   90, what="the good event behind the bad ones")
        wait_until(lambda: check_alive(user_loop, item_loop) or store.item_embeddings(["80"]).found[0], 60,
                   what="the good item behind the bad ones")
        wait_until(lambda: check_alive(user_loop, item_loop) or user_loop.metrics.value(
            "hllm_stream_dead_letters_total", {"reason": "bad_field"}) == 2, 30, what="the user dead letters")

    assert store.recent_items(["erin"]).item_ids == [["1", "2"]]  # no year-10000 "newest event"
    letters = read_topic(broker.bootstrap, cfg.stream.dead_letter_topic, expected=len(bad_users) + len(bad_items))
    assert len(letters) == len(bad_users) + len(bad_items)
    by_source = {(read_headers(r)["hllm.source"].rsplit("/", 2)[0], read_headers(r)["hllm.reason"]): r for r in letters}
    assert sorted(r for t, r in by_source if t == cfg.stream.user_events_topic) == ["bad_field", "invalid_json", "oversize"]
    assert sorted(r for t, r in by_source if t == cfg.stream.item_events_topic) == ["bad_field", "invalid_json", "oversize"]
    for topic, originals in ((cfg.stream.user_events_topic, bad_users["oversize"]),
                             (cfg.stream.item_events_topic, big_item)):
        cut = by_source[(topic, "oversize")]
        headers = read_headers(cut)
        assert headers["hllm.truncated"] == "value" and int(headers["hllm.original_size"]) == len(originals)
        assert cut.value == originals[:MAX_VALUE_BYTES]
    small = [r for r in letters if "hllm.truncated" not in read_headers(r)]
    assert {r.value for r in small} == {v for k, v in bad_users.items() if k != "oversize"} | {
        v for k, (_, v) in bad_items.items() if k != "oversize"}


def test_the_dead_letter_writer_cuts_a_letter_the_producer_refuses_as_too_large(tmp_path, broker, tiny_bundle):
    cfg = stream_config(tmp_path, broker, tiny_bundle)
    create_stream_topics(cfg)
    value = bytes(range(256)) * 400  # 102,400 bytes: under the writer's own limit, over this producer's
    letter = DeadLetter(cfg.stream.user_events_topic, 0, 7, b"k" * 5000, value, "oversize", "too big")
    writer = DeadLetterWriter(make_producer(cfg.stream, max_request_size=20_000), cfg.stream.dead_letter_topic, "g")
    writer.deliver([letter])  # raised MessageSizeTooLargeError from send() before
    (record,) = read_topic(broker.bootstrap, cfg.stream.dead_letter_topic, expected=1)
    headers = read_headers(record)
    assert headers["hllm.truncated"] == "key,value"
    assert (int(headers["hllm.original_size"]), int(headers["hllm.original_key_size"])) == (len(value), 5000)
    assert record.value == value[: MAX_VALUE_BYTES // 16 // 16] and record.key == b"k" * 1024  # 512 KiB -> 32 -> 2 KiB


def test_the_dead_letter_writer_reports_undelivered_letters_when_the_broker_is_gone(tmp_path, tiny_bundle):
    with LocalBroker.start(log_path=tmp_path / "tansu.log") as own:
        cfg = stream_config(tmp_path, own, tiny_bundle)
        create_stream_topics(cfg)
        producer = make_producer(cfg.stream, max_block_ms=1500, delivery_timeout_ms=1500, request_timeout_ms=1000)
        writer = DeadLetterWriter(producer, cfg.stream.dead_letter_topic, "g", timeout_s=2)
        writer.deliver([DeadLetter("t", 0, 1, b"k", b"v", "invalid_json", "x")])
    letters = [DeadLetter("t", 0, n, b"k", b"v", "invalid_json", "x") for n in (2, 3)]
    with pytest.raises(DeadLetterError) as exc:  # the loop retries these with backoff; nothing else escapes
        writer.deliver(letters)
    assert exc.value.letters == letters
    producer.close(timeout=1)


# ------------------------------------------------------------------ a record whose processing fails


class _FailingFor:
    """The real encoders, with a fault injected for histories holding one item (what a poison record
    that passes validation would do deep in the model)."""

    def __init__(self, encoders, poison_item: str | None):
        self._encoders, self.poison, self.fail_all = encoders, poison_item, False

    def __getattr__(self, name):
        return getattr(self._encoders, name)

    def embed_histories(self, vectors, histories, timestamps):
        if self.fail_all or any(self.poison in h for h in histories):
            raise FloatingPointError("injected: the User LLM failed on this history")
        return self._encoders.embed_histories(vectors, histories, timestamps)


def _records(topic: str, events) -> list:
    now_ms = int(time.time() * 1000)
    return [ConsumerRecord(topic, 0, -1, offset, now_ms, 0, u.encode(), user_event_json(u, i, 1_700_000_000 + t), [], None, 1, 1, 0)
            for offset, (u, i, t) in enumerate(events)]


def test_a_record_that_fails_processing_is_dead_lettered_and_the_rest_of_its_batch_applied(tmp_path, broker, tiny_bundle, encoders):
    from feature_gen.store.feature_store import OnlineStoreError
    from tests.redis_fixture import start_redis

    redis, address = start_redis(tmp_path)  # a store of its own, to take down at the end
    cfg = stream_config(tmp_path, broker, tiny_bundle)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"online_store": "redis", "redis_connection": address})})
    store = store_of(cfg)
    seed_item_embeddings(store, encoders, range(5))
    failing = _FailingFor(encoders, poison_item="4")
    refresh = UserRefresh(OnlineState(store, encoders.version), failing, StreamMetrics("user_refresh"), unknown_item_wait_ms=0)
    events = [("ann", "1", 10), ("bob", "4", 11), ("cid", "2", 12), ("bob", "1", 13)]
    outcome = refresh.process(_records("t", events))
    assert sorted((d.offset, d.reason) for d in outcome.dead_letters) == [(1, "processing_failed"), (3, "processing_failed")]
    assert "FloatingPointError: injected" in outcome.dead_letters[0].detail
    got = store.user_embeddings(["ann", "bob", "cid"])
    assert got.found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got.last_event_ts[[0, 2]], [1_700_000_010, 1_700_000_012])

    failing.fail_all = True  # every user of the batch fails alike: the fault is not the records'
    with pytest.raises(FloatingPointError):
        refresh.process(_records("t", [("dan", "1", 20), ("eve", "2", 21)]))
    after = store.user_embeddings(["ann", "cid", "dan", "eve"])  # the raised batch wrote nothing, lost nothing
    assert after.found.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(after.last_event_ts[:2], [1_700_000_010, 1_700_000_012])

    redis.kill()  # the store goes away: no record is to blame, so nothing is dead-lettered; the error stops the loop
    redis.wait()
    with pytest.raises(OnlineStoreError, match=f"failed \\(redis at {address}\\)"):
        refresh.process(_records("t", [("fay", "1", 30)]))
