"""The TF ranker: it learns from the HLLM features, its SavedModel scores exactly like the trained model,
and the request-time scorer (online Feast reads) scores like the training set (offline point-in-time join)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import RankerConfig, StoreConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING
from ranker_integration.feature_config import load_feature_config
from ranker_integration.metrics import auc, gauc
from ranker_integration.training_set import build_training_set

SHIPPED = Path(__file__).resolve().parent.parent / "ranker_integration" / "feature_config.yaml"
VERSION = "hllm-abcabcabcabc"
DIM = 8
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """40 users and 60 items with random embeddings; a user clicks an item when their cosine is positive.
    Offline: one snapshot per user before the labels. Labels: 3000 rows over time, the later half = test."""
    from feature_gen.store.feature_store import open_store

    root = tmp_path_factory.mktemp("ranker_world")
    cfg = StoreConfig(repo_path=str(root / "repo"), offline_root=str(root / "offline"))
    store = open_store(cfg)
    rng = np.random.default_rng(3)
    users = rng.normal(size=(40, DIM)).astype(np.float32)
    items = rng.normal(size=(60, DIM)).astype(np.float32)
    user_rows = pd.DataFrame({"user_id": [f"u{i}" for i in range(40)], "embedding": list(users),
                              "seq_len": rng.integers(1, 50, 40), "last_event_ts": T0 - rng.integers(1, 10_000, 40)})
    item_rows = pd.DataFrame({"item_id": [f"i{j}" for j in range(60)], "embedding": list(items)})
    store.write_offline(USER_EMBEDDING, VERSION, user_rows)
    store.write_offline(ITEM_EMBEDDING, VERSION, item_rows)
    n = 3000
    u, i = rng.integers(0, 40, n), rng.integers(0, 60, n)
    ts = np.sort(T0 + rng.integers(1, 30 * 86_400, n))
    label = ((users[u] * items[i]).sum(axis=1) > 0).astype(np.int8)
    labels = pd.DataFrame({"user_id": [f"u{k}" for k in u], "item_id": [f"i{k}" for k in i], "timestamp": ts,
                           "label": label, "split": np.where(np.arange(n) < n // 2, "train", "test")})
    fc = load_feature_config(SHIPPED)
    ts_all = build_training_set(labels, cfg, VERSION, fc)
    return {"cfg": cfg, "store": store, "fc": fc, "ts": ts_all, "user_rows": user_rows, "item_rows": item_rows}


@pytest.fixture(scope="module")
def trained(world):
    from ranker_integration.ranker import train_ranker

    cfg = RankerConfig(epochs=4, batch_size=128, hidden_units=[32, 16], learning_rate=3e-3)
    ts = world["ts"]
    return {flag: train_ranker(ts.split("train"), ts.split("test"), world["fc"], cfg, use_hllm=flag, seed=0)
            for flag in (True, False)}


def test_metrics_auc_and_gauc():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(auc([1, 1], [0.1, 0.2]))
    # group a perfectly ordered (4 rows), group b reversed (2 rows); group c has one class (ignored)
    g = ["a", "a", "a", "a", "b", "b", "c"]
    assert gauc(g, [0, 0, 1, 1, 0, 1, 1], [1, 2, 3, 4, 2, 1, 5]) == pytest.approx((1.0 * 4 + 0.0 * 2) / 6)


def test_hllm_features_lift_the_ranker_on_the_later_split(trained):
    with_hllm, without = trained[True], trained[False]
    assert with_hllm.test_rows == without.test_rows == 1500
    assert "user_item_score" in with_hllm.feature_names and without.feature_names == []
    assert with_hllm.auc > 0.8, with_hllm.summary()
    assert with_hllm.auc > without.auc + 0.1 and with_hllm.gauc > without.gauc


def test_saved_model_round_trip_scores_identically(world, trained, tmp_path):
    from ranker_integration.ranker import export_ranker, load_ranker, model_inputs, predict

    result = trained[True]
    path = export_ranker(result, tmp_path / "saved_model")
    assert (path / "saved_model.pb").is_file()
    test = world["ts"].split("test")
    inputs = model_inputs(test.frame, test.features, world["fc"], use_hllm=True)
    before = predict(result.model, inputs)
    reloaded = load_ranker(path)
    after = reloaded.score(inputs)
    assert reloaded.bundle_version == VERSION and reloaded.use_hllm
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert auc(test.frame["label"].to_numpy(), after) == pytest.approx(result.auc)


def test_request_scorer_reads_online_and_matches_training_features(world, trained, tmp_path):
    from ranker_integration.ranker import export_ranker, load_ranker, model_inputs
    from ranker_integration.serving import RequestScorer

    store, fc = world["store"], world["fc"]
    ranker = load_ranker(export_ranker(trained[True], tmp_path / "saved_model"))
    store.push_user_embeddings(world["user_rows"].assign(bundle_version=VERSION))
    store.push_item_embeddings(world["item_rows"].assign(bundle_version=VERSION))
    store.push_item_embeddings(pd.DataFrame({"item_id": ["i59"], "embedding": [np.ones(DIM, np.float32)],
                                             "bundle_version": ["hllm-otherversion"]}))
    now = T0 + 40 * 86_400
    candidates = ["i0", "i1", "i2", "i59", "unknown-item"]
    scored = RequestScorer(ranker, store, fc).score("u5", candidates, now_ts=now)
    assert scored.user_found and scored.items_found.tolist() == [True, True, True, False, False]

    # the same request through the offline path: a label at `now` joins the same user row point in time
    labels = pd.DataFrame({"user_id": "u5", "item_id": candidates, "timestamp": now, "label": 0, "split": "test"})
    offline = build_training_set(labels, world["cfg"], VERSION, fc)
    offline.features["item_embedding"][3] = 0.0  # i59 offline is this version's row; online it is another
    offline.features["user_item_score"][3] = 0.0  # version's, so it counts as missing: the default
    expected = ranker.score(model_inputs(offline.frame, offline.features, fc, use_hllm=True))
    np.testing.assert_allclose(scored.scores, expected, rtol=1e-5, atol=1e-6)

    cold = RequestScorer(ranker, store, fc).score("never-seen-user", ["i0", "i1"], now_ts=now)
    assert not cold.user_found
    # a user with no row anywhere scores with the user-side defaults, the same offline and online
    np.testing.assert_allclose(cold.scores, _offline_scores(ranker, world, "never-seen-user", ["i0", "i1"], now),
                               rtol=1e-5, atol=1e-6)


def _offline_scores(ranker, world, user: str, candidates: list[str], now: int) -> np.ndarray:
    """The ranker's scores for one request built by the offline path (point-in-time join, defaults for
    whatever has no row): what the request-time scorer must reproduce."""
    from ranker_integration.ranker import model_inputs

    labels = pd.DataFrame({"user_id": user, "item_id": candidates, "timestamp": now, "label": 0, "split": "test"})
    offline = build_training_set(labels, world["cfg"], VERSION, world["fc"])
    return ranker.score(model_inputs(offline.frame, offline.features, world["fc"], use_hllm=True))


def test_a_request_with_nothing_online_scores_every_candidate_with_its_defaults(world, trained, tmp_path):
    """Issue 20: no candidate online used to give [n, 0] vectors and a shape error; None ids read a user "None"."""
    from feature_gen.store.feature_store import FeatureStoreError
    from ranker_integration.ranker import export_ranker, load_ranker
    from ranker_integration.serving import RequestScorer

    store, fc = world["store"], world["fc"]
    got = store.item_embeddings(["never-1", "never-2"], dim=DIM)
    assert got.vectors.shape == (2, DIM) and np.isnan(got.vectors).all() and not got.found.any()
    assert store.user_embeddings([], dim=DIM).vectors.shape == (0, DIM)

    scorer = RequestScorer(load_ranker(export_ranker(trained[True], tmp_path / "saved_model")), store, fc)
    now = T0 + 40 * 86_400
    for user in ("u5", "never-seen-user"):
        scored = scorer.score(user, ["never-1", "never-2", "never-3"], now_ts=now)
        assert scored.scores.shape == (3,) and not scored.items_found.any()
    # no row anywhere for the user or the items: every feature is its default, as offline
    offline = _offline_scores(scorer.ranker, world, "never-seen-user", ["never-1", "never-2", "never-3"], now)
    np.testing.assert_allclose(scored.scores, offline, rtol=1e-5, atol=1e-6)

    with pytest.raises(FeatureStoreError, match="user_id at position 0 is None"):
        store.user_embeddings([None])
    with pytest.raises(ValueError, match="user_id is None"):
        scorer.score(None, ["i0"], now_ts=now)
    with pytest.raises(ValueError, match="item_ids: 1 missing id.*position 1"):
        scorer.score("u5", ["i0", None], now_ts=now)


def test_click_score_is_the_same_in_the_training_set_and_at_request_time(world, trained, tmp_path):
    """Issue 24: a contract with click_score computes it with the bundle's late-fusion head through one
    function on both sides; the value for the same user and item is the same offline and online."""
    import torch

    from feature_gen.model.losses import LateFusionHead
    from ranker_integration.click_head import ClickHead, ClickHeadError
    from ranker_integration.ranker import export_ranker, load_ranker
    from ranker_integration.serving import RequestScorer

    store = world["store"]
    fc = load_feature_config(SHIPPED.with_name("feature_config_discriminative.yaml"))
    torch.manual_seed(0)
    module = LateFusionHead(DIM, 16)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    head = ClickHead(module.eval(), VERSION)
    ranker = load_ranker(export_ranker(trained[True], tmp_path / "saved_model"))
    with pytest.raises(ClickHeadError, match=r"RequestScorer: feature click_score \(function late_fusion\) needs"):
        RequestScorer(ranker, store, fc)
    store.push_user_embeddings(world["user_rows"].assign(bundle_version=VERSION))
    store.push_item_embeddings(world["item_rows"].assign(bundle_version=VERSION))
    now = T0 + 40 * 86_400
    candidates = ["i0", "i1", "i2", "i3"]
    online = RequestScorer(ranker, store, fc, click_head=head).score("u7", candidates, now_ts=now).features["click_score"]
    labels = pd.DataFrame({"user_id": "u7", "item_id": candidates, "timestamp": now, "label": 0, "split": "test"})
    offline = build_training_set(labels, world["cfg"], VERSION, fc, click_head=head).features["click_score"]
    np.testing.assert_array_equal(online, offline)
    # and it is the head's logit for that user and item, not the default
    users = np.stack(world["user_rows"]["embedding"].to_numpy())[[7] * 4]
    items = np.stack(world["item_rows"]["embedding"].to_numpy())[:4]
    np.testing.assert_allclose(online[:, 0], head(users, items), rtol=1e-6)
    assert np.ptp(online[:, 0]) > 0


@pytest.mark.parametrize("projection, width", [(8, 16 + 16 + 4 + 3 + 2 * 8 + 1), (None, 16 + 16 + 4 + 3 + 2 * DIM + 1)])
def test_embeddings_enter_the_ranker_unit_length_and_projected(projection, width):
    """ranker.embedding_projection_dim: each embedding is L2-normalised and projected before the crosses
    (None: the raw vector); scalars enter as they are. A zero (cold-start default) embedding stays zero."""
    from ranker_integration.ranker import build_ranker

    cfg = RankerConfig(embedding_projection_dim=projection)
    model = build_ranker(cfg, {"user_embedding": DIM, "item_embedding": DIM, "user_item_score": 1})
    assert model.get_layer("features").output.shape[-1] == width
    if projection:
        unit = model.get_layer("user_embedding_unit")
        v = np.array([[3.0] * DIM, [0.0] * DIM], dtype=np.float32)
        out = np.asarray(unit(v))
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0, 0.0], atol=1e-5)
