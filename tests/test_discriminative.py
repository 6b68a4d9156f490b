"""The discriminative trainer (trainer/discriminative.py) on tiny random models and a toy catalogue
whose users like the even items: DeepSpeed, selection on validation AUC/GAUC, a bundle with the head."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.config import ConfigError, config_from_dict
from feature_gen.model.bundle import load_bundle
from trainer.discriminative import (
    ClickModel, as_batch, build_click_model, click_requests, load_labelled_data, train_discriminative,
)

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def toy_rated(folder: Path, num_items=30, num_users=40, length=12, ratings=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = pd.DataFrame({"item_id": np.arange(1, num_items + 1),
                          "title": [f"item number {i}" for i in range(1, num_items + 1)],
                          "tags": [["even" if i % 2 == 0 else "odd"] for i in range(1, num_items + 1)]})
    rows = []
    for u in range(num_users):
        start = int(rng.integers(num_items))
        for t in range(length):
            item = (start + t) % num_items + 1
            row = {"user_id": f"u{u}", "item_id": item, "timestamp": 1_700_000_000 + 60 * t + int(rng.integers(30))}
            if ratings:
                row["rating"] = 5.0 if item % 2 == 0 else 1.0
            rows.append(row)
    # a user whose every event is in the labelled period: the first has no history (cold start)
    rows += [{"user_id": "cold", "item_id": i, "timestamp": 1_700_000_600 + i, **({"rating": 5.0} if ratings else {})}
             for i in (2, 4, 6)]
    items.to_parquet(folder / "items.parquet")
    pd.DataFrame(rows).to_parquet(folder / "inter.parquet")
    return folder / "items.parquet", folder / "inter.parquet"


def disc_config(tmp_path: Path, fusion="late", ratings=True, **sections):
    items, inter = toy_rated(tmp_path / "data", ratings=ratings)
    raw = {
        "seed": 3,
        "data": {"source": "files", "items_path": str(items), "interactions_path": str(inter), "max_seq_len": 8},
        "item_text": {"prompt": "", "max_item_tokens": 32},
        "item_llm": {"source": "tiny_random", "tiny": TINY},
        "user_llm": {"source": "tiny_random", "tiny": {**TINY, "seed": 1}, "use_timestamps": True},
        "loss": {"objective": "discriminative", "fusion": fusion, "next_weight": 0.5, "temperature_init": 0.1,
                 "nce_threshold": 1.0, "fusion_hidden": 32},
        "ranker": {"labels": "rating_and_sampled", "negatives_per_positive": 1, "history_quantile": 0.5,
                   "test_fraction": 0.3, "negative_sampling": "uniform"},
        "train": {"stage": 2, "output_dir": str(tmp_path / "run"), "epochs": 3, "batch_size": 16, "lr": 3e-3,
                  "warmup_steps": 2, "early_stopping_patience": 3},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def test_requests_hold_only_the_strict_past(tmp_path):
    cfg = disc_config(tmp_path)
    data, inter, labels = load_labelled_data(cfg)
    req = click_requests(labels, inter, data.item_index(), cfg.data.max_seq_len)
    assert len(req) > 0 and (req.labels >= 0).sum() < len(labels)
    # the cold user's first label has no earlier event: no request; its later ones see the first
    assert (labels[labels["user_id"] == "cold"]["source"] == "rating").sum() == 3 and sorted(req.at[req.users == "cold"]) == [1_700_000_604, 1_700_000_606]
    assert set(req.split) == {"train", "test"}
    by_user = {u: g.sort_values("timestamp", kind="stable") for u, g in inter.groupby("user_id")}
    for r in range(len(req)):
        past = by_user[req.users[r]]
        past = past[past["timestamp"] < req.at[r]]
        n = int((req.history[r] > 0).sum())
        assert n == min(len(past), cfg.data.max_seq_len) and (req.history_ts[r, :n] < req.at[r]).all()
        assert req.history[r, :n].tolist() == [int(i) for i in past["item_id"]][-n:]  # item "i" is internal id i here (ids are strings)


@pytest.mark.parametrize("next_weight", [0.0, 0.5])
def test_lambda_zero_removes_the_next_item_term_from_the_step(tmp_path, next_weight):
    cfg = disc_config(tmp_path, loss={"next_weight": next_weight})
    data, inter, labels = load_labelled_data(cfg)
    req = click_requests(labels, inter, data.item_index(), cfg.data.max_seq_len)
    hllm, _, _, _, table = build_click_model(cfg, data)
    parts = ClickModel(hllm, table).losses(as_batch(req, slice(0, 8)))
    assert ("next" in parts) == (next_weight > 0)
    expected = parts["gen"] + parts["bce"] + next_weight * parts.get("next", torch.tensor(0.0))
    assert parts["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_late_fusion_trains_selects_and_freezes_a_bundle_with_its_head(tmp_path):
    cfg = disc_config(tmp_path)
    result = train_discriminative(cfg)
    assert len(result.history) == 3 and result.best_epoch == max(
        range(3), key=lambda e: (result.history[e]["gauc"], result.history[e]["auc"]))
    # liked = even items; the head sees the item's text embedding, so it must beat chance clearly
    assert result.test["auc"] > 0.7, result.test
    assert 0.0 <= result.test_cosine["auc"] <= 1.0
    bundle = load_bundle(result.bundle)
    assert bundle.manifest["fusion_head"] == {"fusion": "late", "item_dim": 32, "hidden": 32}
    assert bundle.manifest["metrics"]["test"]["auc"] == pytest.approx(result.test["auc"])
    assert (result.run_dir / "result.json").is_file()


def test_early_fusion_trains_from_a_generative_bundle(tmp_path, tiny_bundle):
    cfg = disc_config(tmp_path, fusion="early", train={"epochs": 1, "max_steps": 3, "init_bundle": str(tiny_bundle)})
    result = train_discriminative(cfg)
    bundle = load_bundle(result.bundle)
    assert bundle.manifest["fusion_head"] == {"fusion": "early", "item_dim": 64}  # the init bundle's width
    assert bundle.model.early_scorer is not None and bundle.cfg.loss.objective == "discriminative"
    assert np.isfinite(result.valid["auc"])


def test_bad_discriminative_input_fails_before_training_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"loss.fusion: late fusion trains in stage 2 .*train.stage is 1"):
        train_discriminative(disc_config(tmp_path, train={"stage": 1}))
    with pytest.raises(ConfigError, match=r"ranker.labels 'rating_and_sampled': interactions have no 'rating' column"):
        train_discriminative(disc_config(tmp_path, ratings=False))
    with pytest.raises(ConfigError, match="train.model"):
        train_discriminative(disc_config(tmp_path, train={"model": "sasrec"}))
    with pytest.raises(ConfigError, match="loss.bce_weight"):
        train_discriminative(disc_config(tmp_path, loss={"bce_weight": 0.0}))
