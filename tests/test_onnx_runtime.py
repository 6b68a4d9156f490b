import shutil

import numpy as np
import pytest
import torch

from export import export_bundle
from feature_gen.model.bundle import BundleError
from feature_gen.inference.encoders import embed_token_ids, embed_users, load_encoders
from feature_gen.inference.onnx_runtime import OnnxInputError, choose_providers, load_onnx_encoders


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_runtime") / tiny_bundle.name
    shutil.copytree(tiny_bundle, path)
    export_bundle(path)
    return path


@pytest.fixture(scope="module")
def both(exported):
    return load_encoders(exported, "torch"), load_encoders(exported, "onnx")


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("side", ["right", "left"])
def test_onnx_backend_of_embed_token_ids_matches_torch(both, side):
    torch_enc, onnx_enc = both
    assert onnx_enc.version == torch_enc.version and onnx_enc.runtime == "onnx"
    rng = np.random.default_rng(3)
    token_ids = [rng.integers(0, 256, size=n).tolist() for n in [1, 5, 48, 17, 2, 30, 9]]
    ref = embed_token_ids(torch_enc.item, token_ids, pad_id=0, batch_size=3, padding_side=side)
    got = embed_token_ids(onnx_enc.item, token_ids, pad_id=0, batch_size=3, padding_side=side)
    assert got.shape == (7, 64) and got.dtype == np.float32
    assert _rel(got, ref) < 1e-4
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_refresh_path_gives_the_same_user_embeddings_through_onnx(both):
    """embed_users is what the streaming refresh calls: same histories, same vectors, either backend."""
    torch_enc, onnx_enc = both
    rng = np.random.default_rng(4)
    table = torch.cat([torch.zeros(1, 64), torch.from_numpy(rng.standard_normal((40, 64)).astype(np.float32))])
    histories = [rng.integers(1, 41, size=n) for n in (1, 3, 20, 35, 7)]
    stamps = [1_700_000_000 + np.cumsum(rng.integers(0, 100_000, size=len(h))) for h in histories]
    ref = embed_users(torch_enc.user, table, histories, stamps, max_seq_len=20, batch_size=2)
    got = embed_users(onnx_enc.user, table, histories, stamps, max_seq_len=20, batch_size=2)
    assert _rel(got.vectors, ref.vectors) < 1e-4
    assert got.seq_len.tolist() == ref.seq_len.tolist() == [1, 3, 20, 20, 7]
    assert got.last_event_ts.tolist() == ref.last_event_ts.tolist()


def test_sessions_are_reused_per_process(exported):
    first = load_onnx_encoders(exported)
    assert load_onnx_encoders(exported) is first
    assert load_onnx_encoders(exported, threads=1) is not first  # other settings, other sessions
    # the sessions run on what choose_providers picked (CPU here: no GPU on this machine or CI)
    assert first.providers and first.providers == choose_providers("auto")[: len(first.providers)]
    assert first.providers[-1] == "CPUExecutionProvider"


def test_provider_choice_does_not_ask_for_cuda_it_cannot_load(exported, capfd):
    load_onnx_encoders(exported, threads=2)
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err + captured.out  # no failed-provider error spam
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in choose_providers("auto"):
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            choose_providers("cuda")
    with pytest.raises(ValueError, match="expected 'auto', 'cpu' or 'cuda'"):
        choose_providers("tpu")


def test_a_bundle_without_export_says_how_to_make_one(tiny_bundle):
    with pytest.raises(BundleError, match="run `hllm export --bundle"):
        load_onnx_encoders(tiny_bundle)
    with pytest.raises(ValueError, match="runtime: expected 'torch' or 'onnx'"):
        load_encoders(tiny_bundle, "tensorrt")


def test_bad_item_inputs_name_the_expected_shape(both):
    item = both[1].item
    ids = np.ones((2, 4), dtype=np.int64)
    with pytest.raises(OnnxInputError, match=r"input_ids: expected integers \[batch, tokens\].*float32"):
        item(ids.astype(np.float32), ids)
    with pytest.raises(OnnxInputError, match=r"expects input_ids and attention_mask \[batch, tokens\].*\(4,\)"):
        item(ids[0], ids[0])
    with pytest.raises(OnnxInputError, match=r"\(2, 4\) and \(2, 3\)"):
        item(ids, ids[:, :3])
    with pytest.raises(OnnxInputError, match="row 1 has no real position"):
        item(ids, np.array([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(OnnxInputError, match=r"token ids must lie in \[0, 259\)"):
        item(ids * 1000, ids)


def test_bad_user_inputs_name_the_expected_shape(both):
    user = both[1].user
    embs = np.zeros((2, 5, 64), dtype=np.float32)
    mask = np.ones((2, 5), dtype=np.int64)
    stamps = np.arange(10).reshape(2, 5)
    expected = r"item_embeddings \[batch, seq, 64\] float32"
    with pytest.raises(OnnxInputError, match=expected + r".*shape \(2, 5, 32\)"):
        user(np.zeros((2, 5, 32), dtype=np.float32), mask, stamps)  # another hidden size
    with pytest.raises(OnnxInputError, match=expected + r".*shape \(5, 64\)"):
        user(embs[0], mask[0], stamps[0])  # a missing batch axis
    with pytest.raises(OnnxInputError, match=expected + ".*dtype int64"):
        user(embs.astype(np.int64), mask, stamps)
    with pytest.raises(OnnxInputError, match=r"attention_mask shape \(2, 4\)"):
        user(embs, mask[:, :4], stamps)
    with pytest.raises(OnnxInputError, match="uses timestamps"):
        user(embs, mask)
    with pytest.raises(OnnxInputError, match=r"timestamps: expected shape \(2, 5\)"):
        user(embs, mask, stamps[:, :2])
    with pytest.raises(OnnxInputError, match="timestamps: expected integers"):
        user(embs, mask, stamps.astype(np.float64))
    out = user(embs.astype(np.float64), torch.from_numpy(mask), torch.from_numpy(stamps))  # safe casts pass
    assert out.user_embedding.shape == (2, 64) and out.predictions.shape == (2, 5, 64)
