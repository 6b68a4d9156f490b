"""Issue 20: a batch job rejects, never dies, on a bad row; input it cannot read at all exits 2 with one
line naming the file and the column. The jobs' `main` runs in this process on a real local Spark."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from feature_gen.store.offline_store import USER_RECENT_ITEMS, USER_REJECTS, read_version

pytestmark = pytest.mark.integration
YEAR_10000 = 253_402_300_800


@pytest.fixture(scope="module")
def spark_env():
    # the Python workers must run this interpreter (torch, the project), as spark-submit's would
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _items(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [str(i) for i in range(n)], "title": [f"film {i}" for i in range(n)],
                         "tags": ["drama"] * n, "description": [f"about {i}" for i in range(n)]})


def _job(script: str, tiny_bundle, tmp_path, flag: str, path) -> int:
    from importlib import import_module

    main = import_module(f"spark_jobs.{script}").main
    return main(["--bundle", str(tiny_bundle), flag, str(path), "--output", str(tmp_path / "offline"),
                 "--master", "local[1]", "--partitions", "1"])


def test_unreadable_input_exits_2_with_one_line_naming_file_and_column(spark_env, tiny_bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_parquet = tmp_path / "items.parquet"
    not_parquet.write_text("item_id,title\n1,Heat\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _items(3).to_parquet(mixed / "part-a.parquet")
    _items(3).assign(item_id=[10, 11, 12]).to_parquet(mixed / "part-b.parquet")  # int64 ids next to strings

    expected = {empty: ["UNABLE_TO_INFER_SCHEMA", "empty folder"],
                not_parquet: ["items.parquet", "footer"],
                mixed: ["part-b.parquet", "[item_id]", "INT64"]}
    for path, words in expected.items():
        assert _job("item_embed", tiny_bundle, tmp_path, "--items", path) == 2, path
        # the job's own words, beside the progress reporter's log lines (which go to stderr as well)
        err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if " hllm.progress: " not in line)
        assert err.count("\n") == 0 and err.startswith(f"item_embed: {path}: cannot read the input"), err
        for word in words:
            assert word in err, (word, err)


T0 = 1_700_000_000  # inside the contract's plausible window


def test_out_of_range_timestamps_are_rejected_and_the_rest_embedded(spark_env, tiny_bundle, tmp_path, capsys):
    """A timestamp of 2**63 - 1 (which the stream used to accept) made user_embed exit 1 with
    DATETIME_OVERFLOW and write nothing; a year-10000 one became a user's newest event."""
    _items().to_parquet(tmp_path / "items.parquet")
    assert _job("item_embed", tiny_bundle, tmp_path, "--items", tmp_path / "items.parquet") == 0
    events = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c"],
        "item_id": ["1", "2", "3", "1", "4", "5"],
        "timestamp": np.array([T0 + 100, T0 + 200, 2**63 - 1, T0 + 300, YEAR_10000, -5], dtype=np.int64),
    })
    events.to_parquet(tmp_path / "events.parquet")
    capsys.readouterr()
    assert _job("user_embed", tiny_bundle, tmp_path, "--interactions", tmp_path / "events.parquet") == 0
    assert "3 interactions rejected {'timestamp_out_of_range': 3}" in capsys.readouterr().out

    from feature_gen.model.bundle import read_manifest

    version = read_manifest(tiny_bundle)["version"]
    recent = read_version(tmp_path / "offline", USER_RECENT_ITEMS, version).set_index("user_id")
    assert sorted(recent.index) == ["a", "b"]  # c's only event was rejected
    assert recent.loc["a", "last_event_ts"] == T0 + 200 and recent.loc["b", "last_event_ts"] == T0 + 300
    rejects = read_version(tmp_path / "offline", USER_REJECTS, version)
    assert set(rejects.reason) == {"timestamp_out_of_range"}
    originals = sorted(json.loads(row)["timestamp"] for row in rejects.row_json)  # the input row, exactly
    assert originals == sorted([2**63 - 1, YEAR_10000, -5])
