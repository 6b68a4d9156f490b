"""`render_quality collect` writes one JSON per suite and data set; `--merge` adds rows to a file whose
earlier run folders are gone (a new machine each session) without dropping its other rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import render_quality

METRICS = {m: 0.1 for m in render_quality.METRICS}


def _peer_result(path: Path, seed: int, ndcg: float) -> Path:
    test = dict(METRICS, **{"ndcg@10": ndcg})
    path.write_text(json.dumps({
        "seed": seed, "best_epoch": 7, "test": test, "valid": METRICS, "positions_per_s": 250.0,
        "train_seconds": 100.0, "train_seconds_to_best": 80.0, "command": "python benchmarks/peer/x.py",
        "epochs_run": 8, "stopped_early": False}))
    return path


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(render_quality, "RESULTS", tmp_path / "results")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n{render_quality.BEGIN}\n{render_quality.END}\n")
    monkeypatch.setattr(render_quality, "DOC", doc)
    return tmp_path


def _collect(*extra: str) -> dict:
    render_quality.main(["collect", "--suite", "s", "--dataset", "d", "--command", "python -m trainer.train", *extra])
    return json.loads((render_quality.RESULTS / "quality-s-d.json").read_text())


def test_merge_keeps_earlier_rows_and_replaces_a_row_collected_again(results):
    first = _collect("--peer-partial", str(_peer_result(results / "a.json", 1, 0.11)), "--note", "kept note")
    assert list(first["runs"]) == ["recbole-sasrec (peer, seed 1, best of epochs 0-7, still training)"]

    again = _collect("--merge", "--peer-partial", str(_peer_result(results / "b.json", 2, 0.09)))
    assert [r["seeds"] for r in again["runs"].values()] == [[1], [2]]
    assert again["note"] == "kept note"  # no --note: the file's note stays

    replaced = _collect("--merge", "--peer-partial", str(_peer_result(results / "c.json", 2, 0.12)))
    assert [r["mean"]["ndcg@10"] for r in replaced["runs"].values()] == [0.11, 0.12]
    assert "0.1200" in (results / "BENCHMARKS.md").read_text()


def test_without_merge_the_file_holds_only_what_was_collected(results):
    _collect("--peer-partial", str(_peer_result(results / "a.json", 1, 0.11)))
    fresh = _collect("--peer-partial", str(_peer_result(results / "b.json", 2, 0.09)))
    assert [r["seeds"] for r in fresh["runs"].values()] == [[2]]
