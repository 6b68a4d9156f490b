"""The bundle's late-fusion head as the ranker loads it (ranker_integration/click_head.py): the same
logits as the bundle's HLLM, refused for a bundle without one, and required (naming the feature) by a
training set whose contract has click_score."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.config import StoreConfig
from feature_gen.model.bundle import load_bundle, save_bundle
from feature_gen.model.hllm import build_hllm
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING
from ranker_integration.click_head import ClickHeadError, click_head_for, load_click_head
from ranker_integration.feature_config import SHIPPED_CONFIG, load_feature_config
from ranker_integration.training_set import build_training_set

from tests.conftest import tiny_config

DISCRIMINATIVE = Path(__file__).resolve().parent.parent / "ranker_integration" / "feature_config_discriminative.yaml"


@pytest.fixture(scope="module")
def late_bundle(tmp_path_factory):
    cfg = tiny_config(loss={"objective": "discriminative", "fusion": "late", "fusion_hidden": 24})
    model, tok = build_hllm(cfg)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.late_head.parameters():
            p.normal_()  # a head far from its initialisation: a wrong load would show
    return save_bundle(model.eval(), tok, cfg, tmp_path_factory.mktemp("late") / "bundles")


def test_loaded_head_scores_like_the_bundle(late_bundle):
    head = load_click_head(late_bundle)
    model = load_bundle(late_bundle).model
    rng = np.random.default_rng(1)
    users, items = rng.standard_normal((6, 64)).astype(np.float32), rng.standard_normal((6, 64)).astype(np.float32)
    with torch.no_grad():
        want = model.late_head(torch.from_numpy(users), torch.from_numpy(items).unsqueeze(1)).squeeze(1).numpy()
    got = head(users, items)
    assert got.shape == (6,) and got.dtype == np.float32 and np.ptp(got) > 0
    np.testing.assert_array_equal(got, want)
    assert head.bundle_version == late_bundle.name
    with pytest.raises(ValueError, match=r"must both be \[m, 64\]"):
        head(users[:, :32], items[:, :32])


def test_a_bundle_without_a_late_head_is_refused_naming_the_field(tiny_bundle):
    with pytest.raises(ClickHeadError, match=r"manifest.fusion_head is 'none'.*loss.fusion late"):
        load_click_head(tiny_bundle)
    # a contract without click_score loads nothing
    assert click_head_for(load_feature_config(SHIPPED_CONFIG), tiny_bundle) is None


def test_training_set_needs_the_head_of_its_own_version(tmp_path, late_bundle):
    from feature_gen.store.feature_store import open_store

    store_cfg = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"))
    store = open_store(store_cfg)
    version = late_bundle.name
    rng = np.random.default_rng(2)
    users, items = rng.standard_normal((2, 64)).astype(np.float32), rng.standard_normal((3, 64)).astype(np.float32)
    store.write_offline(USER_EMBEDDING, version, pd.DataFrame({"user_id": ["u1", "u2"], "embedding": list(users),
                                                               "seq_len": [3, 4], "last_event_ts": [100, 100]}))
    store.write_offline(ITEM_EMBEDDING, version, pd.DataFrame({"item_id": ["a", "b", "c"], "embedding": list(items)}))
    labels = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["a", "b", "c"], "timestamp": [200, 200, 50],
                           "label": [1, 0, 1], "split": "train"})
    fc = load_feature_config(DISCRIMINATIVE)
    with pytest.raises(ClickHeadError, match=r"build_training_set: feature click_score \(function late_fusion\) needs"):
        build_training_set(labels, store_cfg, version, fc)
    head = click_head_for(fc, late_bundle)
    ts = build_training_set(labels, store_cfg, version, fc, click_head=head)
    score = ts.features["click_score"][:, 0]
    np.testing.assert_allclose(score[:2], head(users[[0, 1]], items[[0, 1]]), rtol=1e-6)
    assert score[2] == 0.0  # the label at t=50 precedes u1's only snapshot (t=100): the default
    with pytest.raises(ClickHeadError, match=r"the click head is bundle hllm-\w+'s, the embeddings are hllm-other's"):
        build_training_set(labels, store_cfg, "hllm-other", fc, click_head=head)
