"""The splits and windows behind the quality runs: every-window training, cold items, data efficiency."""

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import ItemTextConfig
from feature_gen.data.sequences import (
    build_interaction_data,
    cold_item_split,
    history_windows,
    leave_one_out,
    random_windows,
    training_windows,
)
from trainer.loop import training_users


def _data(num_users=40, num_items=50, length=15):
    rng = np.random.default_rng(1)
    items = pd.DataFrame({"item_id": np.arange(1, num_items + 1), "title": [f"t{i}" for i in range(num_items)]})
    rows = [{"user_id": u, "item_id": int(rng.integers(1, num_items + 1)), "timestamp": 100 * t}
            for u in range(num_users) for t in range(length)]
    return build_interaction_data(items, pd.DataFrame(rows), ItemTextConfig(text_keys=["title"]))


def test_history_windows_cover_every_transition_once():
    seq = np.arange(1, 24)  # 23 items -> 22 transitions
    ts = seq * 10
    seqs, tss, trained = history_windows([seq], [ts], max_seq_len=5)
    transitions = [(int(w[i]), int(w[i + 1])) for w in seqs for i in range(len(w) - 1)]
    assert sorted(transitions) == [(i, i + 1) for i in range(1, 23)]
    assert trained == [len(w) - 1 for w in seqs]  # the default stride trains every target of a window
    assert all(len(w) <= 6 for w in seqs)
    assert seqs[0].tolist() == [18, 19, 20, 21, 22, 23]  # most recent first
    for w, t in zip(seqs, tss):
        assert (t == w * 10).all()
    assert history_windows([np.array([5])], [np.array([1])], 5) == ([], [], [])


def _trained_targets(seqs, trained, max_seq_len):
    """(target, items of context) of every target the windows train, read from the padded batch."""
    batch = training_windows(seqs, [s * 10 for s in seqs], max_seq_len, trained)
    out = []
    for row in range(len(seqs)):
        for col in range(max_seq_len):
            if int(batch.targets[row, col]) > 0:
                out.append((int(batch.targets[row, col]), int(batch.inputs.attention_mask[row, : col + 1].sum())))
    return out


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_window_stride_trains_every_target_once_with_at_least_L_minus_stride_context(stride):
    seq = np.arange(1, 24)  # targets 2..23
    seqs, _, trained = history_windows([seq], [seq * 10], max_seq_len=5, stride=stride)
    got = _trained_targets(seqs, trained, 5)
    assert sorted(t for t, _ in got) == list(range(2, 24))  # each target exactly once
    for target, context in got:  # context: the items before the target in its window
        assert context >= min(target - 1, 5 - stride + 1)  # its whole history, or L - stride + 1 items
    assert min(c for t, c in got if t > 6) == 5 - stride + 1  # the bound is reached
    if stride == 1:  # one window per target with full context: RecBole's prefixes
        assert all(c == min(t - 1, 5) for t, c in got)
        assert len(seqs) == 23 - 5


def test_window_stride_outside_1_to_max_seq_len_is_refused():
    with pytest.raises(ValueError, match="stride"):
        history_windows([np.arange(1, 9)], [np.arange(1, 9)], max_seq_len=5, stride=6)


def test_random_windows_are_full_length_contiguous_and_reach_every_transition():
    seq = np.arange(1, 24)  # 23 items -> 22 transitions
    short = np.array([7, 8, 9])
    rng = np.random.default_rng(0)
    seen, ends = set(), set()
    for _ in range(200):  # 200 epochs
        seqs, tss = random_windows([seq, short], [seq * 10, short * 10], max_seq_len=5, rng=rng)
        window, kept_short = seqs[0], seqs[1]
        assert len(window) == 6 and (np.diff(window) == 1).all()  # one contiguous slice, full length
        assert (tss[0] == window * 10).all()
        assert kept_short.tolist() == [7, 8, 9]  # shorter than a window: kept whole
        ends.add(int(window[-1]))
        seen |= {(int(window[i]), int(window[i + 1])) for i in range(5)}
    assert ends == set(range(6, 24))  # every full-length end drawn, not only the latest
    assert seen == {(i, i + 1) for i in range(1, 23)}
    # the same generator state draws the same windows: what makes a resumed epoch repeat its windows
    a, _ = random_windows([seq], [seq], 5, np.random.default_rng([3, 7, 1]))
    b, _ = random_windows([seq], [seq], 5, np.random.default_rng([3, 7, 1]))
    assert a[0].tolist() == b[0].tolist()


def test_cold_items_never_reach_training_and_test_targets_are_cold():
    data = _data()
    split, cold = cold_item_split(data, fraction=0.2, seed=0)
    assert len(cold) == 10
    cold_set = set(cold.tolist())
    assert not cold_set & set(np.concatenate(split.train).tolist())
    assert all(t in cold_set for t in split.test.targets)
    assert all(t not in cold_set for t in split.valid.targets)
    for h in split.test.histories + split.valid.histories:
        assert not cold_set & set(h.tolist())
    again, cold2 = cold_item_split(data, fraction=0.2, seed=0)
    assert (cold == cold2).all() and (again.test.targets == split.test.targets).all()
    other, cold3 = cold_item_split(data, fraction=0.2, seed=1)
    assert set(cold3.tolist()) != cold_set
    # the standard split keeps what the cold one removed
    assert len(leave_one_out(data).test) == data.num_users


def test_user_fraction_is_a_fixed_subset_chosen_by_the_seed():
    a = training_users(100, seed=3, fraction=0.25)
    assert len(a) == 25 and len(set(a.tolist())) == 25 and list(a) == sorted(a)
    assert list(training_users(100, seed=3, fraction=0.25)) == list(a)  # the same subset every call
    assert set(training_users(100, seed=4, fraction=0.25).tolist()) != set(a.tolist())
    assert len(training_users(100, seed=3, fraction=0.5)) == 50
    assert list(training_users(7, seed=3, fraction=1.0)) == list(range(7))
