"""The event contract and the recent-item merge rule (pure functions; the broker tests cover the rest)."""

from __future__ import annotations

import json
import random

import pytest

from feature_gen.config import ConfigError, StreamConfig
from feature_gen.streaming.clients import connection_options
from feature_gen.streaming.events import InvalidEvent, parse_item_event, parse_user_event, user_event_json
from feature_gen.streaming.recent_items import RecentSequence, merge_event, merge_events


def test_a_valid_user_event_parses_with_integer_or_string_ids():
    e = parse_user_event(b'{"user_id": 42, "item_id": "i9", "timestamp": 1700000100, "event_type": "click"}', key=b"42")
    assert (e.user_id, e.item_id, e.timestamp, e.event_type) == ("42", "i9", 1_700_000_100, "click")
    assert parse_user_event(user_event_json("u", 7, 1_700_000_005)).item_id == "7"


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (None, "not_an_object"),
    (b'{"user_id": "u", "item_id": "i", "timestamp": 1}', "missing_field"),
    (b'{"user_id": null, "item_id": "i", "timestamp": 1, "event_type": "click"}', "missing_field"),
    (b'{"user_id": "u", "item_id": "i", "timestamp": 1.5, "event_type": "click"}', "bad_field"),
    (b'{"user_id": "u", "item_id": "i", "timestamp": -1, "event_type": "click"}', "bad_field"),
    (b'{"user_id": true, "item_id": "i", "timestamp": 1, "event_type": "click"}', "bad_field"),
    (b'{"user_id": "u", "item_id": ["i"], "timestamp": 1, "event_type": "click"}', "bad_field"),
    (b'{"user_id": " ", "item_id": "i", "timestamp": 1, "event_type": "click"}', "bad_field"),
    (b'{"user_id": "u", "item_id": "i", "timestamp": 1, "event_type": ""}', "bad_field"),
])
def test_bad_user_events_are_rejected_with_their_reason(raw, reason):
    with pytest.raises(InvalidEvent) as exc:
        parse_user_event(raw)
    assert exc.value.reason == reason


def test_oversize_and_key_mismatch_are_rejected():
    with pytest.raises(InvalidEvent, match="oversize"):
        parse_user_event(user_event_json("u", "i", 1, "x" * 100), max_bytes=64)
    with pytest.raises(InvalidEvent, match="key_mismatch"):
        parse_user_event(user_event_json("u", "i", 1), key=b"someone-else")


def test_item_events_keep_every_field_for_the_text_builder():
    e = parse_item_event(json.dumps({"item_id": 5, "timestamp": 1_700_000_009, "title": "T", "tags": ["a"]}).encode(), key=b"5")
    assert e.item_id == "5" and e.fields["title"] == "T" and e.fields["item_id"] == "5"
    with pytest.raises(InvalidEvent, match="missing_field"):
        parse_item_event(b'{"item_id": 5}')


def test_merge_places_late_events_by_time_and_skips_duplicates():
    seq = RecentSequence()
    counts = merge_events(seq, [("a", 10), ("c", 30), ("b", 20), ("c", 30), ("d", 20)], capacity=5)
    assert (counts.added, counts.duplicate, counts.too_late) == (4, 1, 0)
    assert list(zip(seq.item_ids, seq.timestamps)) == [("a", 10), ("b", 20), ("d", 20), ("c", 30)]
    assert merge_event(seq, "b", 20, capacity=5) == "duplicate"
    assert merge_event(seq, "b", 21, capacity=5) == "added"  # the same item at another time is a new event


def test_a_full_window_drops_events_not_newer_than_its_oldest():
    seq = RecentSequence(["a", "b", "c"], [10, 20, 30])
    assert merge_event(seq, "z", 5, capacity=3) == "too_late"
    assert merge_event(seq, "z", 10, capacity=3) == "too_late"
    assert merge_event(seq, "y", 15, capacity=3) == "added"
    assert list(zip(seq.item_ids, seq.timestamps)) == [("y", 15), ("b", 20), ("c", 30)]


def test_merging_anything_twice_changes_nothing():
    """The property at-least-once delivery rests on: after any history of merges, replaying any subset
    of the events already merged leaves the sequence exactly as it was."""
    rng = random.Random(0)
    for trial in range(200):
        events = [(f"i{rng.randrange(6)}", rng.randrange(20)) for _ in range(rng.randrange(1, 30))]
        capacity = rng.randrange(1, 8)
        seq = RecentSequence()
        merge_events(seq, events, capacity)
        before = (list(seq.item_ids), list(seq.timestamps))
        replay = rng.sample(events, rng.randrange(len(events) + 1))
        counts = merge_events(seq, replay, capacity)
        assert counts.added == 0, (trial, events, replay)
        assert (seq.item_ids, seq.timestamps) == before
        assert seq.timestamps == sorted(seq.timestamps) and len(seq) <= capacity


def test_sasl_and_tls_settings_pass_through(monkeypatch):
    cfg = StreamConfig(bootstrap_servers="k1:9093, k2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                       sasl_username="hllm", sasl_password_env="HLLM_TEST_KAFKA_PASSWORD", ssl_cafile="/etc/ca.pem")
    monkeypatch.setenv("HLLM_TEST_KAFKA_PASSWORD", "s3cret")
    opts = connection_options(cfg)
    assert opts["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert (opts["security_protocol"], opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "hllm", "s3cret")
    assert opts["ssl_cafile"] == "/etc/ca.pem"
    monkeypatch.delenv("HLLM_TEST_KAFKA_PASSWORD")
    with pytest.raises(ConfigError, match="HLLM_TEST_KAFKA_PASSWORD"):
        connection_options(cfg)
    with pytest.raises(ValueError, match="sasl_mechanism"):
        StreamConfig(security_protocol="SASL_PLAINTEXT")


def test_a_broker_that_loses_its_port_is_refused_not_mistaken_for_another():
    """Another process listening on the port must not pass for our broker (a race of free_port)."""
    from hllm.local_broker import BrokerError, LocalBroker

    with LocalBroker.start() as first:
        with pytest.raises(BrokerError, match="taken"):
            LocalBroker.start(port=first.port, timeout_s=5)
        with LocalBroker.start() as second:
            assert second.port != first.port and second.process.poll() is None
