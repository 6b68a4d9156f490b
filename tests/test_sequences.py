"""Sequences (feature_gen/data/sequences.py): id mapping, time order with file-order tie-break,
leave-one-out, padding, training windows and the negative sampler."""

import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.config import DataConfig, ItemTextConfig
from feature_gen.data.contract import fingerprint
from feature_gen.data.sequences import (
    PAD,
    InteractionData,
    UniformNegativeSampler,
    build_interaction_data,
    leave_one_out,
    load_interaction_data,
    pad_sequences,
    training_windows,
)
from feature_gen.model.item_text import REJECT_NO_TEXT

TEXT_CFG = ItemTextConfig()
T0 = 1_700_000_000  # a plausible event time (the contract refuses anything before 1995)


def _reference_sequences(items, interactions, min_len):
    """Independent expectation: Python's sorted() is stable, keyed on (timestamp, file position)."""
    ext_to_int = {ext: i + 1 for i, ext in enumerate(items["item_id"].tolist())}
    per_user, order = {}, []
    for pos, (u, it, ts) in enumerate(
        zip(interactions["user_id"].tolist(), interactions["item_id"].tolist(), interactions["timestamp"].tolist())
    ):
        if it not in ext_to_int:
            continue
        if u not in per_user:
            per_user[u] = []
            order.append(u)
        per_user[u].append((ts, pos, ext_to_int[it]))
    users, seqs, tss = [], [], []
    for u in order:
        events = sorted(per_user[u], key=lambda e: (e[0], e[1]))
        if len(events) < min_len:
            continue
        users.append(u)
        seqs.append([e[2] for e in events])
        tss.append([e[0] for e in events])
    return users, seqs, tss


# ---------------------------------------------------------------- build_interaction_data


def test_items_map_to_one_based_ids_in_item_table_order():
    items = pd.DataFrame({"item_id": [30, 10, 20], "title": ["c", "a", "b"]})
    inter = pd.DataFrame({"user_id": [7, 7, 7], "item_id": [10, 20, 30], "timestamp": [1, 2, 3]})
    data = build_interaction_data(items, inter, TEXT_CFG)
    assert data.item_index() == {30: 1, 10: 2, 20: 3}
    assert data.num_items == 3
    assert data.sequences[0].tolist() == [2, 3, 1]
    assert data.sequences[0].dtype == np.int64
    assert data.timestamps[0].dtype == np.int64
    assert PAD == 0 and PAD not in data.sequences[0]


def test_min_user_interactions_keeps_long_users_and_counts_dropped():
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": list("abcd")})
    rows = [  # user 5: 2 events (dropped), user 6: 3 events (kept), user 8: 4 events, user 9: 1 event
        (5, 1, 10), (6, 1, 11), (6, 2, 12), (8, 1, 1), (5, 2, 13), (6, 3, 14),
        (8, 2, 2), (8, 3, 3), (9, 4, 4), (8, 4, 5),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    data = build_interaction_data(items, inter, TEXT_CFG, min_user_interactions=3)
    assert data.user_ids.tolist() == [6, 8]  # order of first appearance in the file
    assert data.num_users == 2
    assert [s.tolist() for s in data.sequences] == [[1, 2, 3], [1, 2, 3, 4]]
    assert data.dropped_interactions == 3  # 2 of user 5, 1 of user 9
    data4 = build_interaction_data(items, inter, TEXT_CFG, min_user_interactions=4)
    assert data4.user_ids.tolist() == [8]
    assert data4.dropped_interactions == 6


def test_users_numbered_by_first_appearance_in_file_not_by_time():
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": list("abc")})
    # user 2 appears first in the file but user 1 has the earliest event
    inter = pd.DataFrame(
        {"user_id": [2, 1, 2, 1, 2, 1], "item_id": [1, 1, 2, 2, 3, 3], "timestamp": [50, 1, 60, 2, 70, 3]}
    )
    data = build_interaction_data(items, inter, TEXT_CFG)
    assert data.user_ids.tolist() == [2, 1]


def test_events_are_time_ordered_with_file_order_tie_break():
    items = pd.DataFrame({"item_id": list(range(1, 11)), "title": [f"t{i}" for i in range(1, 11)]})
    rows = [
        (1, 5, 300), (1, 3, 100), (2, 9, 100), (1, 7, 100), (1, 1, 200),
        (2, 2, 100), (1, 4, 100), (2, 8, 50), (1, 2, 300), (2, 1, 100),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    data = build_interaction_data(items, inter, TEXT_CFG)
    assert data.user_ids.tolist() == [1, 2]
    assert data.sequences[0].tolist() == [3, 7, 4, 1, 5, 2]
    assert data.timestamps[0].tolist() == [100, 100, 100, 200, 300, 300]
    assert data.sequences[1].tolist() == [8, 9, 2, 1]
    assert data.timestamps[1].tolist() == [50, 100, 100, 100]


def test_many_identical_timestamps_keep_file_order():
    # 200 events of one user with the same timestamp, in an order no sort key other than file
    # position recovers (a non-stable sort such as quicksort scrambles a run this long)
    n = 200
    rng = np.random.default_rng(0)
    file_items = rng.permutation(n) + 1
    items = pd.DataFrame({"item_id": np.arange(1, n + 1), "title": [f"t{i}" for i in range(n)]})
    ts = np.full(n, 1_700_000_000, dtype=np.int64)
    ts[::7] = 1_600_000_000  # some earlier events in between
    inter = pd.DataFrame({"user_id": np.zeros(n, dtype=np.int64), "item_id": file_items, "timestamp": ts})
    data = build_interaction_data(items, inter, TEXT_CFG)
    early = file_items[ts == 1_600_000_000].tolist()
    late = file_items[ts == 1_700_000_000].tolist()
    assert data.sequences[0].tolist() == early + late
    assert data.timestamps[0].tolist() == sorted(ts.tolist())


def test_randomised_ties_match_stable_reference():
    rng = np.random.default_rng(1)
    n_items, n_rows = 40, 3000
    items = pd.DataFrame({"item_id": np.arange(100, 100 + n_items), "title": [f"t{i}" for i in range(n_items)]})
    inter = pd.DataFrame(
        {
            "user_id": rng.integers(0, 25, n_rows),
            "item_id": rng.integers(100, 100 + n_items, n_rows),
            "timestamp": rng.integers(0, 4, n_rows) * 1_000_000_000 + 1_600_000_000,  # heavy ties
        }
    )
    data = build_interaction_data(items, inter, TEXT_CFG, min_user_interactions=3)
    users, seqs, tss = _reference_sequences(items, inter, 3)
    assert data.user_ids.tolist() == users
    assert [s.tolist() for s in data.sequences] == seqs
    assert [t.tolist() for t in data.timestamps] == tss
    assert data.dropped_interactions == n_rows - sum(len(s) for s in seqs)


def test_interactions_on_rejected_items_are_dropped_and_counted():
    items = pd.DataFrame(
        {"item_id": [1, 2, 3, 4], "title": ["a", None, "c", None], "tags": [None, None, None, ["Drama"]]}
    )
    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 2],
            "item_id": [1, 2, 3, 4, 2, 2, 2, 1],
            "timestamp": [1, 2, 3, 4, 5, 1, 2, 3],
        }
    )
    data = build_interaction_data(items, inter, TEXT_CFG)
    # item 2 has no text: rejected; items 1, 3, 4 renumbered 1, 2, 3
    assert data.items["item_id"].tolist() == [1, 3, 4]
    assert data.item_index() == {1: 1, 3: 2, 4: 3}
    assert data.rejects.rows.to_dict("records") == [{"item_id": 2, "reason": REJECT_NO_TEXT}]
    assert data.user_ids.tolist() == [1]
    assert data.sequences[0].tolist() == [1, 2, 3]
    assert data.timestamps[0].tolist() == [1, 3, 4]
    # 4 interactions on item 2, plus user 2's one remaining event (too short)
    assert data.dropped_interactions == 5
    assert data.fingerprint == fingerprint(items, inter)


# ---------------------------------------------------------------- leave_one_out


def _data(seqs, tss=None):
    tss = tss or [[10 * (i + 1) for i in range(len(s))] for s in seqs]
    return InteractionData(
        items=pd.DataFrame({"item_id": range(1, 11), "title": ["t"] * 10}),
        user_ids=np.arange(len(seqs)),
        sequences=[np.asarray(s, dtype=np.int64) for s in seqs],
        timestamps=[np.asarray(t, dtype=np.int64) for t in tss],
        rejects=None,
        dropped_interactions=0,
        fingerprint="x",
    )


def test_leave_one_out_split():
    data = _data([[5, 3, 8, 1, 9], [2, 4, 6]], [[1, 2, 3, 4, 5], [7, 8, 9]])
    split = leave_one_out(data)
    assert [s.tolist() for s in split.train] == [[5, 3, 8], [2]]
    assert [t.tolist() for t in split.train_timestamps] == [[1, 2, 3], [7]]
    assert split.valid.targets.tolist() == [1, 4]
    assert split.valid.target_timestamps.tolist() == [4, 8]
    assert [h.tolist() for h in split.valid.histories] == [[5, 3, 8], [2]]
    assert [h.tolist() for h in split.valid.history_timestamps] == [[1, 2, 3], [7]]
    assert split.test.targets.tolist() == [9, 6]
    assert split.test.target_timestamps.tolist() == [5, 9]
    assert [h.tolist() for h in split.test.histories] == [[5, 3, 8, 1], [2, 4]]
    assert [h.tolist() for h in split.test.history_timestamps] == [[1, 2, 3, 4], [7, 8]]
    assert split.valid.users.tolist() == [0, 1] and split.test.users.tolist() == [0, 1]
    assert len(split.valid) == len(split.test) == 2
    assert split.test.targets.dtype == np.int64
    # test history = train + valid target; valid history = train
    for u in range(2):
        assert split.test.histories[u].tolist() == split.train[u].tolist() + [split.valid.targets[u]]
        assert split.valid.histories[u].tolist() == split.train[u].tolist()


def test_leave_one_out_needs_three_events_per_user():
    with pytest.raises(ValueError, match="at least 3"):
        leave_one_out(_data([[1, 2, 3], [4, 5]]))


# ---------------------------------------------------------------- pad_sequences


def test_pad_sequences_left():
    seqs = [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8]), np.array([], dtype=np.int64)]
    tss = [np.array([10, 20, 30, 40, 50, 60]), np.array([70, 80]), np.array([], dtype=np.int64)]
    b = pad_sequences(seqs, tss, max_len=4)  # left is the default
    assert b.item_ids.tolist() == [[3, 4, 5, 6], [0, 0, 7, 8], [0, 0, 0, 0]]
    assert b.timestamps.tolist() == [[30, 40, 50, 60], [0, 0, 70, 80], [0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert b.item_ids.dtype == b.timestamps.dtype == b.attention_mask.dtype == torch.int64
    # the most recent item sits in the last column
    assert b.item_ids[:2, -1].tolist() == [6, 8]


def test_pad_sequences_right():
    seqs = [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8])]
    tss = [np.array([10, 20, 30, 40, 50, 60]), np.array([70, 80])]
    b = pad_sequences(seqs, tss, max_len=4, padding_side="right")
    assert b.item_ids.tolist() == [[3, 4, 5, 6], [7, 8, 0, 0]]
    assert b.timestamps.tolist() == [[30, 40, 50, 60], [70, 80, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pad_sequences_large_timestamps_exact_and_none():
    ts = np.array([1_700_000_001, 1_700_000_063], dtype=np.int64)
    b = pad_sequences([np.array([1, 2])], [ts], max_len=3)
    assert b.timestamps.tolist() == [[0, 1_700_000_001, 1_700_000_063]]
    nb = pad_sequences([np.array([1, 2])], None, max_len=3)
    assert nb.item_ids.tolist() == [[0, 1, 2]]
    assert nb.timestamps.tolist() == [[0, 0, 0]]
    assert nb.attention_mask.tolist() == [[0, 1, 1]]


def test_pad_sequences_exact_length_is_not_padded():
    b = pad_sequences([np.array([4, 5, 6])], [np.array([1, 2, 3])], max_len=3)
    assert b.item_ids.tolist() == [[4, 5, 6]] and b.attention_mask.tolist() == [[1, 1, 1]]


# ---------------------------------------------------------------- training_windows


def test_training_windows_shift_by_one_and_keep_the_latest():
    seqs = [np.arange(1, 11), np.array([21, 22, 23]), np.array([31])]
    tss = [np.arange(101, 111), np.array([201, 202, 203]), np.array([301])]
    tb = training_windows(seqs, tss, max_seq_len=4)
    # long user: last 5 items 6..10 -> inputs 6..9, targets 7..10
    assert tb.inputs.item_ids.tolist() == [[6, 7, 8, 9], [0, 0, 21, 22], [0, 0, 0, 0]]
    assert tb.targets.tolist() == [[7, 8, 9, 10], [0, 0, 22, 23], [0, 0, 0, 0]]
    assert tb.inputs.timestamps.tolist() == [[106, 107, 108, 109], [0, 0, 201, 202], [0, 0, 0, 0]]
    assert tb.inputs.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert tb.targets.dtype == torch.int64


def test_training_windows_target_is_next_item_everywhere():
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 50, n) for n in (2, 5, 9, 17)]
    tss = [np.sort(rng.integers(0, 10**9, len(s))) for s in seqs]
    L = 6
    tb = training_windows(seqs, tss, max_seq_len=L)
    for u, s in enumerate(seqs):
        w = s[-(L + 1):]
        n = len(w) - 1
        assert tb.inputs.item_ids[u, L - n:].tolist() == w[:-1].tolist()
        assert tb.targets[u, L - n:].tolist() == w[1:].tolist()
        assert tb.inputs.item_ids[u, : L - n].tolist() == [0] * (L - n)
        assert tb.targets[u, : L - n].tolist() == [0] * (L - n)
        assert tb.inputs.timestamps[u, L - n:].tolist() == tss[u][-(L + 1):][:-1].tolist()
        # target at position j is the input at position j + 1
        valid = tb.inputs.attention_mask[u].bool()
        assert torch.equal(tb.targets[u, valid][:-1], tb.inputs.item_ids[u, valid][1:])


# ---------------------------------------------------------------- UniformNegativeSampler


def test_sampler_ids_in_catalogue_range():
    for n in (2, 3, 50):
        draws = UniformNegativeSampler(n, seed=0).sample(5000)
        assert draws.dtype == torch.int64
        assert int(draws.min()) >= 1 and int(draws.max()) <= n
        assert set(draws.tolist()) == set(range(1, n + 1))  # every item reachable, 0 never


def test_sampler_reproducible_with_seed():
    a = UniformNegativeSampler(100, seed=7)
    b = UniformNegativeSampler(100, seed=7)
    ex = torch.tensor([1, 2, 3])
    assert torch.equal(a.sample(64), b.sample(64))
    assert torch.equal(a.sample(64, exclude=ex), b.sample(64, exclude=ex))
    assert not torch.equal(UniformNegativeSampler(100, seed=8).sample(64), UniformNegativeSampler(100, seed=7).sample(64))


def test_sampler_needs_two_items():
    for n in (0, 1):
        with pytest.raises(ValueError, match="at least 2 items"):
            UniformNegativeSampler(n)


def test_sampler_avoids_a_few_excluded_ids():
    draws = UniformNegativeSampler(10, seed=0).sample(2000, exclude=torch.tensor([[0, 3, 4], [5, 0, 0]]))
    assert int(draws.min()) >= 1 and int(draws.max()) <= 10
    assert not set(draws.tolist()) & {3, 4, 5}
    assert set(draws.tolist()) == {1, 2, 6, 7, 8, 9, 10}


def test_sampler_exclude_all_but_three_draws_only_those_three():
    # Heavy exclusion must still be exact: only the three allowed ids can be drawn.
    n, allowed = 50, {4, 17, 33}
    exclude = torch.tensor([i for i in range(1, n + 1) if i not in allowed])
    draws = UniformNegativeSampler(n, seed=0).sample(2000, exclude=exclude)
    assert set(draws.tolist()) == allowed


def test_sampler_everything_excluded_still_returns_valid_ids():
    draws = UniformNegativeSampler(4, seed=0).sample(100, exclude=torch.arange(0, 5))
    assert len(draws) == 100
    assert int(draws.min()) >= 1 and int(draws.max()) <= 4


def test_sampler_ignores_out_of_range_exclusions():
    draws = UniformNegativeSampler(5, seed=0).sample(500, exclude=torch.tensor([0, 6, 100, -1]))
    assert set(draws.tolist()) == {1, 2, 3, 4, 5}


# ---------------------------------------------------------------- load_interaction_data


def test_load_interaction_data_from_files(tmp_path):
    items_path = tmp_path / "items.csv"
    inter_path = tmp_path / "inter.parquet"
    pd.DataFrame(
        {
            "item_id": [100, 200, 300, 400],
            "title": ["Heat", None, "Fargo", "Alien"],
            "tags": ["Crime|Drama", None, None, None],
        }
    ).to_csv(items_path, index=False)
    inter = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u1", "u2", "u1", "u3", "u2", "u3", "u2"],
            "item_id": [100, 100, 300, 400, 300, 200, 100, 400, 300, 100],
            "timestamp": [T0 + t for t in [5.0, 1.0, 5.0, 3.0, 1.0, 9.0, 1.0, 0.0, 2.0, 1.0]],
            "rating": [1.0] * 10,
        }
    )
    inter.to_parquet(inter_path)
    cfg = DataConfig(source="files", items_path=str(items_path), interactions_path=str(inter_path))
    data = load_interaction_data(cfg, TEXT_CFG)
    assert data.items["item_id"].tolist() == ["100", "300", "400"]  # ids are strings end to end
    assert data.rejects.rows.to_dict("records") == [{"item_id": "200", "reason": REJECT_NO_TEXT}]
    assert data.user_ids.tolist() == ["u1", "u2"]  # u3 has only 2 events
    # u1: 400@3, 100@5, 300@5 (file order among ties); u2: 400@0, 100@1, 300@1, 100@1
    assert [s.tolist() for s in data.sequences] == [[3, 1, 2], [3, 1, 2, 1]]
    assert [(t - T0).tolist() for t in data.timestamps] == [[3, 5, 5], [0, 1, 1, 1]]
    assert all(t.dtype == np.int64 for t in data.timestamps)
    assert data.dropped_interactions == 3  # one on item 200, two of u3
    split = leave_one_out(data)
    assert split.test.targets.tolist() == [2, 1]
    assert split.valid.targets.tolist() == [1, 2]


def test_load_interaction_data_min_user_interactions(tmp_path):
    items_path = tmp_path / "items.parquet"
    inter_path = tmp_path / "inter.csv"
    pd.DataFrame({"item_id": [1, 2, 3, 4], "title": list("abcd")}).to_parquet(items_path)
    pd.DataFrame(
        {"user_id": [1] * 4 + [2] * 3, "item_id": [1, 2, 3, 4, 1, 2, 3], "timestamp": [T0 + t for t in range(7)]}
    ).to_csv(inter_path, index=False)
    cfg = DataConfig(
        source="files", items_path=str(items_path), interactions_path=str(inter_path), min_user_interactions=4
    )
    data = load_interaction_data(cfg, TEXT_CFG)
    assert data.user_ids.tolist() == ["1"]
    assert data.dropped_interactions == 3
