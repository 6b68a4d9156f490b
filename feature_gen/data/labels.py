"""Labelled candidates from real data: the one labelling the ranker's training set and the
discriminative trainer both read.

    labels = label_candidates(items, interactions, cfg.ranker, seed)   # user_id, item_id, timestamp, label, split, source
    hist = point_in_time_histories(labels, interactions)               # per label: the user's items strictly before it

The labelled period is every interaction after the `history_quantile` of all event times; the history
before the cut is what features and models may learn from. `cfg.labels` chooses what is a label:

- `sampled_negatives`: each later interaction is a positive (source `event`), plus
  `negatives_per_positive` items the user never interacted with, at the same timestamp (source
  `sampled`), drawn by `negative_sampling` (`popularity`: in proportion to the items' counts in the
  history, add-one smoothed; `uniform`).
- `rating`: each later rating is an impression: >= `min_positive_rating` liked (1), <=
  `max_negative_rating` disliked (0) (unset: everything below `min_positive_rating`), ratings in
  between dropped (source `rating`).
- `rating_and_sampled`: the rating labels plus `negatives_per_positive` sampled implicit negatives per
  liked impression.

The newest `test_fraction` of labels (by time) is the test split: models are judged on the future.

Point in time: a label at time t is scored with the user's events strictly before t. ML-100K puts half
its events in the same second as another event of the same user, so "at or before t" would let a
candidate see its own event (or its tied neighbours, which in file order may come after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_gen.config import RankerConfig

LABEL_COLUMNS = ("user_id", "item_id", "timestamp", "label", "split")


class LabelError(ValueError):
    """Interactions or a config that cannot give labels; the message names the column or field."""


def label_candidates(items: pd.DataFrame, interactions: pd.DataFrame, cfg: RankerConfig, seed: int = 0) -> pd.DataFrame:
    """Labelled (user, item, time) rows after the history cut, with a time split (see module doc).

    Returns LABEL_COLUMNS + `source` (event / rating / sampled), ids in the interactions' dtype, sorted by
    timestamp (stable); `attrs["history_end"]` is the cut (labels are strictly after it). Raises
    LabelError naming the column or `ranker.*` field when the data cannot be labelled.
    """
    for col in ("user_id", "item_id", "timestamp"):
        if col not in interactions:
            raise LabelError(f"interactions: column {col!r} is missing")
    if "item_id" not in items:
        raise LabelError("items: column 'item_id' is missing")
    events = interactions.reset_index(drop=True)
    events = events.iloc[np.argsort(events["timestamp"].to_numpy(), kind="stable")]
    cut = int(np.quantile(events["timestamp"].to_numpy(), cfg.history_quantile))
    held = events[events["timestamp"] > cut]
    if held.empty:
        raise LabelError(f"ranker.history_quantile {cfg.history_quantile}: no interactions after {cut}")
    catalogue = items["item_id"].to_numpy()
    weights = None
    if cfg.negative_sampling == "popularity":  # counts in the history only: the future is not known yet
        counts = events.loc[events["timestamp"] <= cut, "item_id"].value_counts()
        weights = pd.Series(catalogue).map(counts).fillna(0).to_numpy(dtype=np.float64) + 1.0
        weights /= weights.sum()
    if cfg.labels == "sampled_negatives":
        labels = _with_sampled_negatives(held.assign(label=np.int8(1), source="event"), events, catalogue,
                                         cfg.negatives_per_positive, seed, weights)
    else:
        rated = _rating_labels(held, cfg)
        if cfg.labels == "rating_and_sampled":
            labels = _with_sampled_negatives(rated, events, catalogue, cfg.negatives_per_positive, seed, weights)
        else:
            labels = rated
    if labels.empty:
        raise LabelError(f"ranker.labels {cfg.labels!r}: no labels after {cut}")
    test_start = np.quantile(labels["timestamp"].to_numpy(), 1.0 - cfg.test_fraction)
    labels = labels.assign(split=np.where(labels["timestamp"] > test_start, "test", "train"))
    labels = labels.reset_index(drop=True)[[*LABEL_COLUMNS, "source"]]
    labels.attrs["history_end"] = cut
    return labels


def _rating_labels(held: pd.DataFrame, cfg: RankerConfig) -> pd.DataFrame:
    if "rating" not in held:
        raise LabelError(f"ranker.labels {cfg.labels!r}: interactions have no 'rating' column "
                         "(use labels: sampled_negatives for implicit feedback)")
    low = cfg.max_negative_rating
    if low is not None and low >= cfg.min_positive_rating:
        raise LabelError(f"ranker.max_negative_rating: {low} must be below min_positive_rating "
                         f"{cfg.min_positive_rating}")
    rating = held["rating"].to_numpy(dtype=np.float64)
    if np.isnan(rating).any():
        row = int(np.flatnonzero(np.isnan(rating))[0])
        raise LabelError(f"interactions: row {held.index[row]}: field 'rating' is empty")
    liked = rating >= cfg.min_positive_rating
    keep = liked | (rating <= low) if low is not None else np.ones(len(held), dtype=bool)
    return held.loc[keep, ["user_id", "item_id", "timestamp"]].assign(
        label=liked[keep].astype(np.int8), source="rating")


def _with_sampled_negatives(labelled: pd.DataFrame, events: pd.DataFrame, catalogue: np.ndarray, k: int,
                            seed: int, weights: np.ndarray | None) -> pd.DataFrame:
    """`labelled` plus k never-interacted items per positive row, at the positive's timestamp."""
    rng = np.random.default_rng(seed)
    # never interacted with at any time: a later interaction is a label of its own, not a negative
    seen = events.groupby("user_id")["item_id"].agg(set).to_dict()
    positives = labelled[labelled["label"] == 1]
    users, ts = positives["user_id"].to_numpy(), positives["timestamp"].to_numpy()
    neg = np.empty((len(positives), k), dtype=catalogue.dtype)
    for row, user in enumerate(users):
        exclude = seen[user]
        if len(exclude) >= len(catalogue):
            raise LabelError(f"interactions: user {user} has interacted with the whole catalogue; no negative to sample")
        picked: list = []
        while len(picked) < k:  # rejection sampling: users touch a small share of the catalogue
            cand = rng.choice(catalogue, size=2 * k, p=weights)
            picked += [c for c in cand if c not in exclude][: k - len(picked)]
        neg[row] = picked
    labelled = labelled[["user_id", "item_id", "timestamp", "label", "source"]]
    negatives = pd.DataFrame({"user_id": np.repeat(users, k), "item_id": neg.reshape(-1),
                              "timestamp": np.repeat(ts, k), "label": np.int8(0), "source": "sampled"})
    return pd.concat([labelled, negatives], ignore_index=True).sort_values("timestamp", kind="stable")


@dataclass
class Histories:
    """Per label row, the user's history strictly before the label's timestamp, in time order
    (timestamp, then file order), newest `max_len` kept."""

    item_ids: list[np.ndarray]  # per label: item ids (the interactions' dtype), oldest first
    timestamps: list[np.ndarray]  # per label: int64 unix seconds, aligned with item_ids


def point_in_time_histories(labels: pd.DataFrame, interactions: pd.DataFrame, max_len: int | None = None) -> Histories:
    """The history each label may be scored with: the user's interactions with timestamp < the
    label's (strictly; see module doc), newest `max_len` of them."""
    events = interactions.reset_index(drop=True)
    events = events.iloc[np.argsort(events["timestamp"].to_numpy(), kind="stable")]
    per_user = {u: (g["item_id"].to_numpy(), g["timestamp"].to_numpy(dtype=np.int64))
                for u, g in events.groupby("user_id", sort=False)}
    empty = (np.empty(0, dtype=events["item_id"].dtype), np.empty(0, dtype=np.int64))
    item_ids, stamps = [], []
    for user, t in zip(labels["user_id"].to_numpy(), labels["timestamp"].to_numpy(dtype=np.int64)):
        items, ts = per_user.get(user, empty)
        end = int(np.searchsorted(ts, t, side="left"))  # first event at or after t: excluded
        start = 0 if max_len is None else max(0, end - max_len)
        item_ids.append(items[start:end])
        stamps.append(ts[start:end])
    return Histories(item_ids=item_ids, timestamps=stamps)
