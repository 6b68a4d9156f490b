"""item_llm.center: the catalogue mean is fitted once before training, subtracted in every forward, and
travels with the bundle, so training, the stage-2 cache, the frozen bundle and ONNX all give one vector."""

import numpy as np
import pytest
import torch

from export import export_bundle
from feature_gen.config import ConfigError, ItemLLMConfig
from feature_gen.data.sequences import load_interaction_data
from feature_gen.inference.onnx_runtime import load_onnx_encoders
from feature_gen.model.base_models import load_backbone
from feature_gen.model.bundle import load_bundle
from feature_gen.model.item_llm import ItemLLM
from feature_gen.model.item_text import pad_token_ids, tokenize_item_texts
from trainer.recommenders import catalogue_token_ids
from trainer.train import build_recommender, run_training

from tests.toys import toy_config

TEXTS = ["title: Heat. tags: Crime.", "title: Up.", "title: Alien. tags: Horror, Sci-Fi."]


def _pair():
    """The same tiny backbone as a plain and as a centering Item LLM."""
    backbone = load_backbone(ItemLLMConfig(source="tiny_random"))
    return (ItemLLM(backbone.model, pooling="mean").eval(), ItemLLM(backbone.model, pooling="mean", center=True).eval(),
            backbone.tokenizer)


def _embed(model, tok, texts=TEXTS):
    batch = pad_token_ids(tokenize_item_texts(texts, tok, 64), tok.pad_token_id)
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask)


def test_forward_subtracts_the_fitted_catalogue_mean():
    plain, centered, tok = _pair()
    raw = _embed(plain, tok)
    assert centered.needs_center
    torch.testing.assert_close(_embed(centered, tok), raw)  # unfitted: the zero vector, a no-op
    centered.fit_center(raw)
    assert not centered.needs_center
    out = _embed(centered, tok)
    torch.testing.assert_close(out, raw - raw.mean(dim=0))
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(raw.size(1)), atol=1e-5, rtol=0)
    assert "center" in centered.state_dict() and "center" not in plain.state_dict()


def test_fit_center_refuses_what_it_cannot_use():
    plain, centered, _ = _pair()
    with pytest.raises(ValueError, match="without centering"):
        plain.fit_center(torch.randn(3, 64))
    with pytest.raises(ValueError, match=r"\[items, 64\]"):
        centered.fit_center(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"\[items, 64\]"):
        centered.fit_center(torch.randn(0, 64))


def _raw_catalogue(item_llm, tok, cfg, data):
    """The catalogue [N, D] through `item_llm` with its center set aside (the uncentered vectors)."""
    tokens = catalogue_token_ids(data.items, cfg.item_text, tok)
    batch = pad_token_ids(tokens, tok.pad_token_id)
    kept = item_llm.center.clone()
    item_llm.center.zero_()
    try:
        with torch.no_grad():
            return item_llm.eval()(batch.input_ids, batch.attention_mask)
    finally:
        item_llm.center.copy_(kept)


@pytest.mark.parametrize("stage", [1, 2])
def test_the_trainer_fits_the_center_on_the_catalogue_before_training(tmp_path, stage):
    cfg = toy_config(tmp_path, stage=stage)
    cfg = cfg.model_copy(update={"item_llm": cfg.item_llm.model_copy(update={"center": True})})
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, tok, _ = build_recommender(cfg, data)
    raw = _raw_catalogue(rec.hllm.item_llm, tok, cfg, data)
    torch.testing.assert_close(rec.hllm.item_llm.center, raw.mean(dim=0), atol=1e-5, rtol=1e-5)
    table = rec.item_table()[1:]  # what evaluation scores against (stage 2: the cache)
    torch.testing.assert_close(table, raw - raw.mean(dim=0), atol=1e-4, rtol=1e-4)
    assert float(table.mean(dim=0).abs().max()) < 1e-4


def test_a_centered_bundle_carries_its_center_to_stage2_and_to_onnx(tmp_path):
    cfg = toy_config(tmp_path, stage=2, epochs=1, eval_every_epochs=1)
    cfg = cfg.model_copy(update={"item_llm": cfg.item_llm.model_copy(update={"center": True, "pooling": "mean"})})
    result = run_training(cfg, resume=False)
    bundle = load_bundle(result.bundle)
    assert bundle.cfg.item_llm.center and not bundle.model.item_llm.needs_center
    data = load_interaction_data(cfg.data, cfg.item_text)
    raw = _raw_catalogue(bundle.model.item_llm, bundle.tokenizer, cfg, data)
    tokens = catalogue_token_ids(data.items, cfg.item_text, bundle.tokenizer)
    batch = pad_token_ids(tokens, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        served = bundle.model.item_llm(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(served, raw - raw.mean(dim=0), atol=1e-4, rtol=1e-4)

    # a stage-2 run from this bundle keeps the bundle's center (no refit on its own catalogue)
    again = toy_config(tmp_path, stage=2, init_bundle=str(result.bundle), output_dir=str(tmp_path / "again"))
    again = again.model_copy(update={"item_llm": again.item_llm.model_copy(update={"center": True, "pooling": "mean"})})
    rec, _, _ = build_recommender(again, data)
    torch.testing.assert_close(rec.hllm.item_llm.center, bundle.model.item_llm.center)
    torch.testing.assert_close(rec.cached_items[1:], served, atol=1e-5, rtol=1e-5)

    # and a config that disagrees with the bundle names the field
    uncentered = toy_config(tmp_path, stage=2, init_bundle=str(result.bundle))
    uncentered = uncentered.model_copy(update={"item_llm": uncentered.item_llm.model_copy(update={"pooling": "mean"})})
    with pytest.raises(ConfigError, match="^item_llm.center: False but"):
        build_recommender(uncentered, data)

    export_bundle(result.bundle)
    encoders = load_onnx_encoders(result.bundle)
    onnx_out = encoders.item(batch.input_ids.numpy(), batch.attention_mask.numpy())
    np.testing.assert_allclose(onnx_out, served.numpy(), atol=1e-4, rtol=1e-4)
