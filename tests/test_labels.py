"""The one labelling (feature_gen/data/labels.py): later ratings as impressions, sampled implicit
negatives, point-in-time histories."""

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import RankerConfig
from feature_gen.data.labels import LabelError, label_candidates, point_in_time_histories
from ranker_integration.training_set import make_labels


def _events(n=800, users=25, items=150, seed=0):
    rng = np.random.default_rng(seed)
    # coarse timestamps: many of a user's events share a second, as half of ML-100K's do
    return pd.DataFrame({
        "user_id": rng.integers(1, users, n), "item_id": rng.integers(1, items, n),
        "timestamp": np.sort(rng.integers(0, 300, n)).astype(np.int64), "rating": rng.integers(1, 6, n).astype(float),
    }), pd.DataFrame({"item_id": np.arange(1, items + 1)})


def test_rating_thresholds_and_sampled_implicit_negatives():
    interactions, items = _events()
    cfg = RankerConfig(labels="rating_and_sampled", min_positive_rating=4, max_negative_rating=2,
                       negatives_per_positive=2, history_quantile=0.5)
    labels = label_candidates(items, interactions, cfg, seed=3)
    cut = labels.attrs["history_end"]
    held = interactions[interactions["timestamp"] > cut]
    rated = labels[labels["source"] == "rating"]
    assert len(rated) == ((held["rating"] >= 4) | (held["rating"] <= 2)).sum()  # 3s dropped
    assert rated["label"].sum() == (held["rating"] >= 4).sum()
    sampled = labels[labels["source"] == "sampled"]
    assert len(sampled) == 2 * rated["label"].sum() and (sampled["label"] == 0).all()
    seen = interactions.groupby("user_id")["item_id"].agg(set)
    assert not any(i in seen[u] for u, i in zip(sampled["user_id"], sampled["item_id"]))
    assert (labels["timestamp"] > cut).all() and labels["timestamp"].is_monotonic_increasing
    # the ranker's make_labels is the same labelling, ids as strings
    ranker = make_labels(items, interactions, cfg, seed=3)
    assert ranker["item_id"].tolist() == labels["item_id"].astype(str).tolist()
    assert ranker["label"].tolist() == labels["label"].tolist()


def test_histories_are_point_in_time():
    """No candidate sees its own event, an event in the same second, or any later event."""
    interactions, items = _events(seed=1)
    labels = label_candidates(items, interactions, RankerConfig(labels="rating_and_sampled", history_quantile=0.3), 0)
    hist = point_in_time_histories(labels, interactions)
    by_user = {u: g for u, g in interactions.groupby("user_id")}
    for row, (user, t) in enumerate(zip(labels["user_id"], labels["timestamp"])):
        ts = hist.timestamps[row]
        assert (ts < t).all()
        # and it is the whole strict past, in time order
        past = by_user[user][by_user[user]["timestamp"] < t]
        assert len(ts) == len(past) and np.all(np.diff(ts) >= 0)
        assert sorted(hist.item_ids[row].tolist()) == sorted(past["item_id"].tolist())
    # a tie: the labelled event and another of the user in the same second are both excluded
    tie = pd.DataFrame({"user_id": [7, 7, 7], "item_id": [1, 2, 3], "timestamp": [10, 20, 20]})
    at = point_in_time_histories(pd.DataFrame({"user_id": [7], "timestamp": [20]}), tie, max_len=5)
    assert at.item_ids[0].tolist() == [1]
    newest = point_in_time_histories(pd.DataFrame({"user_id": [7], "timestamp": [21]}), tie, max_len=2)
    assert newest.item_ids[0].tolist() == [2, 3]  # the newest max_len, file order within a second


def test_bad_label_input_names_the_field():
    interactions, items = _events()
    with pytest.raises(LabelError, match="ranker.labels 'rating': interactions have no 'rating' column"):
        label_candidates(items, interactions.drop(columns="rating"), RankerConfig(labels="rating"))
    with pytest.raises(LabelError, match="ranker.max_negative_rating"):
        label_candidates(items, interactions, RankerConfig(labels="rating", max_negative_rating=4.5))
    with pytest.raises(LabelError, match="column 'timestamp' is missing"):
        label_candidates(items, interactions.drop(columns="timestamp"), RankerConfig())
