import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from export import ParityError, export_bundle
from export.parity import random_timestamps, rel_error
from feature_gen.model.bundle import BundleError, _sha256, load_bundle, verify_bundle
from hllm.cli import main
from feature_gen.config import ExportConfig
from feature_gen.model.item_text import pad_token_ids
from feature_gen.inference.onnx_runtime import load_onnx_encoders
from feature_gen.model.user_llm import time_gap_buckets
from tests.conftest import build_tiny_bundle


def _copy(bundle, tmp_path_factory):
    dst = tmp_path_factory.mktemp("export") / bundle.name
    shutil.copytree(bundle, dst)
    return dst


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    path = _copy(tiny_bundle, tmp_path_factory)
    return path, export_bundle(path)


@pytest.fixture(scope="module")
def torch_model(tiny_bundle):
    return load_bundle(tiny_bundle).model


def test_fp32_export_writes_both_graphs_and_records_them(exported, tiny_bundle):
    path, report = exported
    manifest = verify_bundle(path)  # every checksum, the new files included
    assert manifest["version"] == tiny_bundle.name == report.version  # derived files leave the version alone
    section = manifest["onnx"]
    assert section["opset"] == 17 and section["precision"] == "fp32"
    for name in ("item_encoder", "user_encoder"):
        rel = f"onnx/{name}.onnx"
        assert manifest["files"][rel] == _sha256(path / rel)
        assert 0 < section[name]["parity_rel_error"] < 1e-4
        assert section[name]["parity_rel_error"] == report.rel_error[name]
    assert section["user_encoder"]["uses_timestamps"] is True
    assert {c.padding_side for c in report.cases if c.encoder == "item_encoder"} == {"left", "right"}
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []  # no scratch left


def test_graphs_have_dynamic_batch_and_sequence_axes(exported):
    path, _ = exported
    user = onnx.load(str(path / "onnx/user_encoder.onnx"))
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in user.graph.input}
    assert inputs == {"item_embeddings": ["batch", "seq", 64], "attention_mask": ["batch", "seq"],
                      "timestamps": ["batch", "seq"]}
    item = onnx.load(str(path / "onnx/item_encoder.onnx"))
    assert [d.dim_param for d in item.graph.input[0].type.tensor_type.shape.dim] == ["batch", "tokens"]


@pytest.mark.parametrize("batch,width", [(1, 3), (6, 21), (2, 48)])
def test_item_parity_on_fresh_shapes_both_padding_sides(exported, torch_model, batch, width):
    path, _ = exported
    onnx_item = load_onnx_encoders(path).item
    rng = np.random.default_rng(batch * 100 + width)
    rows = [rng.integers(0, onnx_item.vocab_size, size=n).tolist()
            for n in [width] + rng.integers(1, width + 1, size=batch - 1).tolist()]
    outs = {}
    for side in ("right", "left"):
        padded = pad_token_ids(rows, pad_id=0, padding_side=side)
        with torch.no_grad():
            ref = torch_model.item_llm(padded.input_ids, padded.attention_mask).numpy()
        outs[side] = onnx_item(padded.input_ids, padded.attention_mask)
        assert rel_error(outs[side], ref) < 1e-4
    np.testing.assert_allclose(outs["left"], outs["right"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 20), (9, 11)])
def test_user_parity_on_fresh_shapes_with_timestamps(exported, torch_model, batch, length):
    path, _ = exported
    onnx_user = load_onnx_encoders(path).user
    rng = np.random.default_rng(batch + length)
    embs = rng.standard_normal((batch, length, 64)).astype(np.float32)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[0, : length // 2] = 0  # left padding in one row
    stamps = random_timestamps(rng, batch, length)
    got = onnx_user(embs, mask, stamps)
    with torch.no_grad():
        ref = torch_model.user_llm(torch.from_numpy(embs), torch.from_numpy(mask), torch.from_numpy(stamps))
    assert rel_error(got.user_embedding, ref.user_embedding.numpy()) < 1e-4
    real = mask.astype(bool)
    assert rel_error(got.predictions[real], ref.predictions.numpy()[real]) < 1e-4


def test_time_buckets_inside_the_graph_match_torch_at_every_power_of_two(exported, torch_model):
    """Gaps of exactly 2**k - 1 put 1 + gap on a bucket boundary: a float log2 in the graph misses them."""
    path, _ = exported
    gaps = np.array([0] + [max(2**k + d, 0) for k in range(31) for d in (-2, -1, 0)], dtype=np.int64)
    stamps = (1_600_000_000 + np.cumsum(gaps))[None, :]
    mask = np.ones_like(stamps)
    buckets = time_gap_buckets(torch.from_numpy(stamps), torch.from_numpy(mask), 64)
    assert len(set(buckets[0].tolist())) > 25  # the case really spans the buckets
    embs = np.random.default_rng(0).standard_normal((1, stamps.shape[1], 64)).astype(np.float32)
    got = load_onnx_encoders(path).user(embs, mask, stamps).predictions
    with torch.no_grad():
        ref = torch_model.user_llm(torch.from_numpy(embs), torch.from_numpy(mask), torch.from_numpy(stamps)).predictions
    # a wrong bucket at one position moves that position's prediction far beyond float rounding
    per_position = np.linalg.norm(got[0] - ref[0].numpy(), axis=-1) / np.linalg.norm(ref[0].numpy(), axis=-1)
    assert per_position.max() < 1e-4


def test_a_corrupted_onnx_file_is_refused_by_the_checksum(exported, tmp_path_factory):
    path = _copy(exported[0], tmp_path_factory)
    load_onnx_encoders(path)  # loads (and caches) while intact
    graph = path / "onnx/user_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="onnx/user_encoder.onnx fails its checksum"):
        load_onnx_encoders(path)


def test_a_failed_parity_check_writes_nothing(exported, tmp_path_factory):
    path = _copy(exported[0], tmp_path_factory)
    before_manifest = (path / "manifest.json").read_bytes()
    before_graph = (path / "onnx/item_encoder.onnx").read_bytes()
    with pytest.raises(ParityError, match=r"relative error .* exceeds the bound 1e-12.*nothing was written"):
        export_bundle(path, ExportConfig(max_rel_error_fp32=1e-12))
    assert (path / "manifest.json").read_bytes() == before_manifest
    assert (path / "onnx/item_encoder.onnx").read_bytes() == before_graph  # the earlier export survives
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in exported[0].iterdir())
    verify_bundle(path)


def test_a_first_export_that_fails_leaves_no_onnx_folder(tiny_bundle, tmp_path_factory):
    path = _copy(tiny_bundle, tmp_path_factory)
    with pytest.raises(ParityError):
        export_bundle(path, ExportConfig(max_rel_error_fp32=1e-12))
    assert not (path / "onnx").exists()
    assert "onnx" not in json.loads((path / "manifest.json").read_text())


# Dynamic int8 quantises each MatMul's input with one scale per tensor, and on the tiny random user model
# that costs a relative error of 0.17-0.39 depending on the initialisation (init seeds 0-7, measured
# 2026-12-02): most inits fail the 0.2 bound (the session-wide tiny_bundle's seed 0 among them; CI once saw
# 0.206 when that fixture's init still depended on the tests before it). This test checks a conversion that
# succeeds, so it builds its own bundle from an init inside the bound (0.171);
# test_a_failed_parity_check_writes_nothing checks the refusal.
INT8_PASSING_INIT_SEED = 2


@pytest.mark.parametrize("precision,marker", [("fp16", "float16"), ("int8", "MatMulInteger")])
def test_fp16_and_int8_are_converted_and_their_error_recorded(tmp_path_factory, precision, marker):
    path = build_tiny_bundle(tmp_path_factory.mktemp("seeded"), init_seed=INT8_PASSING_INIT_SEED)
    report = export_bundle(path, precision=precision)
    manifest = verify_bundle(path)
    assert manifest["onnx"]["precision"] == precision
    assert manifest["onnx"]["parity"]["bound"] == ExportConfig().max_rel_error(precision)
    graph = onnx.load(str(path / "onnx/user_encoder.onnx"))
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    else:
        assert any(marker in n.op_type for n in graph.graph.node)
    for name, err in report.rel_error.items():
        # a real conversion: measurably off fp32, yet inside the documented bound
        assert 1e-6 < err <= ExportConfig().max_rel_error(precision)
        assert manifest["onnx"][name]["parity_rel_error"] == err


def test_hllm_export_command(tiny_bundle, tmp_path_factory, capsys):
    path = _copy(tiny_bundle, tmp_path_factory)
    assert main(["export", "--bundle", str(path)]) == 0
    out = capsys.readouterr().out
    assert "precision   fp32  opset 17" in out and "onnx/user_encoder.onnx" in out
    assert main(["export", "--bundle", str(path / "missing")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err
    assert main(["export", "--bundle", str(path), "--opset", "9"]) == 2
    assert "export.opset" in capsys.readouterr().err


def test_mean_pooling_and_no_timestamps_export_too(tmp_path):
    """The other model variants: mean-pooled items, a user model without time embeddings (2 inputs)."""
    from feature_gen.model.bundle import save_bundle
    from feature_gen.model.hllm import build_hllm
    from tests.conftest import tiny_config

    cfg = tiny_config(item_llm={"pooling": "mean"}, data={"max_seq_len": 12})
    model, tok = build_hllm(cfg)
    path = save_bundle(model.eval(), tok, cfg, tmp_path)
    report = export_bundle(path)
    assert max(report.rel_error.values()) < 1e-4
    graph = onnx.load(str(path / "onnx/user_encoder.onnx"))
    assert [i.name for i in graph.graph.input] == ["item_embeddings", "attention_mask"]
    user = load_onnx_encoders(path).user
    embs = np.random.default_rng(1).standard_normal((2, 6, 64)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
    with torch.no_grad():
        ref = model.user_llm(torch.from_numpy(embs), torch.from_numpy(mask)).user_embedding.numpy()
    assert rel_error(user(embs, mask).user_embedding, ref) < 1e-4  # timestamps not needed, as in torch
