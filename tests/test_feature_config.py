"""The ranker's feature config: schema errors, and validation against a real Feast repo and a real bundle."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from feature_gen.config import StoreConfig
from ranker_integration.feature_config import (
    FeatureConfigError,
    feature_config_from_dict,
    load_feature_config,
    parse_staleness,
    pin_to_bundle,
    validate_feature_config,
)

SHIPPED = Path(__file__).resolve().parent.parent / "ranker_integration" / "feature_config.yaml"


@pytest.fixture(scope="module")
def applied_store(tmp_path_factory) -> StoreConfig:
    from feature_gen.store.feature_store import open_store

    root = tmp_path_factory.mktemp("fc_store")
    cfg = StoreConfig(repo_path=str(root / "repo"), offline_root=str(root / "offline"))
    open_store(cfg)  # registers the views
    return cfg


def _raw() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def _with(feature: str, **changes) -> dict:
    raw = _raw()
    for f in raw["features"]:
        if f["name"] == feature:
            f.update(changes)
    return raw


def _problems(raw: dict, store: StoreConfig, bundle) -> str:
    fc = feature_config_from_dict(raw, "test.yaml")
    with pytest.raises(FeatureConfigError) as err:
        validate_feature_config(fc, store, bundle)
    return str(err.value)


def test_shipped_config_matches_store_and_bundle(applied_store, tiny_bundle):
    fc = load_feature_config(SHIPPED)
    assert fc.names == ["user_embedding", "item_embedding", "user_item_score", "sequence_length", "freshness_seconds"]
    report = validate_feature_config(fc, applied_store, tiny_bundle)
    assert report.item_dim == 64 and len(report.checked) == 5 and not report.pinned
    pinned = pin_to_bundle(fc, {"version": report.bundle_version, "item_dim": 64})
    assert pinned.bundle_version == tiny_bundle.name
    assert pinned.feature("user_embedding").dimension == 64
    assert validate_feature_config(pinned, applied_store, tiny_bundle).pinned


def test_pinned_to_another_bundle_version_is_refused(applied_store, tiny_bundle):
    raw = _raw()
    raw["bundle_version"] = "hllm-000000000000"
    msg = _problems(raw, applied_store, tiny_bundle)
    assert msg.startswith("bundle_version: the config is pinned to hllm-000000000000") and tiny_bundle.name in msg


@pytest.mark.parametrize(
    "feature, changes, expected",
    [
        ("sequence_length", {"dtype": "float32"}, "features[3] (sequence_length).dtype: user_embedding.seq_len is Int64"),
        ("sequence_length", {"field": "seqlen"}, "features[3] (sequence_length): view 'user_embedding' has no field 'seqlen'"),
        ("item_embedding", {"view": "item_vectors"}, "features[1] (item_embedding): view 'item_vectors' is not in the feature store"),
        ("item_embedding", {"entity": "user"}, "features[1] (item_embedding).entity: view 'item_embedding' is keyed by item"),
        ("user_embedding", {"dimension": 16, "default": 0.0}, "features[0] (user_embedding).dimension: 16, but bundle"),
        ("sequence_length", {"dimension": 8}, "features[3] (sequence_length).dimension: user_embedding.seq_len is a scalar"),
        ("freshness_seconds", {"inputs": ["user_embedding:last_seen"]}, "features[4] (freshness_seconds).inputs: view 'user_embedding' has no field 'last_seen'"),
        ("user_item_score", {"dimension": 3, "default": 0.0}, "features[2] (user_item_score).dimension: cosine yields a scalar"),
    ],
)
def test_mismatch_with_store_or_bundle_names_the_feature(applied_store, tiny_bundle, feature, changes, expected):
    msg = _problems(_with(feature, **changes), applied_store, tiny_bundle)
    assert msg.splitlines()[0].startswith(expected), msg


def test_every_problem_is_reported(applied_store, tiny_bundle):
    raw = _with("sequence_length", dtype="float32")
    raw = copy.deepcopy(raw)
    raw["features"][1]["view"] = "nope"
    lines = _problems(raw, applied_store, tiny_bundle).splitlines()
    assert len(lines) == 2 and "(item_embedding)" in lines[0] and "(sequence_length)" in lines[1]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["features"][0].update(colour="red"), "features[0] (user_embedding).colour: unknown key"),
        (lambda r: r["features"][0].update(max_staleness="a week"), "features[0] (user_embedding).max_staleness: expected a duration"),
        (lambda r: r["features"][0].pop("view"), "features[0] (user_embedding): source 'view' needs view"),
        (lambda r: r["features"][2].update(inputs=["user_embedding"]), "function cosine takes 2 input(s); got 1"),
        (lambda r: r["features"][2].update(inputs=["user_embedding", "item_vec"]), "'item_vec' is neither a feature"),
        (lambda r: r["features"][3].update(dtype="int8"), "features[3] (sequence_length).dtype: Input should be"),
        (lambda r: r["features"][3].update(dimension=0), "features[3] (sequence_length).dimension"),
        (lambda r: r["features"].append(dict(r["features"][0])), "declared twice: user_embedding"),
        (lambda r: r.pop("bundle_version"), "bundle_version: required key is missing"),
    ],
)
def test_malformed_config_is_one_line_naming_the_key(mutate, expected):
    raw = _raw()
    mutate(raw)
    with pytest.raises(FeatureConfigError) as err:
        feature_config_from_dict(raw, "bad.yaml")
    assert str(err.value).startswith("bad.yaml: ") and expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_staleness_durations():
    assert parse_staleness("30d").days == 30 and parse_staleness("90s").total_seconds() == 90
    assert parse_staleness("none") is None and parse_staleness(None) is None


def test_unapplied_store_and_missing_bundle_are_clear(tmp_path, tiny_bundle, applied_store):
    fc = load_feature_config(SHIPPED)
    bare = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "off"))
    with pytest.raises(FeatureConfigError, match="no feature views registered|no readable Feast registry"):
        validate_feature_config(fc, bare, tiny_bundle)
    with pytest.raises(FeatureConfigError, match="bundle: .*bundle folder not found"):
        validate_feature_config(fc, applied_store, tmp_path / "no-bundle")


def test_cli_exit_codes(applied_store, tiny_bundle, tmp_path, capsys):
    from hllm.cli import main

    store_args = ["--set", f"store.repo_path={applied_store.repo_path}", "--set", f"store.offline_root={applied_store.offline_root}"]
    _publish_version(applied_store, tiny_bundle.name, n_items=20, n_users=10)
    assert main(["validate-features", "--bundle", str(tiny_bundle), *store_args]) == 0  # the shipped config
    out = capsys.readouterr().out
    assert "5 features match" in out and f"item_embedding       20 rows of {tiny_bundle.name} offline; 20 of 20 probed online" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("sequence_length", dtype="float32")))
    assert main(["validate-features", "--features", str(bad), "--bundle", str(tiny_bundle), *store_args]) == 2
    assert "features[3] (sequence_length).dtype" in capsys.readouterr().err


def _publish_version(store_cfg: StoreConfig, version: str, n_items: int, n_users: int, online_items: int | None = None):
    """Offline rows of `version` (what the Spark jobs write) and the first `online_items` of the items
    online (all by default), users all online."""
    import numpy as np
    import pandas as pd

    from feature_gen.store.feature_store import open_store
    from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING

    rng = np.random.default_rng(0)
    store = open_store(store_cfg)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n_items)],
                          "embedding": list(rng.standard_normal((n_items, 64)).astype(np.float32))})
    users = pd.DataFrame({"user_id": [f"u{k}" for k in range(n_users)],
                          "embedding": list(rng.standard_normal((n_users, 64)).astype(np.float32)),
                          "seq_len": 5, "last_event_ts": 1_700_000_000})
    store.write_offline(ITEM_EMBEDDING, version, items)
    store.write_offline(USER_EMBEDDING, version, users)
    store.push_item_embeddings(items.iloc[: online_items if online_items is not None else n_items].assign(bundle_version=version))
    store.push_user_embeddings(users.assign(bundle_version=version))


def test_validate_features_counts_rows_and_fails_on_an_empty_or_thin_version(tmp_path, tiny_bundle, capsys):
    """The issue's case: a new bundle version with zero rows offline and online passed as ok (rc 0)."""
    from hllm.cli import main

    from feature_gen.store.feature_store import open_store

    cfg = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"))
    open_store(cfg)
    args = ["validate-features", "--bundle", str(tiny_bundle), "--set", f"store.repo_path={cfg.repo_path}",
            "--set", f"store.offline_root={cfg.offline_root}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"item_embedding: 0 rows of bundle {tiny_bundle.name} offline" in err
    assert f"user_embedding: 0 rows of bundle {tiny_bundle.name} offline" in err
    # another version's rows do not count for this one
    _publish_version(cfg, "hllm-000000000000", n_items=5, n_users=5)
    assert main(args) == 2
    assert f"item_embedding: 0 rows of bundle {tiny_bundle.name} offline" in capsys.readouterr().err
    # offline complete, 8 of 10 items online: below the default 99 %, named with its count
    _publish_version(cfg, tiny_bundle.name, n_items=10, n_users=4, online_items=8)
    assert main(args) == 2
    assert f"item_embedding: 8 of 10 probed rows of bundle {tiny_bundle.name} online (80.0%)" in capsys.readouterr().err
    assert main([*args, "--min-coverage", "0.8"]) == 0
    capsys.readouterr()
    # offline rows against the stated catalogue size
    assert main([*args, "--min-coverage", "0.8", "--catalogue-size", "100"]) == 2
    assert "item_embedding: 10 rows of bundle" in capsys.readouterr().err
