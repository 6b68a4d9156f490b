"""benchmarks/data_facts.py: the data facts BENCHMARKS.md quotes are computed per user, in time order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.data_facts import facts, rating_gaps
from feature_gen.data.movielens import load_ml100k


def test_gaps_are_within_each_user_in_time_order():
    frame = pd.DataFrame({"user_id": [1, 2, 1, 1, 2], "item_id": [10, 11, 12, 13, 10],
                          "timestamp": [100, 5, 40, 100, 3605]})
    # user 1 rated at 40, 100, 100; user 2 at 5, 3605: no gap spans two users
    np.testing.assert_array_equal(np.sort(rating_gaps(frame)), [0, 60, 3600])
    got = facts(frame)
    assert got["counts"]["gaps"] == 3 and got["counts"]["items rated"] == 4
    assert got["fractions"]["gaps 0 s"] == 1 / 3
    assert got["fractions"]["gaps < 1 min"] == 1 / 3  # 60 s is not under a minute
    assert got["fractions"]["gaps < 1 day"] == 1.0
    assert got["fractions"]["items with 1-2 ratings"] == 1.0


def test_ml100k_has_one_gap_fewer_than_ratings_per_user():
    got = facts(load_ml100k()[1])
    assert got["counts"]["gaps"] == 100_000 - 943
    assert 0.5 < got["fractions"]["gaps 0 s"] < 0.52  # half of ML-100K's ratings tie with the previous one
