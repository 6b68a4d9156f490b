"""The fast online paths (feature_gen/store/online_io.py, streaming's OnlineState) against the plain Feast
API (push + get_online_features) on the real SQLite and Redis online stores: same values, same bundle
versions, same "only newer events" outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import StoreConfig
from feature_gen.inference.encoders import UserEmbeddings
from feature_gen.store.feature_store import FeatureStoreError, open_store
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS
from feature_gen.store.online_io import (
    OnlineIO,
    float_list_from_value_bytes,
    float_list_value_bytes,
    item_embedding_rows,
    recent_item_rows,
    user_embedding_rows,
)
from feature_gen.streaming.online_state import OnlineState
from feature_gen.streaming.recent_items import RecentSequence

DIM = 16


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def store(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"online-io-{request.param}")
    fields = {"repo_path": str(root / "repo"), "offline_root": str(root / "offline"), "online_store": request.param}
    if request.param == "redis":
        fields["redis_connection"] = request.getfixturevalue("redis_server")
    return open_store(StoreConfig(**fields))


def _vectors(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _assert_same_items(a, b):
    assert a.item_ids == b.item_ids
    assert a.found.tolist() == b.found.tolist()
    assert a.bundle_versions == b.bundle_versions
    np.testing.assert_array_equal(a.vectors, b.vectors)  # bit-identical, NaN rows where missing


def _assert_same_users(a, b):
    assert a.user_ids == b.user_ids
    assert a.found.tolist() == b.found.tolist()
    assert a.bundle_versions == b.bundle_versions
    assert a.seq_len.tolist() == b.seq_len.tolist() and a.last_event_ts.tolist() == b.last_event_ts.tolist()
    np.testing.assert_array_equal(a.vectors, b.vectors)


def _assert_same_recent(a, b):
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert [t.tolist() for t in a.item_ts] == [t.tolist() for t in b.item_ts]
    assert a.last_event_ts.tolist() == b.last_event_ts.tolist() and a.found.tolist() == b.found.tolist()


def test_value_bytes_are_feasts_own_encoding():
    from feast.protos.feast.types.Value_pb2 import FloatList, Value

    for n in (0, 1, 31, 64, 1024):  # 1024 floats: a two-byte length varint
        v = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        assert float_list_value_bytes(v) == Value(float_list_val=FloatList(val=v.tolist())).SerializeToString()
        np.testing.assert_array_equal(float_list_from_value_bytes(float_list_value_bytes(v)), v)
    with pytest.raises(FeatureStoreError, match="not a float list"):
        float_list_from_value_bytes(Value(string_val="x").SerializeToString())
    with pytest.raises(FeatureStoreError, match="header says"):
        float_list_from_value_bytes(float_list_value_bytes(np.ones(4, np.float32))[:-1])


def test_fast_writes_read_back_by_plain_feast(store):
    io = OnlineIO(store)
    items, users = _vectors(5, 0), _vectors(3, 1)
    written = io.write({
        ITEM_EMBEDDING: item_embedding_rows([f"w{i}" for i in range(5)], items, "v1"),
        USER_EMBEDDING: user_embedding_rows(["wa", "wb", "wc"], users, [3, 2, 1], [100, 200, 300], "v1"),
        USER_RECENT_ITEMS: recent_item_rows(["wa", "wb"], [["w1", "w2", "w3"], ["w4"]], [[10, 20, 30], [40]], [30, 40]),
    })
    assert written == {ITEM_EMBEDDING: 5, USER_EMBEDDING: 3, USER_RECENT_ITEMS: 2}

    plain_items = store.item_embeddings(["w3", "nope", "w0"])
    np.testing.assert_array_equal(plain_items.vectors[[0, 2]], items[[3, 0]])
    assert plain_items.bundle_versions == ["v1", None, "v1"]
    plain_users = store.user_embeddings(["wb", "wc", "nobody"])
    np.testing.assert_array_equal(plain_users.vectors[:2], users[1:])
    assert plain_users.seq_len.tolist() == [2, 1, -1] and plain_users.last_event_ts.tolist() == [200, 300, -1]
    recent = store.recent_items(["wa", "wb", "wc"])
    assert recent.item_ids == [["w1", "w2", "w3"], ["w4"], []]
    assert recent.last_event_ts.tolist() == [30, 40, -1]
    # and the fast reads give exactly what the plain ones give
    _assert_same_items(io.item_embeddings(["w3", "nope", "w0"]), plain_items)
    _assert_same_users(io.user_embeddings(["wb", "wc", "nobody"]), plain_users)
    _assert_same_recent(io.recent_items(["wa", "wb", "wc"]), recent)


def test_fast_reads_equal_get_online_features(store):
    io = OnlineIO(store)
    ids = [f"r{i}" for i in range(100)]
    vectors = _vectors(100, 2)
    store.push_item_embeddings(pd.DataFrame({"item_id": ids, "embedding": list(vectors),
                                             "bundle_version": ["v1"] * 60 + ["v2"] * 40}))
    store.push_user_embeddings(pd.DataFrame({"user_id": ["ra"], "embedding": [vectors[0]], "seq_len": [7],
                                             "last_event_ts": [1234], "bundle_version": ["v1"]}))
    store.push_recent_items(pd.DataFrame({"user_id": ["ra"], "recent_item_ids": [["r1", "r2"]],
                                          "recent_item_ts": [[5, 6]], "last_event_ts": [6]}))
    asked = ids[::-1] + ["missing-1"] + ids[:3]  # reversed, a missing one, repeats
    user, items = io.request_rows("ra", asked)
    _assert_same_items(items, store.item_embeddings(asked))
    _assert_same_users(user, store.user_embeddings(["ra"]))
    np.testing.assert_array_equal(items.vectors[0], vectors[99])

    recent, stored = io.user_state(["ra", "unknown"])
    _assert_same_recent(recent, store.recent_items(["ra", "unknown"]))
    plain = store.user_embeddings(["ra", "unknown"])
    assert stored.user_ids == plain.user_ids and stored.found.tolist() == plain.found.tolist() == [True, False]
    assert stored.bundle_versions == plain.bundle_versions and stored.last_event_ts.tolist() == plain.last_event_ts.tolist()
    # a read names only features its view has
    with pytest.raises(FeatureStoreError, match="user_embedding: no feature"):
        io.fetch([("user_embedding", ["ra"], ("embeding",))])
    # empty asks are fine and cost nothing
    empty_user, empty_items = io.request_rows("ra", [])
    assert empty_items.item_ids == [] and empty_items.vectors.shape[0] == 0 and empty_user.found.tolist() == [True]


def test_a_fast_write_replaces_a_plain_one_and_back(store):
    io = OnlineIO(store)
    store.push_item_embeddings(pd.DataFrame({"item_id": ["x"], "embedding": [np.ones(DIM, np.float32)],
                                             "bundle_version": ["v1"]}))
    io.write({ITEM_EMBEDDING: item_embedding_rows(["x"], np.full((1, DIM), 2, np.float32), "v2")})
    assert store.item_embeddings(["x"]).bundle_versions == ["v2"]
    store.push_item_embeddings(pd.DataFrame({"item_id": ["x"], "embedding": [np.full(DIM, 3, np.float32)],
                                             "bundle_version": ["v3"]}))
    got = io.item_embeddings(["x"])
    assert got.bundle_versions == ["v3"] and got.vectors[0].tolist() == [3.0] * DIM


def test_write_refuses_a_row_without_every_feature(store):
    with pytest.raises(FeatureStoreError, match="user_embedding: row for 'u' lacks feature"):
        OnlineIO(store).write({USER_EMBEDDING: [("u", {"embedding": float_list_value_bytes(np.ones(2))})]})


def test_only_newer_events_rule_matches_the_plain_push(store):
    """The same stored state and the same incoming rows through both paths: the plain push with
    only_newer_events and OnlineState (the guard served from the state its batch read) keep the same rows."""
    # stored: same version later (kept), same version earlier (replaced), other version later (replaced),
    # equal event time (replaced: a replay repairs), absent (written)
    stored = {"a": ("v1", 500), "b": ("v1", 100), "c": ("v0", 900), "d": ("v1", 300)}
    incoming_ts = {"a": 300, "b": 300, "c": 300, "d": 300, "e": 300}
    results = {}
    for path in ("plain", "state"):
        users = [f"{path}-{u}" for u in incoming_ts]
        store.push_user_embeddings(pd.DataFrame({
            "user_id": [f"{path}-{u}" for u in stored], "embedding": list(_vectors(len(stored), 3)),
            "seq_len": [1] * len(stored), "last_event_ts": [t for _, t in stored.values()],
            "bundle_version": [v for v, _ in stored.values()]}))
        new = _vectors(len(users), 4)
        if path == "plain":
            store.push_user_embeddings(pd.DataFrame({
                "user_id": users, "embedding": list(new), "seq_len": [9] * len(users),
                "last_event_ts": list(incoming_ts.values()), "bundle_version": "v1"}), only_newer_events=True)
        else:
            state = OnlineState(store, "v1")
            sequences = state.sequences(users)
            state.write_users(sequences, users, UserEmbeddings(
                new, np.full(len(users), 9), np.array(list(incoming_ts.values()), dtype=np.int64)))
        got = store.user_embeddings(users)
        results[path] = (got.last_event_ts.tolist(), got.bundle_versions, got.seq_len.tolist())
    assert results["state"] == results["plain"]
    assert results["plain"][0] == [500, 300, 300, 300, 300]  # only "a" kept its later event


def test_online_state_writes_sequences_and_embeddings_together(store):
    state = OnlineState(store, "v1")
    users = ["together-1", "together-2"]  # ids no other test of the shared store writes
    sequences = state.sequences(users)
    assert all(len(s) == 0 for s in sequences.values())
    sequences["together-1"] = RecentSequence(["i1", "i2"], [10, 20])
    sequences["together-2"] = RecentSequence(["i3"], [30])
    vectors = _vectors(1, 5)
    state.write_users(sequences, ["together-2"], UserEmbeddings(vectors, np.array([1]), np.array([30])))
    recent = store.recent_items(users)
    assert recent.item_ids == [["i1", "i2"], ["i3"]] and recent.last_event_ts.tolist() == [20, 30]
    got = store.user_embeddings(users)
    assert got.found.tolist() == [False, True]
    np.testing.assert_array_equal(got.vectors[1], vectors[0])
    again = state.sequences(users)
    assert again["together-1"].item_ids == ["i1", "i2"] and again["together-1"].timestamps == [10, 20]


def test_embeddings_of_two_sizes_are_refused_naming_the_id(store):
    io = OnlineIO(store)
    io.write({ITEM_EMBEDDING: item_embedding_rows(["d16"], _vectors(1, 6), "v1")
              + item_embedding_rows(["d8"], np.ones((1, 8), np.float32), "v1")})
    with pytest.raises(FeatureStoreError, match="embedding of 'd8' has 8 dims, others 16"):
        io.item_embeddings(["d16", "d8"])


def test_a_write_without_a_fresh_read_asks_the_store(store):
    """The guard's state is one batch's read: a second write reads again instead of trusting it."""
    state = OnlineState(store, "v1")
    state.sequences(["late"])  # nothing stored yet
    state.write_user_embeddings(["late"], UserEmbeddings(_vectors(1, 7), np.array([3]), np.array([500])))
    state.write_user_embeddings(["late"], UserEmbeddings(_vectors(1, 8), np.array([2]), np.array([300])))
    got = store.user_embeddings(["late"])
    assert got.last_event_ts.tolist() == [500] and got.seq_len.tolist() == [3]
