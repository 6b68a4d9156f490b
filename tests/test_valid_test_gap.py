"""benchmarks/valid_test_gap.py's pure parts: the terciles, the popularity prior, the per-tercile rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.valid_test_gap import gap_rows, markdown, tercile_of_targets, with_prior
from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import EvalSet


def test_terciles_cut_at_the_quantiles_of_the_targets_counts():
    assert tercile_of_targets(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="no targets"):
        tercile_of_targets(np.array([]))


def test_the_prior_adds_weight_times_log_count_to_the_cosine():
    users, table = torch.randn(3, 4), torch.randn(5, 4)
    counts = np.array([0, 1, 10, 100, 3])
    u, t = with_prior(users, table, counts, 0.05)
    cosine = torch.nn.functional.normalize(users, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    assert torch.allclose(u @ t.T, cosine + 0.05 * torch.as_tensor(np.log1p(counts), dtype=torch.float32), atol=1e-6)


def test_each_tercile_is_ranked_on_its_own_users():
    # 6 users, 15 items (+ padding row 0); user k's vector is its target's row, so it ranks the target first
    table = torch.eye(16)
    targets = np.array([1, 2, 3, 4, 5, 6])
    users = table[targets].clone()
    users[0] = -table[1]  # the rarest target's user ranks it last: its tercile scores 0.5, the others 1
    eval_set = EvalSet(users=np.arange(6), histories=[np.array([7 if k else 6]) for k in range(6)],
                       history_timestamps=[np.array([0])] * 6, targets=targets, target_timestamps=np.zeros(6))
    eval_set.histories[0] = np.array([6])
    counts = np.array([0, 1, 2, 5, 6, 9, 10] + [3] * 9)
    rows = gap_rows({"test": users}, table, {"test": eval_set}, counts, HLLMConfig(), "cosine")["test"]
    assert rows["rare"]["users"] == 2 and rows["rare"]["ndcg@10"] == pytest.approx(0.5)
    assert rows["mid"]["ndcg@10"] == pytest.approx(1.0) and rows["popular"]["ndcg@10"] == pytest.approx(1.0)
    assert rows["ndcg@10"] == pytest.approx(5 / 6)
    assert set(rows) >= {"prior 0.02", "prior 0.05", "prior 0.1"}
    text = markdown({"note": "n", "command": "c", "loadavg": "1.0", "runs": {"toy": {"test": rows, "valid": rows}}})
    assert "| toy | test |" in text and "0.5000 (2)" in text


def test_without_last_input_ranks_the_same_targets_from_other_user_vectors():
    table = torch.eye(8)
    targets = np.array([1, 2, 3])  # one per tercile (counts 1, 2, 3)
    eval_set = EvalSet(users=np.arange(3), histories=[np.array([5, 6])] * 3,
                       history_timestamps=[np.array([0, 1])] * 3, targets=targets, target_timestamps=np.zeros(3))
    counts = np.array([0, 1, 2, 3, 1, 1, 1, 1])
    # with its last input each user points at its target; without it each points at item 4 first
    without = table[[4, 4, 4]] + 0.5 * table[targets]
    rows = gap_rows({"test": table[targets]}, table, {"test": eval_set}, counts, HLLMConfig(), "cosine",
                    users_without_last={"test": without})["test"]
    assert rows["ndcg@10"] == pytest.approx(1.0)
    assert rows["without last input"] == pytest.approx(1 / np.log2(3))  # the target ranked 2nd
    assert "without last input" not in gap_rows({"test": table[targets]}, table, {"test": eval_set}, counts,
                                                HLLMConfig(), "cosine")["test"]


def test_merge_keeps_the_files_runs_and_appends_the_command(tmp_path, monkeypatch):
    import json

    import benchmarks.valid_test_gap as gap

    row = {"ndcg@10": 0.1, "target_log_count": 1.0, **{t: {"users": 1, "ndcg@10": 0.1} for t in gap.TERCILES}}
    monkeypatch.setattr(gap, "run_one", lambda folder: {"folder": folder, "valid": row, "test": row})
    out = tmp_path / "gap.json"
    gap.main(["--run", "a=/runs/a", "--output", str(out)])
    gap.main(["--run", "b=/runs/b", "--output", str(out), "--merge"])
    doc = json.loads(out.read_text())
    assert list(doc["runs"]) == ["a", "b"] and doc["note"] == gap.NOTE
    assert doc["command"].count("then") == 1 and "'a=DIR'" in doc["command"] and "'b=DIR' --merge" in doc["command"]
    gap.main(["--run", "b=/runs/c", "--output", str(out)])  # without --merge the file is rewritten
    assert list(json.loads(out.read_text())["runs"]) == ["b"]
