"""Tests for feature_gen.evaluation.metrics: full-catalogue Recall@K / NDCG@K with pessimistic ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feature_gen.evaluation.metrics import RankingMetrics, chance_recall, full_ranking_metrics


def _reference_ranks(users, items, targets, seen):
    """Plain-Python reference: count rankable items scoring >= the target, one item at a time."""
    users = np.asarray(users, dtype=np.float64)
    items = np.asarray(items, dtype=np.float64)
    ranks = []
    for u, t, s in zip(users, targets, seen):
        scores = items @ u
        excluded = set(int(x) for x in s) | {0}
        excluded.discard(int(t))
        rank = 0
        for j in range(1, items.shape[0]):
            if j == t or j in excluded:
                continue
            if scores[j] >= scores[t]:
                rank += 1
        ranks.append(rank)
    return np.array(ranks, dtype=np.int64)


# Tiny hand-computed case. Row 0 (padding) has by far the highest score for both users.
ITEMS = np.array(
    [
        [10.0, 10.0],  # 0: padding
        [1.0, 0.0],  # 1
        [0.0, 1.0],  # 2
        [2.0, 0.0],  # 3
        [0.0, 3.0],  # 4
        [1.0, 1.0],  # 5
    ],
    dtype=np.float32,
)
USERS = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
# user 0 scores: 1:1  2:0  3:2  4:0  5:1 ; target 1 (score 1), seen {3}
#   -> rankable others 2,4,5; >= 1: item 5 (tie) -> rank 1 (item 3 would make it 2 if not removed)
# user 1 scores: 1:0  2:1  3:0  4:3  5:1 ; target 2 (score 1), seen {2} (its own target)
#   -> rankable others 1,3,4,5; >= 1: items 4, 5 (tie) -> rank 2
TARGETS = np.array([1, 2])
SEEN = [np.array([3]), np.array([2])]


def test_hand_computed_tiny_case():
    m = full_ranking_metrics(USERS, ITEMS, TARGETS, SEEN, ks=(1, 2, 3))
    assert m.ranks.tolist() == [1, 2]
    assert m.ranks.dtype == np.int64
    assert m.num_users == 2
    inv_log3 = 1.0 / math.log2(3.0)
    expected = {
        "recall@1": 0.0,
        "recall@2": 0.5,
        "recall@3": 1.0,
        "ndcg@1": 0.0,
        "ndcg@2": inv_log3 / 2,
        "ndcg@3": (inv_log3 + 0.5) / 2,
    }
    assert set(m.values) == set(expected)
    for key, val in expected.items():
        assert m.values[key] == pytest.approx(val, abs=1e-12), key


def test_torch_and_numpy_inputs_agree():
    a = full_ranking_metrics(USERS, ITEMS, TARGETS, SEEN, ks=(1, 2, 3))
    b = full_ranking_metrics(
        torch.from_numpy(USERS).double(),
        torch.from_numpy(ITEMS),
        torch.from_numpy(TARGETS),
        [torch.tensor([3]), [2]],
        ks=(1, 2, 3),
    )
    assert a.values == b.values
    np.testing.assert_array_equal(a.ranks, b.ranks)


def test_seen_items_above_target_are_removed():
    # Item 3 scores 2 for user 0, above the target's 1.
    with_seen = full_ranking_metrics(USERS[:1], ITEMS, TARGETS[:1], [np.array([3])], ks=(1,))
    without_seen = full_ranking_metrics(USERS[:1], ITEMS, TARGETS[:1], [np.array([], dtype=np.int64)], ks=(1,))
    assert with_seen.ranks.tolist() == [1]
    assert without_seen.ranks.tolist() == [2]


def test_target_in_seen_stays_rankable():
    # User 0 with its target 1 also in seen, and nothing else: 1 must still be ranked (rank 2: items 3, 5).
    m = full_ranking_metrics(USERS[:1], ITEMS, TARGETS[:1], [np.array([1, 1])], ks=(3,))
    assert m.ranks.tolist() == [2]
    assert m.values["recall@3"] == 1.0
    # A user whose target is its best item, listed in seen: rank 0, perfect.
    m = full_ranking_metrics(np.array([[0.0, 1.0]]), ITEMS, [4], [[4, 2]], ks=(1,))
    assert m.ranks.tolist() == [0]
    assert m.values["recall@1"] == 1.0
    assert m.values["ndcg@1"] == 1.0


def test_padding_row_never_counts():
    items = np.zeros((4, 2), dtype=np.float32)
    items[0] = [100.0, 100.0]  # padding, highest score
    items[1] = [1.0, 0.0]
    items[2] = [0.5, 0.0]
    items[3] = [0.2, 0.0]
    m = full_ranking_metrics(np.array([[1.0, 1.0]]), items, [1], [[]], ks=(1,))
    assert m.ranks.tolist() == [0]
    assert m.values["recall@1"] == 1.0
    # Padding listed in seen (padded histories) changes nothing either.
    m = full_ranking_metrics(np.array([[1.0, 1.0]]), items, [1], [[0, 0, 0]], ks=(1,))
    assert m.ranks.tolist() == [0]


def test_constant_scorer_is_pessimistic():
    num_items, dim = 20, 4
    rng = np.random.default_rng(0)
    items = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    users = np.zeros((3, dim), dtype=np.float32)  # every score is 0
    targets = np.array([1, 5, 20])
    seen = [np.array([2, 3, 4]), np.array([5, 6]), np.array([], dtype=np.int64)]
    m = full_ranking_metrics(users, items, targets, seen, ks=(1, 10))
    # rank = number of other rankable items: 20 - 1 - |seen without the target|
    assert m.ranks.tolist() == [19 - 3, 19 - 1, 19]
    assert m.values["recall@10"] == 0.0
    assert m.values["ndcg@10"] == 0.0


def test_matches_reference_with_ties():
    # Small integer vectors give many exact ties; compare with the plain-Python reference.
    rng = np.random.default_rng(1)
    num_users, num_items, dim = 60, 40, 3
    users = rng.integers(-2, 3, size=(num_users, dim)).astype(np.float32)
    items = rng.integers(-2, 3, size=(num_items + 1, dim)).astype(np.float32)
    targets = rng.integers(1, num_items + 1, size=num_users)
    seen = []
    for t in targets:
        s = rng.choice(np.arange(0, num_items + 1), size=rng.integers(0, 15), replace=True)
        if rng.random() < 0.5:
            s = np.append(s, t)
        seen.append(s)
    m = full_ranking_metrics(users, items, targets, seen, ks=(1, 5, 20), user_batch_size=7)
    expected = _reference_ranks(users, items, targets, seen)
    np.testing.assert_array_equal(m.ranks, expected)
    for k in (1, 5, 20):
        assert m.values[f"recall@{k}"] == pytest.approx(np.mean(expected < k))
        ndcg = np.mean([1.0 / math.log2(r + 2) if r < k else 0.0 for r in expected])
        assert m.values[f"ndcg@{k}"] == pytest.approx(ndcg)


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(2)
    num_users, num_items, dim = 137, 300, 8
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    targets = rng.integers(1, num_items + 1, size=num_users)
    seen = [rng.integers(0, num_items + 1, size=rng.integers(0, 30)) for _ in range(num_users)]
    results = [
        full_ranking_metrics(users, items, targets, seen, user_batch_size=bs) for bs in (1, 7, 64, 1024)
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(r.ranks, results[0].ranks)
        assert r.values == results[0].values


def test_padded_2d_seen_equals_ragged_seen():
    rng = np.random.default_rng(3)
    num_users, num_items, dim = 20, 50, 4
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    targets = rng.integers(1, num_items + 1, size=num_users)
    ragged = [rng.integers(1, num_items + 1, size=rng.integers(0, 10)) for _ in range(num_users)]
    padded = np.zeros((num_users, 10), dtype=np.int64)
    for i, s in enumerate(ragged):
        padded[i, : len(s)] = s
    a = full_ranking_metrics(users, items, targets, ragged, user_batch_size=6)
    b = full_ranking_metrics(users, items, targets, padded, user_batch_size=6)
    np.testing.assert_array_equal(a.ranks, b.ranks)


def test_random_scorer_matches_chance():
    rng = np.random.default_rng(4)
    num_users, num_items, dim = 2000, 1000, 16
    users = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items + 1, dim)).astype(np.float32)
    targets = rng.integers(1, num_items + 1, size=num_users)
    seen, seen_sizes = [], []
    for t in targets:
        # Large histories, so a harness that forgot to remove seen items would be far off chance.
        s = rng.choice(np.arange(1, num_items + 1), size=rng.integers(0, 700), replace=False)
        seen_sizes.append(int(np.sum(s != t)))
        if rng.random() < 0.3 and t not in s:
            s = np.append(s, t)
        seen.append(s)
    m = full_ranking_metrics(users, items, targets, seen, ks=(10, 50, 200))
    for k in (10, 50, 200):
        p = chance_recall(k, num_items, seen_sizes)
        # per-user Bernoulli variances are at most p_i(1-p_i); 5 sigma on the mean
        tol = 5 * math.sqrt(max(p * (1 - p), 1e-6) / num_users)
        assert abs(m.values[f"recall@{k}"] - p) < tol, (k, m.values[f"recall@{k}"], p, tol)
    # chance itself must be well above the no-seen-removal value for this setup
    assert chance_recall(200, num_items, seen_sizes) > 0.3
    assert chance_recall(200, num_items, [0]) == pytest.approx(0.2)


def test_chance_recall_formula():
    assert chance_recall(10, 100, [0, 50, 95]) == pytest.approx((10 / 100 + 10 / 50 + 1.0) / 3)
    assert chance_recall(1, 1, 0) == 1.0
    with pytest.raises(ValueError, match="seen_sizes"):
        chance_recall(10, 100, [100])
    with pytest.raises(ValueError, match="k"):
        chance_recall(0, 100, [1])


def test_result_object_helpers():
    m = full_ranking_metrics(USERS, ITEMS, TARGETS, SEEN, ks=(1, 2, 3))
    assert isinstance(m, RankingMetrics)
    d = m.as_dict()
    assert d["num_users"] == 2
    assert d["recall@2"] == 0.5
    table = m.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "@1", "@2", "@3"]
    assert lines[1].split()[0] == "recall" and lines[2].split()[0] == "ndcg"
    assert "0.5000" in lines[1]
    assert len(lines[0]) == len(lines[1]) == len(lines[2])  # aligned
    assert "users: 2" in table
    # default ks
    m = full_ranking_metrics(USERS, ITEMS, TARGETS, SEEN)
    assert list(m.values) == ["recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(user_vectors=np.zeros(2, dtype=np.float32)), r"user_vectors.*\[U, D\]"),
        (dict(user_vectors=np.zeros((0, 2), dtype=np.float32), targets=[], seen=[]), "user_vectors"),
        (dict(item_vectors=np.zeros((6, 3), dtype=np.float32)), r"item_vectors.*D=2"),
        (dict(item_vectors=np.zeros((1, 2), dtype=np.float32)), r"item_vectors.*N\+1"),
        (dict(item_vectors=np.zeros((6, 2, 1), dtype=np.float32)), "item_vectors"),
        (dict(item_vectors=np.full((6, 2), np.nan, dtype=np.float32)), "item_vectors.*NaN"),
        (dict(targets=np.array([1, 2, 3])), r"targets.*\[U\]=\[2\]"),
        (dict(targets=np.array([0, 2])), r"targets.*1\.\.N=1\.\.5"),
        (dict(targets=np.array([1, 6])), r"targets.*1\.\.N"),
        (dict(targets=np.array([1.0, 2.0])), "targets.*dtype"),
        (dict(targets=np.array([[1, 2]])), "targets"),
        (dict(seen=[np.array([3])]), "seen.*length U=2"),
        (dict(seen=[np.array([3]), np.array([7])]), r"seen.*0\.\.N"),
        (dict(seen=[np.array([3]), np.array([1.5])]), r"seen\[1\].*integer"),
        (dict(seen=[np.array([3]), np.array([[1, 2], [3, 4]])]), r"seen\[1\].*1-D"),
        (dict(seen=np.zeros((3, 4), dtype=np.int64)), "seen.*2"),
        (dict(ks=(0,)), "ks"),
        (dict(ks=()), "ks"),
        (dict(user_batch_size=0), "user_batch_size"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    args = dict(user_vectors=USERS, item_vectors=ITEMS, targets=TARGETS, seen=SEEN)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        full_ranking_metrics(**args)
