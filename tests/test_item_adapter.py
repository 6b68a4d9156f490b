"""item_llm.adapter: a trainable map after the Item LLM's pooling and centering. It starts as the
identity, trains in stage 2 while the backbone stays frozen (over the cached catalogue), travels with the
bundle, and every reader of the bundle (encoders, ONNX, the evaluation protocol) applies it."""

import numpy as np
import pytest
import torch

from export import export_bundle
from feature_gen.config import ConfigError, ItemLLMConfig
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation.protocol import evaluate_vectors
from feature_gen.inference.encoders import load_encoders
from feature_gen.inference.onnx_runtime import load_onnx_encoders
from feature_gen.model.base_models import load_backbone
from feature_gen.model.bundle import load_bundle
from feature_gen.model.item_llm import ItemFeatures, ItemLLM, build_adapter
from feature_gen.model.item_text import pad_token_ids, tokenize_item_texts
from trainer.recommenders import catalogue_token_ids
from trainer.train import build_recommender, run_training

from tests.toys import agree_with_bundle, toy_config

TEXTS = ["title: Heat. tags: Crime.", "title: Up.", "title: Alien. tags: Horror, Sci-Fi."]


def _with_adapter(cfg, kind, **item_llm):
    return cfg.model_copy(update={"item_llm": cfg.item_llm.model_copy(update={"adapter": kind, **item_llm})})


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_fresh_adapter_is_the_identity_and_forward_is_adapt_of_features(kind):
    backbone = load_backbone(ItemLLMConfig(source="tiny_random"))
    plain = ItemLLM(backbone.model, pooling="mean").eval()
    adapted = ItemLLM(backbone.model, pooling="mean", adapter=kind).eval()
    tok = backbone.tokenizer
    batch = pad_token_ids(tokenize_item_texts(TEXTS, tok, 64), tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(adapted(batch.input_ids, batch.attention_mask), plain(batch.input_ids, batch.attention_mask))
        for p in adapted.adapter.parameters():  # move it off the identity
            p.add_(torch.randn_like(p) * 0.1)
        features = adapted.features(batch.input_ids, batch.attention_mask)
        out = adapted(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(out, adapted.adapter(features))
    assert not torch.allclose(out, features, atol=1e-3)
    assert any(k.startswith("adapter.") for k in adapted.state_dict()) and not any(
        k.startswith("adapter.") for k in plain.state_dict())
    # the frozen part is everything but the adapter
    frozen = {id(p) for p in adapted.frozen_parameters()}
    assert all(id(p) not in frozen for p in adapted.adapter.parameters())
    assert {id(p) for p in plain.parameters()} == frozen


def test_build_adapter_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="adapter: expected one of"):
        build_adapter("moe", 8)
    assert build_adapter("none", 8) is None


def test_stage2_trains_the_adapter_on_the_cached_features_and_nothing_else_of_the_item_llm(tmp_path):
    cfg = _with_adapter(toy_config(tmp_path, stage=2), "linear")
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, tok, _ = build_recommender(cfg, data)
    item_llm = rec.hllm.item_llm
    assert all(p.requires_grad for p in item_llm.adapter.parameters())
    assert not any(p.requires_grad for p in item_llm.frozen_parameters())
    # the cache holds the features (before the adapter); the items the step reads go through the adapter
    tokens = catalogue_token_ids(data.items, cfg.item_text, tok)
    batch = pad_token_ids(tokens, tok.pad_token_id)
    with torch.no_grad():
        item_llm.adapter.weight.mul_(1.5)
        features = ItemFeatures(item_llm).eval()(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(rec.cached_items[1:], features, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([0, 3, 1])
    encoded = rec.encode_items(ids)
    torch.testing.assert_close(encoded[1:], item_llm.adapter(features[ids[1:] - 1]))
    assert torch.count_nonzero(encoded[0]) == 0  # padding stays zero despite the adapter's bias
    table = rec.item_table()
    assert torch.count_nonzero(table[0]) == 0
    torch.testing.assert_close(table[1:], item_llm.adapter(features).detach())
    # the gradient of a loss on encoded items reaches the adapter
    encoded[1:].sum().backward()
    assert item_llm.adapter.weight.grad is not None and float(item_llm.adapter.weight.grad.abs().sum()) > 0


def test_the_bundle_carries_the_trained_adapter_to_every_reader(tmp_path):
    cfg = _with_adapter(toy_config(tmp_path, stage=2, epochs=2, lr=3e-2), "linear")
    result = run_training(cfg, resume=False)
    bundle = load_bundle(result.bundle)
    adapter = bundle.model.item_llm.adapter
    assert bundle.cfg.item_llm.adapter == "linear"
    assert not torch.allclose(adapter.weight, torch.eye(adapter.weight.size(0)), atol=1e-3)  # it trained

    # the bundle's encoders reproduce the trainer's test metrics: the adapter is saved and applied
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    encoders = load_encoders(result.bundle, "torch")
    table = encoders.embed_catalogue(data.items)
    users = encoders.embed_users(table, split.test.histories, split.test.history_timestamps)
    served = evaluate_vectors(users.vectors, table, split.test, cfg, "cosine").values
    assert served == pytest.approx(result.test, abs=1e-6)
    features = ItemFeatures(bundle.model.item_llm)
    tokens = catalogue_token_ids(data.items, cfg.item_text, bundle.tokenizer)
    batch = pad_token_ids(tokens, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        raw = features(batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(table[1:], adapter(raw), atol=1e-5, rtol=1e-5)

    # ONNX applies it too
    export_bundle(result.bundle)
    onnx_out = load_onnx_encoders(result.bundle).item(batch.input_ids.numpy(), batch.attention_mask.numpy())
    np.testing.assert_allclose(onnx_out, table[1:].numpy(), atol=1e-4, rtol=1e-4)

    # a stage-2 run from this bundle continues from its adapter; one that would drop or swap it is refused
    again = agree_with_bundle(toy_config(tmp_path, stage=2, output_dir=str(tmp_path / "again")), result.bundle)
    rec, _, _ = build_recommender(again, data)
    torch.testing.assert_close(rec.hllm.item_llm.adapter.weight, adapter.weight)
    for kind in ("none", "mlp"):
        with pytest.raises(ConfigError, match=f"^item_llm.adapter: '{kind}' but the init_bundle"):
            build_recommender(_with_adapter(again, kind), data)


def test_a_run_may_add_an_adapter_to_a_bundle_trained_without_one(tmp_path, tiny_bundle):
    cfg = _with_adapter(agree_with_bundle(toy_config(tmp_path, stage=2), tiny_bundle), "mlp")
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    frozen = load_bundle(tiny_bundle).model.item_llm
    # a fresh adapter is the identity: the run starts from the bundle's own item embeddings
    torch.testing.assert_close(rec.item_table()[1:], rec.cached_items[1:])
    assert rec.hllm.item_llm.adapter_kind == "mlp" and frozen.adapter is None
    assert all(p.requires_grad for p in rec.hllm.item_llm.adapter.parameters())
