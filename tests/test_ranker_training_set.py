"""The ranker's training set: labels, and point-in-time correctness of the offline join (real Feast repo +
offline Parquet written through the feature store's API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import RankerConfig, StoreConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING
from ranker_integration.feature_config import load_feature_config
from ranker_integration.training_set import TrainingSetError, build_training_set, make_labels

SHIPPED = Path(__file__).resolve().parent.parent / "ranker_integration" / "feature_config.yaml"
VERSION = "hllm-0123456789ab"
DAY = 86_400


def _vec(value: float, dim: int = 4) -> np.ndarray:
    return np.full(dim, value, dtype=np.float32)


@pytest.fixture
def store_with_history(tmp_path) -> StoreConfig:
    """User u1 has snapshots reflecting events up to t=1000, 2000 and 3000 (vectors 1, 2, 3); a row of
    another bundle version at t=1500 (vector 9) that must never be read; items a and b."""
    from feature_gen.store.feature_store import open_store

    cfg = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"))
    store = open_store(cfg)
    users = pd.DataFrame({
        "user_id": ["u1", "u1", "u1"],
        "embedding": [_vec(1), _vec(2), _vec(3)],
        "seq_len": [1, 2, 3],
        "last_event_ts": [1000, 2000, 3000],
    })
    store.write_offline(USER_EMBEDDING, VERSION, users)
    store.write_offline(USER_EMBEDDING, "hllm-ffffffffffff", users.iloc[:1].assign(last_event_ts=1500, embedding=[_vec(9)]))
    items = pd.DataFrame({"item_id": ["a", "b"], "embedding": [_vec(1), np.array([1, -1, 1, -1], np.float32)]})
    store.write_offline(ITEM_EMBEDDING, VERSION, items)
    return cfg


def _labels(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"]).assign(split="train")


def test_no_feature_from_after_the_label(store_with_history):
    fc = load_feature_config(SHIPPED)
    labels = _labels([
        ("u1", "a", 999, 1),     # before any snapshot: cold start
        ("u1", "a", 1000, 1),    # ties with the snapshot at 1000, which may hold this very event: not visible
        ("u1", "b", 1001, 0),    # just after: snapshot 1000
        ("u1", "a", 2999, 1),    # snapshot 2000, although 3000 exists (a wrong join would leak it)
        ("u1", "a", 3000 + 59 * DAY, 0),  # snapshot 3000, 59 days old: within max_staleness 60d
        ("u1", "a", 3000 + 61 * DAY, 1),  # 61 days old: stale -> default
        ("u2", "a", 5000, 0),    # unknown user
    ])
    ts = build_training_set(labels, store_with_history, VERSION, fc)
    f = ts.features
    assert list(ts.frame["user_feature_ts"]) == [-1, -1, 1000, 2000, 3000, 3000, -1]
    joined = ts.frame["user_feature_ts"] >= 0
    assert (ts.frame.loc[joined, "user_feature_ts"] < ts.frame.loc[joined, "timestamp"]).all()
    assert [row[0] for row in f["user_embedding"]] == [0, 0, 1, 2, 3, 0, 0]  # never 9 (the other version)
    assert [row[0] for row in f["sequence_length"]] == [0, 0, 1, 2, 3, 0, 0]
    assert f["freshness_seconds"][:, 0].tolist() == [-1, -1, 1, 999, 59 * DAY, -1, -1]
    # user·item score: cosine of the joined vectors, the default where the user is missing
    assert f["user_item_score"][:, 0] == pytest.approx([0, 0, 0, 1, 1, 0, 0])
    assert f["item_embedding"][2].tolist() == [1, -1, 1, -1]
    assert ts.frame["timestamp"].tolist() == labels["timestamp"].tolist()  # order kept


def test_labels_after_history_with_time_split_and_unseen_negatives():
    rng = np.random.default_rng(0)
    n = 600
    interactions = pd.DataFrame({
        "user_id": rng.integers(1, 30, n), "item_id": rng.integers(1, 200, n),
        "timestamp": np.sort(rng.integers(0, 10_000, n)), "rating": rng.integers(1, 6, n).astype(float),
    })
    items = pd.DataFrame({"item_id": np.arange(1, 201)})
    cfg = RankerConfig(history_quantile=0.5, test_fraction=0.4, negatives_per_positive=3)
    labels = make_labels(items, interactions, cfg, seed=1)
    cut = labels.attrs["history_end"]
    assert (labels["timestamp"] > cut).all()
    assert (labels["label"] == 1).sum() == (interactions["timestamp"] > cut).sum()
    assert (labels["label"] == 0).sum() == 3 * (labels["label"] == 1).sum()
    seen = interactions.groupby("user_id")["item_id"].agg(lambda s: set(map(str, s)))
    negatives = labels[labels["label"] == 0]
    assert not any(item in seen[int(user)] for user, item in zip(negatives["user_id"], negatives["item_id"]))
    train, test = labels[labels["split"] == "train"], labels[labels["split"] == "test"]
    assert len(test) > 0 and train["timestamp"].max() <= test["timestamp"].min()

    by_rating = make_labels(items, interactions, RankerConfig(labels="rating", history_quantile=0.5), seed=1)
    held = interactions[interactions["timestamp"] > cut]
    assert len(by_rating) == len(held) and by_rating["label"].sum() == (held["rating"] >= 4).sum()


def test_pinned_config_of_another_version_is_refused(store_with_history):
    from ranker_integration.feature_config import feature_config_from_dict

    import yaml

    raw = yaml.safe_load(SHIPPED.read_text())
    raw["bundle_version"] = "hllm-aaaaaaaaaaaa"
    with pytest.raises(TrainingSetError, match="pinned to hllm-aaaaaaaaaaaa"):
        build_training_set(_labels([("u1", "a", 5, 1)]), store_with_history, VERSION, feature_config_from_dict(raw))


def test_backfilled_snapshots_hold_only_events_up_to_their_cutoff(tmp_path, tiny_bundle):
    """Snapshots through the real bundle: each row reflects exactly the user's events up to its cut-off
    (same vector as embedding that truncated history directly), stamped with its newest event."""
    import torch

    from feature_gen.model.bundle import load_bundle
    from feature_gen.store.feature_store import open_store
    from feature_gen.inference.encoders import embed_users
    from feature_gen.store.offline_store import read_version
    from spark_jobs.user_snapshots import backfill_user_snapshots, snapshot_cutoffs

    cfg = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"))
    store = open_store(cfg)
    bundle = load_bundle(tiny_bundle)
    version, dim = bundle.version, bundle.manifest["item_dim"]
    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, dim)).astype(np.float32)
    store.write_offline(ITEM_EMBEDDING, version, pd.DataFrame({"item_id": [str(i) for i in range(6)], "embedding": list(table)}))
    events = pd.DataFrame({"user_id": [7, 7, 7, 7, 8], "item_id": [0, 1, 2, 3, 4], "timestamp": [10, 20, 30, 40, 35]})
    assert snapshot_cutoffs(0, 40, 20) == [20, 40] and snapshot_cutoffs(0, 41, 20) == [20, 40, 60]
    added = backfill_user_snapshots(tiny_bundle, events, [25, 35], cfg)
    rows = read_version(cfg.offline_root, USER_EMBEDDING, version).sort_values(["user_id", "last_event_ts"])
    assert added == 3 and list(zip(rows["user_id"], rows["last_event_ts"], rows["seq_len"])) == [("7", 20, 2), ("7", 30, 3), ("8", 35, 1)]
    item_table = torch.from_numpy(np.concatenate([np.zeros((1, dim), np.float32), table]))
    # each row's history up to its cut-off (item index = id + 1: row 0 of the table is padding)
    histories = [np.array([1, 2]), np.array([1, 2, 3]), np.array([5])]
    times = [np.array([10, 20]), np.array([10, 20, 30]), np.array([35])]
    direct = embed_users(bundle.model.user_llm, item_table, histories, times, 20)
    np.testing.assert_allclose(np.stack(rows["embedding"]), direct.vectors, rtol=1e-5, atol=1e-6)
    # a second backfill over the same cut-offs adds nothing (rows are keyed by user and newest event)
    assert backfill_user_snapshots(tiny_bundle, events, [25, 35], cfg) == 0
