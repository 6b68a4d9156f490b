"""A run started from a bundle (train.init_bundle) must read inputs the way the bundle was trained:
trainer/init_bundle.py compares the fields that decide that and names the first one that differs."""

from __future__ import annotations

import pytest

from feature_gen.config import ConfigError
from tests.conftest import tiny_config
from trainer.init_bundle import MUST_AGREE, check_bundle_agrees


def _with(cfg, dotted: str, value):
    section, field = dotted.split(".")
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update={field: value})})


@pytest.mark.parametrize("dotted, value", [
    ("item_text.prompt", ""),
    ("item_text.max_item_tokens", 17),
    ("item_llm.pooling", "mean"),
    ("item_llm.center", True),
    ("item_llm.padding_side", "left"),
    ("user_llm.use_timestamps", True),
    ("user_llm.num_time_buckets", 9),
])
def test_a_field_that_decides_the_inputs_must_match_the_bundle(dotted, value):
    bundle_cfg = tiny_config()
    check_bundle_agrees(bundle_cfg, bundle_cfg, "b")  # the same config passes
    assert dotted in MUST_AGREE or dotted.split(".")[0] in MUST_AGREE
    with pytest.raises(ConfigError, match=rf"^{dotted}: .* but the init_bundle b was trained with"):
        check_bundle_agrees(_with(bundle_cfg, dotted, value), bundle_cfg, "b")


def test_fields_a_run_may_change_pass():
    bundle_cfg = tiny_config()
    run = bundle_cfg.model_copy(update={"train": bundle_cfg.train.model_copy(update={"lr": 0.5, "stage": 2}),
                                        "loss": bundle_cfg.loss.model_copy(update={"num_negatives": 3})})
    check_bundle_agrees(run, bundle_cfg, "b")


def test_both_trainers_refuse_a_bundle_whose_padding_side_differs(tmp_path, tiny_bundle):
    """Generative (trainer/train.py) and discriminative (trainer/discriminative.py) load through one
    function: a left-padded run from a right-padded bundle fails before any training, naming the field."""
    from feature_gen.data.sequences import load_interaction_data
    from tests.test_discriminative import disc_config
    from tests.toys import agree_with_bundle, toy_config
    from trainer.discriminative import train_discriminative
    from trainer.train import build_recommender

    cfg = _with(agree_with_bundle(toy_config(tmp_path, stage=2), tiny_bundle), "item_llm.padding_side", "left")
    with pytest.raises(ConfigError, match="^item_llm.padding_side: 'left' but the init_bundle"):
        build_recommender(cfg, load_interaction_data(cfg.data, cfg.item_text))
    disc = _with(agree_with_bundle(disc_config(tmp_path / "d", fusion="late"), tiny_bundle), "item_llm.padding_side", "left")
    with pytest.raises(ConfigError, match="^item_llm.padding_side: 'left' but the init_bundle"):
        train_discriminative(disc)
    assert not (tmp_path / "d" / "run" / "metrics.jsonl").exists()
