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
