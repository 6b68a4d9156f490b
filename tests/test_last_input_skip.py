"""user_llm.last_input_skip through the real paths: it trains under DeepSpeed (gloo, CPU), travels with
the bundle, and the torch encoders, the evaluation protocol and the ONNX user graph all apply it."""

import numpy as np
import pytest
import torch

from export import export_bundle
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation.protocol import evaluate_vectors
from feature_gen.inference.encoders import load_encoders
from feature_gen.inference.onnx_runtime import load_onnx_encoders
from feature_gen.model.bundle import load_bundle
from trainer.train import run_training

from tests.toys import toy_config


def test_the_skip_trains_and_every_reader_of_the_bundle_applies_it(tmp_path):
    cfg = toy_config(tmp_path, stage=2, epochs=2, lr=3e-2)
    cfg = cfg.model_copy(update={"user_llm": cfg.user_llm.model_copy(update={"last_input_skip": True})})
    result = run_training(cfg, resume=False)
    user_llm = load_bundle(result.bundle).model.user_llm
    weight = float(user_llm.last_input_weight)
    assert weight != 0.0  # it trained from 0

    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    encoders = load_encoders(result.bundle, "torch")
    table = encoders.embed_catalogue(data.items)
    users = encoders.embed_users(table, split.test.histories, split.test.history_timestamps)
    assert evaluate_vectors(users.vectors, table, split.test, cfg, "cosine").values == pytest.approx(result.test, abs=1e-6)

    # the served user vector is the backbone's prediction + w x the newest item's embedding
    history = torch.as_tensor(split.test.histories[0][-cfg.data.max_seq_len:])[None]
    items = table[history]
    mask = torch.ones_like(history)
    with torch.no_grad():
        full = user_llm.eval()(items, mask).user_embedding
        user_llm.last_input_weight.zero_()
        plain = user_llm(items, mask).user_embedding
    torch.testing.assert_close(full, plain + weight * items[:, -1], atol=1e-5, rtol=1e-5)

    export_bundle(result.bundle)
    onnx = load_onnx_encoders(result.bundle).user(items.numpy(), mask.numpy())
    np.testing.assert_allclose(onnx.user_embedding, full.numpy(), atol=1e-4, rtol=1e-4)
