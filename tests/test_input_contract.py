"""The one input contract (feature_gen/data/contract.py) as every reader meets it: the timestamp rule
(unit, plausible window), ids as strings, the missing-value rule, encodings, and the seven inputs of
issue 19, each with its right value."""

from __future__ import annotations

import json

import pytest

from feature_gen.config import ConfigError, config_from_dict
from feature_gen.data.contract import (
    EARLIEST_PLAUSIBLE_S,
    MAX_CLOCK_SKEW_S,
    check_timestamp,
    plausible_window,
    read_timestamps,
)
from feature_gen.streaming.events import InvalidEvent, parse_user_event

NOW = 1_764_500_000  # 2025-11-30, a fixed reader clock so the window does not move under the tests


# ---------------------------------------------------------------- timestamps


def test_window_is_1995_to_now_plus_skew():
    assert plausible_window(NOW) == (EARLIEST_PLAUSIBLE_S, NOW + MAX_CLOCK_SKEW_S)
    assert EARLIEST_PLAUSIBLE_S == 788_918_400  # 1995-01-01T00:00:00Z


@pytest.mark.parametrize("value, unit, seconds, read_as", [
    (1_700_000_000, "seconds", 1_700_000_000, "seconds"),
    ("1700000000", "seconds", 1_700_000_000, "seconds"),  # a CSV cell
    ("1700000000.0", "seconds", 1_700_000_000, "seconds"),  # a CSV written from a float column
    (1_700_000_120_999, "milliseconds", 1_700_000_120, "milliseconds"),  # floored to the second
    (1_700_000_000, "auto", 1_700_000_000, "seconds"),
    (1_700_000_120_000, "auto", 1_700_000_120, "milliseconds"),
    (EARLIEST_PLAUSIBLE_S, "seconds", EARLIEST_PLAUSIBLE_S, "seconds"),  # the window is inclusive
    (NOW + MAX_CLOCK_SKEW_S, "seconds", NOW + MAX_CLOCK_SKEW_S, "seconds"),
])
def test_plausible_timestamps_are_read_in_their_unit(value, unit, seconds, read_as):
    got = check_timestamp(value, unit, now_s=NOW)
    assert got.ok and (got.seconds, got.unit) == (seconds, read_as)
    assert isinstance(got.seconds, int)


def test_milliseconds_read_as_seconds_are_refused_with_the_fix_named():
    got = check_timestamp(1_700_000_120_000, "seconds", now_s=NOW)
    assert not got.ok and got.seconds is None
    assert "1700000120000 as seconds" in got.reason
    assert "plausible window" in got.reason
    assert "reads as milliseconds (2023-11-14T22:15:20Z)" in got.reason
    assert "timestamp_unit: milliseconds or auto" in got.reason


@pytest.mark.parametrize("value, unit, fragment", [
    (NOW + MAX_CLOCK_SKEW_S + 1, "seconds", "outside the plausible window"),  # ahead of the clock + skew
    (EARLIEST_PLAUSIBLE_S - 1, "seconds", "outside the plausible window"),
    (0, "seconds", "outside the plausible window"),
    (-5, "auto", "neither seconds nor milliseconds"),
    (1_700_000_000, "milliseconds", "reads as seconds"),  # seconds sent where milliseconds are promised
    (1_700_000_000_000_000, "auto", "neither seconds nor milliseconds"),  # microseconds
    (2**63 - 1, "seconds", "outside the plausible window"),  # int64 max: never wraps
    (10**30, "auto", "neither"),  # beyond int64
    (1.5, "seconds", "expected an integer number of seconds"),
    ("abc", "seconds", "expected an integer"),
    (True, "seconds", "expected an integer"),
    (None, "seconds", "expected an integer"),
    (float("nan"), "seconds", "expected an integer"),
])
def test_implausible_timestamps_carry_a_reason(value, unit, fragment):
    got = check_timestamp(value, unit, now_s=NOW)
    assert not got.ok and fragment in got.reason


def test_unknown_unit_is_a_programming_error():
    with pytest.raises(ValueError, match="timestamp_unit"):
        check_timestamp(1_700_000_000, "minutes")


def test_read_timestamps_column_logs_the_auto_decision(caplog):
    with caplog.at_level("INFO", logger="feature_gen.data.contract"):
        col = read_timestamps([1_700_000_000, 1_700_000_060_000, 42], "auto", now_s=NOW, source="inter.csv")
    assert col.seconds.tolist() == [1_700_000_000, 1_700_000_060, 0]
    assert col.bad.tolist() == [2]
    assert col.units == {"seconds": 1, "milliseconds": 1}
    assert "inter.csv: timestamp_unit auto: 1 value(s) read as milliseconds, 1 value(s) read as seconds" in caplog.text


def test_config_offers_timestamp_unit_and_encoding_in_data_and_stream():
    cfg = config_from_dict({"data": {"timestamp_unit": "auto", "encoding": "latin-1"},
                            "stream": {"timestamp_unit": "milliseconds"}}, "x.yaml")
    assert (cfg.data.timestamp_unit, cfg.data.encoding, cfg.stream.timestamp_unit) == ("auto", "latin-1", "milliseconds")
    assert config_from_dict({}, "x").data.timestamp_unit == "seconds"
    with pytest.raises(ConfigError, match="timestamp_unit"):
        config_from_dict({"data": {"timestamp_unit": "minutes"}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown text encoding 'utf-9'"):
        config_from_dict({"data": {"encoding": "utf-9"}}, "x.yaml")


# ---------------------------------------------------------------- case 1 in the stream parser


def _event(ts) -> bytes:
    return json.dumps({"user_id": "u1", "item_id": "3", "timestamp": ts, "event_type": "click"}).encode()


def test_stream_parser_dead_letters_a_millisecond_event_as_a_bad_field():
    assert parse_user_event(_event(1_700_000_060), now_s=NOW).timestamp == 1_700_000_060
    with pytest.raises(InvalidEvent) as exc:
        parse_user_event(_event(1_700_000_120_000), now_s=NOW)
    assert exc.value.reason == "bad_field"
    assert exc.value.detail.startswith("timestamp: 1700000120000 as seconds")
    assert "timestamp_unit" in exc.value.detail


def test_stream_parser_reads_milliseconds_when_configured():
    assert parse_user_event(_event(1_700_000_120_000), timestamp_unit="milliseconds", now_s=NOW).timestamp == 1_700_000_120
    assert parse_user_event(_event(1_700_000_120_000), timestamp_unit="auto", now_s=NOW).timestamp == 1_700_000_120
    assert parse_user_event(_event(1_700_000_060), timestamp_unit="auto", now_s=NOW).timestamp == 1_700_000_060


def test_stream_parser_refuses_events_far_ahead_of_the_clock():
    with pytest.raises(InvalidEvent, match="bad_field: timestamp: .*outside the plausible window"):
        parse_user_event(_event(NOW + MAX_CLOCK_SKEW_S + 60), now_s=NOW)
    with pytest.raises(InvalidEvent, match="bad_field: timestamp: expected an integer"):
        parse_user_event(_event("1700000000"), now_s=NOW)
