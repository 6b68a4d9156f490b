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
