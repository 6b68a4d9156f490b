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


def _trainer_run(folder: Path, seed: int, ndcg: float, chance: dict | None = None, users: int = 0) -> str:
    folder.mkdir(parents=True)
    test = dict(METRICS, **{"ndcg@10": ndcg})
    result = {"seed": seed, "best_epoch": 1, "test": test, "valid": METRICS, "history": [{"epoch": 1, "step": 2}]}
    if chance is not None:
        result |= {"chance": {"valid": chance, "test": chance}, "eval_users": {"valid": 9, "test": users}}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"step": i, "epoch": 0, "loss": 1.0, "seconds": 1.0, "positions": 10}) for i in (1, 2)) + "\n")
    return str(folder)


def test_merge_adds_a_seed_to_a_row_whose_other_seeds_are_gone(results):
    first = _collect("--run", f"m={_trainer_run(results / 'r0', 0, 0.10)},{_trainer_run(results / 'r1', 1, 0.20)}",
                     "--note", "kept note")
    assert first["runs"]["m"]["seeds"] == [0, 1]
    for seed in (0, 1):  # a new machine: the earlier run folders are gone
        for f in (results / f"r{seed}").iterdir():
            f.unlink()

    merged = _collect("--merge", "--run", f"m={_trainer_run(results / 'r2', 2, 0.30)}")
    assert merged["runs"]["m"]["seeds"] == [0, 1, 2]
    assert merged["runs"]["m"]["mean"]["ndcg@10"] == pytest.approx(0.20)
    assert merged["note"] == "kept note"  # no --note: the file's note stays

    again = _collect("--merge", "--run", f"m={_trainer_run(results / 'r2b', 2, 0.60)}")  # seed 2 rerun
    assert again["runs"]["m"]["seeds"] == [0, 1, 2]
    assert again["runs"]["m"]["mean"]["ndcg@10"] == pytest.approx(0.30)
    assert "0.3000" in (results / "BENCHMARKS.md").read_text()


def test_merge_replaces_a_peer_evaluation_in_mid_run_by_a_later_one_then_by_the_final_result(results):
    early = _collect("--peer-partial", str(_peer_result(results / "e.json", 1, 0.11)))
    assert list(early["runs"]) == ["recbole-sasrec (peer, seed 1, best of epochs 0-7, still training)"]
    later = _peer_result(results / "l.json", 1, 0.12)
    later.write_text(later.read_text().replace('"epochs_run": 8', '"epochs_run": 20'))
    assert list(_collect("--merge", "--peer-partial", str(later))["runs"]) == [
        "recbole-sasrec (peer, seed 1, best of epochs 0-19, still training)"]

    finished = results / "peer"
    finished.mkdir()
    _peer_result(finished / "d-seed1.json", 1, 0.13)
    final = _collect("--merge", "--peer", str(finished))
    assert list(final["runs"]) == ["recbole-sasrec (peer)"]
    assert final["runs"]["recbole-sasrec (peer)"]["mean"]["ndcg@10"] == pytest.approx(0.13)


def test_without_merge_the_file_holds_only_what_was_collected(results):
    _collect("--peer-partial", str(_peer_result(results / "a.json", 1, 0.11)))
    fresh = _collect("--peer-partial", str(_peer_result(results / "b.json", 2, 0.09)))
    assert [r["seeds"] for r in fresh["runs"].values()] == [[2]]


def test_row_from_quotes_another_files_row_under_a_new_name(results):
    _collect("--run", f"m={_trainer_run(results / 'r0', 0, 0.10)},{_trainer_run(results / 'r1', 1, 0.30)}")
    render_quality.main(["collect", "--suite", "warm", "--dataset", "d", "--command", "python -m trainer.train",
                         "--row-from", "s-d:m=baseline", "--run", f"new={_trainer_run(results / 'r2', 0, 0.5)}"])
    warm = json.loads((render_quality.RESULTS / "quality-warm-d.json").read_text())
    assert list(warm["runs"]) == ["baseline", "new"]  # quoted rows (the baselines) first
    assert warm["runs"]["baseline"]["seeds"] == [0, 1]
    assert warm["runs"]["baseline"]["mean"]["ndcg@10"] == pytest.approx(0.20)
    assert warm["runs"]["baseline"]["from"] == "quality-s-d.json: m"
    assert "baseline <- quality-s-d.json: m" in render_quality.DOC.read_text()  # the table says where it came from
    with pytest.raises(SystemExit, match=r"no row 'typo' in quality-s-d.json \(rows: m\)"):
        _collect("--row-from", "s-d:typo")
    with pytest.raises(SystemExit, match=r"quality-nope.json"):
        _collect("--row-from", "nope:m")


def test_a_command_a_reader_cannot_run_is_refused_at_collection(results):
    with pytest.raises(SystemExit, match="start with the python command"):
        render_quality.main(["collect", "--suite", "s", "--dataset", "d", "--command", "hllm quality --suite warm"])
    assert not (render_quality.RESULTS / "quality-s-d.json").exists()


def test_a_row_carries_and_prints_the_chance_of_its_own_test_users(results):
    """Cold-item splits change their test users with the seed: the table reads chance from each run."""
    runs = ",".join([_trainer_run(results / "c0", 0, 0.1, {"recall@10": 0.01, "recall@50": 0.04}, users=133),
                     _trainer_run(results / "c1", 1, 0.1, {"recall@10": 0.03, "recall@50": 0.06}, users=114)])
    doc = _collect("--run", f"cold={runs}", "--run", f"old={_trainer_run(results / 'o0', 0, 0.1)}")
    row = doc["runs"]["cold"]
    assert row["chance"] == pytest.approx({"recall@10": 0.02, "recall@50": 0.05})
    assert row["test_users"] == [133, 114]
    assert "chance" not in doc["runs"]["old"]  # a run written before result.json carried chance
    text = (results / "BENCHMARKS.md").read_text()
    # METRICS are 0.1 everywhere: recall@10 is 5 x its chance 0.02, recall@50 2 x 0.05
    assert "cold: recall@10 0.0200 (5.0 x); recall@50 0.0500 (2.0 x); test users 133 / 114" in text
    assert "| old:" not in text and "): old:" not in text
