"""The ranker's training set: held-out MovieLens labels joined point in time with offline features.

    labels = make_labels(items, interactions, cfg.ranker, seed)       # user_id, item_id, timestamp, label, split
    ts = build_training_set(labels, cfg.store, version, fc)           # + one column per feature
    # a contract with click_score (late_fusion): the bundle's head, the same call as serving
    ts = build_training_set(labels, cfg.store, version, fc, click_head=click_head_for(fc, bundle_dir))

Labels: feature_gen/data/labels.py, the labelling the discriminative trainer uses too: interactions
after the `history_quantile` of all event times (the features may see everything before), as events
with sampled negatives (`sampled_negatives`), as rated impressions (`rating`), or both
(`rating_and_sampled`). The newest `test_fraction` of labels (by time) is the test split, so the ranker
is judged on the future, never on a shuffle.

Point-in-time rule: a label at time t sees, for its user, the newest offline `user_embedding` row of the
bundle version whose event time (`last_event_ts`, the newest event the embedding reflects) is strictly
before t; an item row is a function of the item's text (event time 0). Strictly: in ML-100K half of all
events share their second with another event of the same user, so a snapshot stamped with t itself may
already contain the labelled event. A row older than a feature's max_staleness counts as missing (the
config's cold-start default). The join reads exactly one bundle version from the offline store, so a
training row never mixes versions. (It is a pandas as-of join over `offline_store.read_version` rather
than Feast's get_historical_features: the views' Parquet holds every version side by side, and Feast's
join would pick the newest row of *any* version.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_gen.config import RankerConfig, StoreConfig
from feature_gen.data.labels import LABEL_COLUMNS, LabelError, label_candidates
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, read_version
from feature_gen.store.schema import EMBEDDING, EVENT_TIMESTAMP, ITEM_ID, LAST_EVENT_TS, SEQ_LEN, USER_ID
from ranker_integration.click_head import check_click_head
from ranker_integration.feature_config import FeatureConfig
from ranker_integration.feature_values import FeatureRows, assemble_features


class TrainingSetError(ValueError):
    """Labels or features that cannot make a training set; the message names the column or table."""


def make_labels(items: pd.DataFrame, interactions: pd.DataFrame, cfg: RankerConfig, seed: int = 0) -> pd.DataFrame:
    """Labelled (user, item, time) rows after the history cut, with a time split: the one labelling
    (feature_gen/data/labels.py), ids as strings (the feature store's entity keys)."""
    try:
        labels = label_candidates(items, interactions, cfg, seed)
    except LabelError as err:
        raise TrainingSetError(str(err)) from None
    cut = labels.attrs["history_end"]
    labels = labels.assign(user_id=labels["user_id"].astype(str), item_id=labels["item_id"].astype(str))
    labels = labels[list(LABEL_COLUMNS)]
    labels.attrs["history_end"] = cut
    return labels


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # LABEL_COLUMNS + user_feature_ts (event time of the joined user row, -1: none)
    features: dict[str, np.ndarray]  # feature name -> float32 [n, dim], rows aligned with frame
    bundle_version: str

    def split(self, name: str) -> "TrainingSet":
        mask = (self.frame["split"] == name).to_numpy()
        return TrainingSet(self.frame[mask].reset_index(drop=True), {k: v[mask] for k, v in self.features.items()},
                           self.bundle_version)


def point_in_time_user_rows(labels: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """For each label, the newest user row with last_event_ts strictly before the label's timestamp
    (NaN where there is none); labels keep their order."""
    left = labels[[USER_ID, "timestamp"]].assign(_row=np.arange(len(labels)))
    left = left.astype({"timestamp": "int64"}).sort_values("timestamp", kind="stable")
    right = users[[USER_ID, LAST_EVENT_TS, EMBEDDING, SEQ_LEN]].copy()
    right[USER_ID] = right[USER_ID].astype(str)
    right = right.astype({LAST_EVENT_TS: "int64"}).sort_values(LAST_EVENT_TS, kind="stable")
    right["user_feature_ts"] = right[LAST_EVENT_TS]
    joined = pd.merge_asof(left, right, left_on="timestamp", right_on=LAST_EVENT_TS, by=USER_ID,
                           direction="backward", allow_exact_matches=False)
    return joined.sort_values("_row").reset_index(drop=True)


def build_training_set(labels: pd.DataFrame, store_cfg: StoreConfig, version: str, fc: FeatureConfig,
                       click_head=None) -> TrainingSet:
    """Join every label with bundle `version`'s offline features, point in time (see module doc).
    `click_head` (ranker_integration/click_head.py, bundle `version`'s) computes a late_fusion feature
    such as click_score; ClickHeadError before any read when the config needs it and it is missing."""
    missing = [c for c in LABEL_COLUMNS if c not in labels]
    if missing:
        raise TrainingSetError(f"labels: column(s) {', '.join(missing)} missing")
    if fc.bundle_version not in ("any", version):
        raise TrainingSetError(f"feature config is pinned to {fc.bundle_version}; the training set reads {version}")
    check_click_head(fc, click_head, version, "build_training_set")
    users = read_version(store_cfg.offline_root, USER_EMBEDDING, version)
    items = read_version(store_cfg.offline_root, ITEM_EMBEDDING, version)
    items = items.assign(item_id=items[ITEM_ID].astype(str)).drop_duplicates(ITEM_ID, keep="last")
    item_dim = len(items[EMBEDDING].iloc[0])
    labels = labels.reset_index(drop=True)
    user_rows = point_in_time_user_rows(labels, users)
    user_found = user_rows["user_feature_ts"].notna().to_numpy()
    user_vectors = np.full((len(labels), item_dim), np.nan, dtype=np.float32)
    if user_found.any():
        user_vectors[user_found] = np.stack(user_rows.loc[user_found, EMBEDDING].to_numpy()).astype(np.float32)
    item_index = pd.Index(items[ITEM_ID])
    pos = item_index.get_indexer(labels[ITEM_ID])
    item_found = pos >= 0
    # an item row is usable from its event time on (0 for a text embedding): never after the label either
    item_ts = _event_seconds(items)
    item_found[item_found] &= item_ts[pos[item_found]] < labels["timestamp"].to_numpy()[item_found]
    item_table = np.stack(items[EMBEDDING].to_numpy()).astype(np.float32)
    item_vectors = np.full((len(labels), item_dim), np.nan, dtype=np.float32)
    item_vectors[item_found] = item_table[pos[item_found]]
    rows = FeatureRows(
        at_ts=labels["timestamp"].to_numpy(dtype=np.int64),
        user_vectors=user_vectors,
        user_found=user_found,
        user_seq_len=user_rows[SEQ_LEN].fillna(-1).to_numpy(dtype=np.int64),
        user_last_event_ts=user_rows["user_feature_ts"].fillna(-1).to_numpy(dtype=np.int64),
        item_vectors=item_vectors,
        item_found=item_found,
    )
    frame = labels[list(LABEL_COLUMNS)].assign(user_feature_ts=rows.user_last_event_ts)
    return TrainingSet(frame, assemble_features(fc, item_dim, rows, click_head), version)


def _event_seconds(frame: pd.DataFrame) -> np.ndarray:
    if EVENT_TIMESTAMP not in frame:
        return np.zeros(len(frame), dtype=np.int64)
    stamps = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
