"""The discriminative trainer (trainer/discriminative.py) on tiny random models and a toy catalogue
whose users like the even items: the one DeepSpeed loop (trainer/loop.py), selection on validation
AUC/GAUC through its selection hook, a bundle with the head."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_gen.config import ConfigError, config_from_dict
from feature_gen.model.bundle import load_bundle
from trainer.discriminative import (
    DiscriminativeRecommender, as_batch, build_click_model, click_requests, load_labelled_data, train_discriminative,
)
from trainer.recommenders import Recommender

from tests.toys import TINY, agree_with_bundle, cycle_walks

def disc_config(tmp_path: Path, fusion="late", ratings=True, **sections):
    return config_from_dict(disc_raw(tmp_path, fusion, ratings, **sections))


def disc_raw(tmp_path: Path, fusion="late", ratings=True, **sections) -> dict:
    items, inter = cycle_walks(tmp_path / "data", num_users=40, rated=True, ratings=ratings)
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
    return raw


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
    rec, _, _, _ = build_click_model(cfg, data)
    assert isinstance(rec, Recommender) and not rec.training_item_llm
    batch = as_batch(req, slice(0, 8))
    parts = rec.losses(batch)
    assert ("next" in parts) == (next_weight > 0)
    expected = parts["gen"] + parts["bce"] + next_weight * parts.get("next", torch.tensor(0.0))
    assert parts["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the loop's step is that total; the statistics it logs say which terms ran
    out = rec.training_step(batch, 0)
    assert out.loss.item() == pytest.approx(parts["total"].item(), rel=1e-6)
    assert ("loss_next" in out.stats) == (next_weight > 0) and out.stats["positions"] == int((batch["history"] > 0).sum())


def test_late_fusion_trains_selects_and_freezes_a_bundle_with_its_head(tmp_path):
    cfg = disc_config(tmp_path)
    result = train_discriminative(cfg)
    # the loop numbers an evaluation by the epochs done before it (1..3 here)
    assert len(result.history) == 3 and result.best_epoch == max(
        result.history, key=lambda h: (h["gauc"], h["auc"]))["epoch"]
    # liked = even items; the head sees the item's text embedding, so it must beat chance clearly
    assert result.test["auc"] > 0.7, result.test
    bundle = load_bundle(result.bundle)
    assert bundle.manifest["fusion_head"] == {"fusion": "late", "item_dim": 32, "hidden": 32}
    assert bundle.manifest["metrics"]["test"]["auc"] == pytest.approx(result.test["auc"])
    assert (result.run_dir / "result.json").is_file()
    # the scores handed to callers (the ranker rows of the bench) are the selected head's, as judged
    from trainer.discriminative import click_metrics, score_requests

    for which in ("valid", "test"):
        rescored = score_requests(result.recommender, result.requests[which], cfg.train.batch_size)
        np.testing.assert_allclose(result.scores[which], rescored, rtol=1e-5, atol=1e-6)
    assert click_metrics(result.requests["test"], result.scores["test"])["auc"] == pytest.approx(result.test["auc"])
    # the cosine baseline reported beside the head is the selected model's user-item cosine, recomputed
    cosine = score_requests(result.recommender, result.requests["test"], cfg.train.batch_size, kind="cosine")
    assert click_metrics(result.requests["test"], cosine)["auc"] == pytest.approx(result.test_cosine["auc"])


def test_early_fusion_trains_from_a_generative_bundle(tmp_path, tiny_bundle):
    cfg = agree_with_bundle(disc_config(tmp_path, fusion="early", train={"epochs": 1, "max_steps": 3}), tiny_bundle)
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


def test_quality_runner_refuses_a_lambda_that_makes_late_the_same_run_as_late_next0(tmp_path):
    from benchmarks.discriminative_bench import quality

    with pytest.raises(ConfigError, match=r"loss.next_weight: .*got 0.0"):
        quality(disc_config(tmp_path, loss={"next_weight": 0.0}), [0], tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_quality_runner_writes_every_row_per_seed_with_mean_sd_and_its_command(tmp_path):
    """benchmarks/discriminative_bench.py quality end to end on the toy data: (a) the generative cosine,
    (b) late, (c) early, (d) late with lambda 0, (e) the ranker with each as its feature (and without),
    AUC and GAUC per seed with mean and sd, the command that made it, under the given results dir."""
    import statistics

    import yaml

    from benchmarks.discriminative_bench import main, markdown

    raw = disc_raw(tmp_path, train={"epochs": 1, "max_steps": 2},
                   ranker={"epochs": 1, "batch_size": 64, "hidden_units": [8]})
    config = tmp_path / "quality.yaml"
    config.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    argv = ["quality", "--config", str(config), "--seeds", "0", "1", "--set", "train.lr=0.003",
            "--out-dir", str(tmp_path / "runs"), "--results-dir", str(results)]
    main(argv)
    doc = json.loads((results / "discriminative_quality.json").read_text())
    scorers = ["generative_cosine", "late", "late_next0", "early"]
    assert list(doc["table"]) == scorers + [f"ranker+{s}" for s in scorers] + ["ranker_ids_only"]
    for name, row in doc["table"].items():
        assert row["seeds"] == [0, 1], name
        for metric in ("auc", "gauc"):
            values = row[metric]["per_seed"]
            assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values), (name, metric, values)
            assert row[metric]["mean"] == pytest.approx(statistics.fmean(values))
            assert row[metric]["sd"] == pytest.approx(statistics.stdev(values))
    runs = {(r["variant"], r["seed"]): r for r in doc["runs"]}
    assert doc["table"]["late"]["auc"]["per_seed"] == [runs["late", s]["test"]["auc"] for s in (0, 1)]
    # labels differ by seed (sampled negatives), so the two seeds are two measurements, not one repeated
    assert runs["late", 0]["test"]["candidates"] != runs["late", 1]["test"]["candidates"] or \
        runs["late", 0]["test"]["auc"] != runs["late", 1]["test"]["auc"]
    assert runs["ranker+late", 0]["train_rows"] == runs["ranker_ids_only", 0]["train_rows"] > 0
    assert doc["command"] == "python benchmarks/discriminative_bench.py " + " ".join(argv)
    table = markdown(doc)
    assert all(f"| {name} |" in table for name in doc["table"]) and doc["command"] in table


def test_a_discriminative_run_resumes_from_its_checkpoint_like_the_generative_loop(tmp_path):
    """The one loop's checkpoint/resume now serves the discriminative objective: pointed back at the
    checkpoint before its last step, a rerun replays that step with the same loss, keeps the log free
    of repeats, and selects the same weights."""
    cfg = disc_config(tmp_path, train={"epochs": 2, "checkpoint_every_steps": 1})
    first = train_discriminative(cfg, freeze=False)

    def curve():
        rows = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    before = dict(curve())
    checkpoints = first.run_dir / "checkpoints"
    last = max(int(p.name[4:]) for p in checkpoints.glob("step*"))
    assert last == max(before) and (checkpoints / f"step{last - 1}").is_dir()
    (checkpoints / "latest").write_text(f"step{last - 1}")
    again = train_discriminative(cfg, freeze=False)
    after = curve()
    assert [s for s, _ in after] == sorted(before)  # every step once
    assert dict(after)[last] == pytest.approx(before[last], rel=1e-5)
    assert len(again.history) == 2 and again.best_epoch == first.best_epoch
    assert again.test["auc"] == pytest.approx(first.test["auc"], rel=1e-6)


def test_a_diverging_discriminative_step_stops_the_run_through_the_loops_nan_guard(tmp_path):
    """The loop's NaN guard serves the discriminative objective: a non-finite loss stops the run before
    the update, naming the step (a step whose click loss turns NaN at step 2 stands in for divergence)."""
    from trainer.discriminative import ClickExamples, ClickSelection, split_requests
    from trainer.loop import TrainingDiverged, train

    cfg = disc_config(tmp_path)
    data, inter, labels = load_labelled_data(cfg)
    train_req, valid_req, test_req = split_requests(click_requests(labels, inter, data.item_index(), cfg.data.max_seq_len))
    rec, _, _, _ = build_click_model(cfg, data)
    real_step = rec.training_step

    def diverging(batch, step):
        out = real_step(batch, step)
        return out if step < 2 else type(out)(out.loss * float("nan"), out.stats)

    rec.training_step = diverging
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 2 \(epoch 0\)"):
        train(rec, None, data.num_items, cfg, tmp_path / "run", max_seq_len=cfg.data.max_seq_len,
              examples=ClickExamples(train_req), selection=ClickSelection(valid_req, test_req, 16))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # two good steps logged, the diverging one never applied
