"""A discriminative bundle: the click head round trips, a head of other dimensions is refused naming
the field, and the head exports to ONNX with parity (late-fusion head; early-fusion scorer)."""

import json

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from export import export_bundle
from export.fusion_export import FUSION_CASES
from feature_gen.inference.onnx_runtime import open_session
from feature_gen.model.bundle import BundleError, _file_hashes, _version_of, load_bundle, save_bundle
from feature_gen.model.hllm import build_hllm

from tests.conftest import tiny_config


def _saved(tmp_path, fusion):
    cfg = tiny_config(user_llm={"use_timestamps": True}, data={"max_seq_len": 20},
                      loss={"objective": "discriminative", "fusion": fusion, "fusion_hidden": 24})
    model, tok = build_hllm(cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        head = model.late_head if fusion == "late" else model.early_scorer.head
        for p in head.parameters():
            p.normal_()
        model.user_llm.time_embedding.weight.normal_(std=0.1)
    return model.eval(), save_bundle(model.eval(), tok, cfg, tmp_path / "bundles")


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_head_round_trips_and_exports_with_parity(tmp_path, fusion):
    model, path = _saved(tmp_path, fusion)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["fusion_head"] == ({"fusion": "late", "item_dim": 64, "hidden": 24} if fusion == "late"
                                       else {"fusion": "early", "item_dim": 64})
    loaded = load_bundle(path).model
    torch.manual_seed(0)
    hist, mask = torch.randn(2, 5, 64), torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    stamps, at, cands = torch.arange(10).view(2, 5) * 1000, torch.tensor([9000, 12000]), torch.randn(2, 4, 64)
    with torch.no_grad():
        want = model.click_logits(hist, mask, cands, stamps, at)
        got = loaded.click_logits(hist, mask, cands, stamps, at)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    report = export_bundle(path)
    graph = "late_fusion_head" if fusion == "late" else "early_fusion_scorer"
    section = json.loads((path / "manifest.json").read_text())["onnx"][graph]
    assert 0 <= section["parity_rel_error"] < 1e-4 and report.rel_error[graph] == section["parity_rel_error"]
    assert len([c for c in report.cases if c.encoder == graph]) == (3 if fusion == "late" else 6)
    onnx_file = path / section["file"]
    inputs = {i.name for i in onnx.load(str(onnx_file)).graph.input}
    assert inputs == ({"user_embedding", "candidate_embeddings"} if fusion == "late" else
                      {"item_embeddings", "attention_mask", "candidate_embeddings", "timestamps", "candidate_timestamp"})
    # and on one more request, of 100 candidates, straight through ONNX Runtime
    session = open_session(onnx_file, ["CPUExecutionProvider"], 1)
    rng = np.random.default_rng(9)
    cands = rng.standard_normal((1, 100, 64)).astype(np.float32)
    if fusion == "late":
        user = rng.standard_normal((1, 64)).astype(np.float32)
        ref = loaded.late_head(torch.from_numpy(user), torch.from_numpy(cands)).numpy()
        out = session.run(None, {"user_embedding": user, "candidate_embeddings": cands})[0]
    else:
        h = rng.standard_normal((1, 6, 64)).astype(np.float32)
        m, ts, t = np.ones((1, 6), np.int64), np.arange(6, dtype=np.int64).reshape(1, 6) * 50, np.array([400])
        with torch.no_grad():
            ref = loaded.early_scorer(*(torch.from_numpy(a) for a in (h, m, cands, ts, t))).numpy()
        out = session.run(None, {"item_embeddings": h, "attention_mask": m, "candidate_embeddings": cands,
                                 "timestamps": ts, "candidate_timestamp": t})[0]
    assert out.shape == (1, 100)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert max(c[2] for c in FUSION_CASES) == 100  # the parity cases include the serving request size


def _rewrite(path, manifest, heads):
    save_file(heads, str(path / "heads.safetensors"))
    manifest["files"] = _file_hashes(path)
    manifest["version"] = _version_of(manifest["files"])
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_head_of_other_dimensions_is_refused_naming_the_field(tmp_path):
    _, path = _saved(tmp_path, "late")
    manifest = json.loads((path / "manifest.json").read_text())
    heads = load_file(str(path / "heads.safetensors"))
    heads["late_head.mlp.0.weight"] = torch.zeros(32, 3 * 64)  # a 32-wide head under a 24-wide config
    heads["late_head.mlp.0.bias"] = torch.zeros(32)
    heads["late_head.mlp.2.weight"] = torch.zeros(1, 32)
    manifest["fusion_head"]["hidden"] = 32
    _rewrite(path, manifest, heads)
    with pytest.raises(BundleError, match=r"manifest.fusion_head.hidden is 32 .*loss.fusion_hidden.* has 24"):
        load_bundle(path)
    manifest["fusion_head"]["hidden"] = 24  # a manifest that hides it: the tensor shape still refuses
    _rewrite(path, manifest, heads)
    with pytest.raises(BundleError, match=r"heads.safetensors: late_head.mlp.0.(weight|bias) is \(32.*expects \(24"):
        load_bundle(path)


def test_feature_contract_gains_the_click_score(tmp_path, tiny_bundle):
    """The discriminative contract validates against a late-fusion bundle, is refused (naming the
    feature) by a generative one, and its click_score is the head's logit."""
    from pathlib import Path

    from feature_gen.config import StoreConfig
    from feature_gen.store.feature_store import open_store
    from ranker_integration.feature_config import FeatureConfigError, load_feature_config, validate_feature_config
    from ranker_integration.feature_values import FeatureRows, assemble_features

    store = StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"))
    open_store(store)
    fc = load_feature_config(Path(__file__).resolve().parent.parent / "ranker_integration" / "feature_config_discriminative.yaml")
    model, path = _saved(tmp_path, "late")
    report = validate_feature_config(fc, store, path)
    assert any(line.startswith("click_score") and "late_fusion(user_embedding, item_embedding)" in line
               for line in report.checked)
    with pytest.raises(FeatureConfigError, match=r"features\[3\] \(click_score\)\.function: late_fusion needs"):
        validate_feature_config(fc, store, tiny_bundle)

    rng = np.random.default_rng(0)
    users, items = rng.standard_normal((3, 64)).astype(np.float32), rng.standard_normal((3, 64)).astype(np.float32)
    rows = FeatureRows(at_ts=np.array([10, 10, 10]), user_vectors=users, user_found=np.array([True, True, False]),
                       user_seq_len=np.array([3, 3, -1]), user_last_event_ts=np.array([5, 5, -1]),
                       item_vectors=items, item_found=np.array([True, True, True]))

    def head(u, i):
        with torch.no_grad():
            return model.late_head(torch.from_numpy(u), torch.from_numpy(i).unsqueeze(1)).squeeze(1).numpy()

    score = assemble_features(fc, 64, rows, click_head=head)["click_score"][:, 0]
    with torch.no_grad():
        want = model.late_head(torch.from_numpy(users[:2]), torch.from_numpy(items[:2]).unsqueeze(1)).squeeze(1)
    np.testing.assert_allclose(score[:2], want.numpy(), rtol=1e-6)
    assert score[2] == 0.0  # a missing user: the default
    with pytest.raises(ValueError, match="click_score: function late_fusion needs"):
        assemble_features(fc, 64, rows)
