"""The Feast feature store against its real online stores: SQLite (file) and Redis (a real server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import StoreConfig
from feature_gen.store.feature_store import FeatureStoreError, open_store
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, list_versions, read_version

DIM = 8


def _items(ids, version, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "item_id": ids,
        "embedding": list(rng.standard_normal((len(ids), DIM)).astype(np.float32)),
        "bundle_version": version,
    })


def _users(ids, version, seed, last_ts=1000):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": ids,
        "embedding": list(rng.standard_normal((len(ids), DIM)).astype(np.float32)),
        "seq_len": np.arange(1, len(ids) + 1),
        "last_event_ts": np.full(len(ids), last_ts, dtype=np.int64),
        "bundle_version": version,
    })


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"store-{request.param}")
    fields = {"repo_path": str(root / "repo"), "offline_root": str(root / "offline"), "online_store": request.param}
    if request.param == "redis":
        fields["redis_connection"] = request.getfixturevalue("redis_server")
    return open_store(StoreConfig(**fields))


def test_round_trip_of_every_view(store):
    assert store.feast.config.online_store.type == store.cfg.online_store  # really the backend asked for
    items = _items([10, 11, 12], "v1", seed=0)
    users = _users(["u1", "u2"], "v1", seed=1)
    assert store.push_item_embeddings(items) == 3
    assert store.push_user_embeddings(users) == 2
    store.push_recent_items(pd.DataFrame({
        "user_id": ["u1"], "recent_item_ids": [[10, 12]], "recent_item_ts": [[500, 1000]], "last_event_ts": [1000],
    }))

    got = store.item_embeddings([12, 10, 99])  # ints in, strings in the store
    assert got.item_ids == ["12", "10", "99"]
    assert got.found.tolist() == [True, True, False]
    np.testing.assert_allclose(got.vectors[0], items.embedding[2], rtol=1e-6)
    np.testing.assert_allclose(got.vectors[1], items.embedding[0], rtol=1e-6)
    assert np.isnan(got.vectors[2]).all()
    assert got.bundle_versions == ["v1", "v1", None]

    u = store.user_embeddings(["u2", "nobody"])
    np.testing.assert_allclose(u.vectors[0], users.embedding[1], rtol=1e-6)
    assert u.seq_len.tolist() == [2, -1] and u.last_event_ts.tolist() == [1000, -1]
    assert u.found.tolist() == [True, False]

    r = store.recent_items(["u1", "u2"])
    assert r.item_ids == [["10", "12"], []]
    assert r.item_ts[0].tolist() == [500, 1000] and r.last_event_ts.tolist() == [1000, -1]


def test_request_time_rows_are_of_one_version_and_score_by_cosine(store):
    # The one request-time path (ranker_integration.serving) over this store's online reads.
    from ranker_integration.feature_values import row_cosine
    from ranker_integration.serving import read_online_features

    store.push_item_embeddings(_items(["a", "b", "c"], "v1", seed=2))
    store.push_user_embeddings(_users(["ru"], "v1", seed=3))
    rows = read_online_features(store, "ru", ["a", "c"], "v1", DIM, now_ts=5000)
    assert rows.user_found.tolist() == [True, True] and rows.item_found.tolist() == [True, True]
    assert rows.user_seq_len.tolist() == [1, 1] and rows.user_last_event_ts.tolist() == [1000, 1000]
    u, items = rows.user_vectors[0], rows.item_vectors
    manual = items @ u / (np.linalg.norm(items, axis=1) * np.linalg.norm(u))
    np.testing.assert_allclose(row_cosine(rows.user_vectors, items), manual, rtol=1e-5)

    # One item moves to a new version: for v1 it is missing (NaN, found False), never mixed in.
    store.push_item_embeddings(_items(["c"], "v2", seed=4))
    rows = read_online_features(store, "ru", ["a", "c", "zzz"], "v1", DIM, now_ts=5000)
    assert rows.item_found.tolist() == [True, False, False]
    assert np.isnan(rows.item_vectors[1:]).all() and not np.isnan(rows.item_vectors[0]).any()
    # A ranker of v2 sees no user row of its version; an unknown user is missing the same way.
    for user, version in (("ru", "v2"), ("ghost", "v1")):
        rows = read_online_features(store, user, ["a"], version, DIM, now_ts=5000)
        assert not rows.user_found.any() and np.isnan(rows.user_vectors).all() and rows.user_seq_len.tolist() == [-1]


def test_newer_write_replaces_and_stale_events_never_move_a_user_backwards(store):
    store.push_user_embeddings(_users(["s1"], "v1", seed=5, last_ts=2000))
    old = _users(["s1"], "v1", seed=6, last_ts=1500)  # a replayed, older event
    assert store.push_user_embeddings(old, only_newer_events=True) == 0
    assert store.user_embeddings(["s1"]).last_event_ts.tolist() == [2000]
    # Without the guard the later write wins (Redis too: rows are stamped with their write time).
    store.push_user_embeddings(old)
    assert store.user_embeddings(["s1"]).last_event_ts.tolist() == [1500]
    # A new bundle version replaces even with older events: versions are not compared by time.
    newer_version = _users(["s1"], "v2", seed=7, last_ts=1200)
    assert store.push_user_embeddings(newer_version, only_newer_events=True) == 1
    got = store.user_embeddings(["s1"])
    assert got.bundle_versions == ["v2"]
    np.testing.assert_allclose(got.vectors[0], newer_version.embedding[0], rtol=1e-6)


def test_offline_write_then_materialize_publishes_the_version_online(store):
    items_v5 = _items(["m1", "m2"], "ignored", seed=8)
    users_v5 = _users(["mu"], "ignored", seed=9, last_ts=3000)
    store.write_offline(ITEM_EMBEDDING, "v5", items_v5)
    store.write_offline(USER_EMBEDDING, "v5", users_v5)
    # Writing the same version again replaces it whole (no rows from the first write survive).
    store.write_offline(ITEM_EMBEDDING, "v5", items_v5.iloc[:1])
    assert list_versions(store.offline_root, ITEM_EMBEDDING) == ["v5"]
    offline = read_version(store.offline_root, ITEM_EMBEDDING, "v5")
    assert offline.item_id.tolist() == ["m1"] and set(offline.bundle_version) == {"v5"}
    assert not [p for p in (store.offline_root / ITEM_EMBEDDING).iterdir() if p.name.startswith("_")]
    # user rows are valid from the last event they reflect (point-in-time joins)
    users_off = read_version(store.offline_root, USER_EMBEDDING, "v5")
    assert users_off.event_timestamp[0] == pd.Timestamp(3000, unit="s", tz="UTC")

    written = store.materialize_version("v5")
    assert written == {ITEM_EMBEDDING: 1, USER_EMBEDDING: 1, USER_RECENT_ITEMS: 0}
    got = store.user_embeddings(["mu"])
    assert got.bundle_versions == ["v5"] and store.item_embeddings(["m1"]).bundle_versions == ["v5"]
    np.testing.assert_allclose(got.vectors[0], users_v5.embedding[0], rtol=1e-6)


def test_bad_frames_are_refused_with_the_column_named(store):
    with pytest.raises(FeatureStoreError, match=r"item_embedding: frame lacks column\(s\) bundle_version"):
        store.push_item_embeddings(pd.DataFrame({"item_id": [1], "embedding": [np.zeros(DIM)]}))
    bad = _items(["x"], "v1", seed=0)
    bad.loc[0, "item_id"] = None
    with pytest.raises(FeatureStoreError, match="item_id is null in 1 row"):
        store.push_item_embeddings(bad)


def test_generated_repo_is_readable_by_the_feast_cli(tmp_path):
    """The repo folder is a normal Feast repo: `feast feature-views list` sees our three views."""
    store = open_store(StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "off")))
    feast_cli = Path(sys.executable).parent / "feast"
    out = subprocess.run(
        [str(feast_cli), "-c", str(store.repo_path), "feature-views", "list"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for view in (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS):
        assert view in out.stdout


def test_schema_declares_each_view_once(tmp_path):
    # The Feast views, the store's frame checks and the Spark output schemas all come from store.schema.
    from feast import FeatureView

    from feature_gen.store.feature_repo.definitions import feature_definitions
    from feature_gen.store.schema import USER_EMBEDDING_SPARK_SCHEMA, VIEWS

    views = {o.name: o for o in feature_definitions(tmp_path) if isinstance(o, FeatureView)}
    assert sorted(views) == sorted(VIEWS)
    for name, view in VIEWS.items():
        assert [f.name for f in views[name].features] == [f.name for f in view.features]
        assert views[name].entities == [view.entity]
    assert VIEWS[USER_RECENT_ITEMS].columns == ("user_id", "recent_item_ids", "recent_item_ts", "last_event_ts")
    assert USER_EMBEDDING_SPARK_SCHEMA == "user_id string, embedding array<float>, seq_len long, last_event_ts long"

