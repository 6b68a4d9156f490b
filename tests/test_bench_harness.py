"""benchmarks/harness.py: the waits and the result files every benchmark shares."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.harness import wait_until, write_result


def test_wait_until_returns_once_true_and_names_what_it_waited_for():
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), 5, "the third poll", poll_s=0.001)
    with pytest.raises(TimeoutError, match=r"stream_bench: timed out after 0.05 s waiting for the backlog"):
        wait_until(lambda: False, 0.05, "the backlog", who="stream_bench", poll_s=0.01)


def test_write_result_makes_folders_and_writes_readable_json(tmp_path):
    assert write_result({"x": 1}, None) is None
    path = write_result({"rows": 3, "dtype": np.dtype("float32")}, tmp_path / "a" / "b.json")
    assert json.loads(path.read_text()) == {"rows": 3, "dtype": "float32"}
    assert path.read_text().endswith("}\n")


def test_stream_bench_events_pass_the_input_contract_they_are_measured_through():
    """The paced events once started at 1.8e9 s (2027-01): once the clock passed 2026-11 the contract
    refused them as future events, every one went to the dead letters, and the bench waited 600 s."""
    from benchmarks.stream_bench import BACKLOG_START_TS, PACED_START_TS, _events
    from feature_gen.data.contract import check_timestamp, plausible_window

    lo, hi = plausible_window()
    backlog, paced = _events(50, 20, 1000, seed=0, start_ts=BACKLOG_START_TS), _events(50, 20, 100_000, seed=1, start_ts=PACED_START_TS)
    assert lo <= backlog.timestamp.min() and backlog.timestamp.max() < paced.timestamp.min() and paced.timestamp.max() <= hi
    assert check_timestamp(int(paced.timestamp.max())).reason is None
