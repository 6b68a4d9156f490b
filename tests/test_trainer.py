"""The DeepSpeed trainer (gloo on CPU, one process) on tiny random models and a toy catalogue."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_gen.model.bundle import load_bundle
from feature_gen.config import ConfigError, load_config
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation.protocol import chance_recalls
from feature_gen.inference.encoders import embed_catalogue
from trainer.loop import TrainingDiverged
from trainer.recommenders import HLLMRecommender, text_pca_rows
from trainer.train import build_recommender, run_training

from tests.toys import TINY, agree_with_bundle, losses, toy_config

REPO = Path(__file__).resolve().parent.parent


def test_sasrec_learns_the_toy_cycle(tmp_path):
    cfg = toy_config(tmp_path, model="sasrec", epochs=30, lr=5e-3, sasrec_hidden=32, dropout=0.0,
                     eval_every_epochs=10, freeze_bundle=False)
    result = run_training(cfg, resume=False)
    curve = losses(result.run_dir)
    first, last = np.mean([curve[s] for s in sorted(curve)[:3]]), np.mean([curve[s] for s in sorted(curve)[-3:]])
    assert last < 0.5 * first
    assert result.test["recall@5"] > 0.5  # the cycle is learnable; chance is ~5/20
    # result.json carries the chance floor of the very users each metric was computed on
    written = json.loads((result.run_dir / "result.json").read_text())
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    for which in ("valid", "test"):
        assert written["eval_users"][which] == len(getattr(split, which).targets)
        assert written["chance"][which] == pytest.approx(chance_recalls(getattr(split, which), data.num_items, [1, 5, 10]))
    assert 0.0 < written["chance"]["test"]["recall@1"] < written["chance"]["test"]["recall@5"] < 0.5
    assert load_config(result.run_dir / "config.yaml") == cfg  # the run folder says what produced it


def test_window_stride_trains_the_same_targets_in_more_windows(tmp_path):
    """train.window_stride: an epoch trains every target once whatever the stride (the positions the
    step log counts), in more windows (steps) as the stride shrinks; the User model's input positions
    (what the FLOPs figure counts) exceed the targets once windows overlap."""
    def epoch(name, **train):
        cfg = toy_config(tmp_path / name, model="sasrec", epochs=1, batch_size=4, freeze_bundle=False,
                         eval_every_epochs=1, **train)
        cfg.data.max_seq_len = 3  # 10 training items a user: 3 windows of 3 targets at the default stride
        run_training(cfg, resume=False)
        rows = [json.loads(line) for line in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss" in r]
        return len(steps), sum(r["positions"] for r in steps), sum(r["input_positions"] for r in steps)

    chunked, strided = epoch("chunked"), epoch("strided", window_stride=1)
    assert strided[1] == chunked[1] > 0  # the same targets, each once
    assert strided[0] >= 2 * chunked[0]  # one window per target: 7 a user instead of 3
    assert chunked[2] == chunked[1]  # chunks train every input position
    assert strided[2] >= 2 * strided[1]  # 1 target per window of up to 3 inputs


def test_hllm_stage1_loss_goes_down_and_freezes_a_bundle(tmp_path):
    cfg = toy_config(tmp_path, epochs=12, eval_every_epochs=4)
    result = run_training(cfg, resume=False)
    curve = losses(result.run_dir)
    steps = sorted(curve)
    assert np.mean([curve[s] for s in steps[-4:]]) < np.mean([curve[s] for s in steps[:4]]) - 0.3
    assert result.bundle is not None
    bundle = load_bundle(result.bundle)
    assert bundle.manifest["metrics"]["stage"] == 1
    assert bundle.manifest["metrics"]["test"] == pytest.approx(result.test)
    assert result.throughput["item_tokens_per_s"] > 0 and result.throughput["matmul_peak_flops"] > 0


def test_stage2_cache_equals_a_fresh_computation(tmp_path, tiny_bundle):
    cfg = agree_with_bundle(toy_config(tmp_path, stage=2), tiny_bundle)
    from feature_gen.data.sequences import load_interaction_data

    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, tokenizer, _ = build_recommender(cfg, data)
    fresh = embed_catalogue(load_bundle(tiny_bundle).model.item_llm, tokenizer, data.items, cfg.item_text)
    torch.testing.assert_close(rec.cached_items, fresh, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in rec.hllm.item_llm.parameters())
    assert any(p.requires_grad for p in rec.user_model.parameters())
    ids = torch.tensor([3, 1])
    torch.testing.assert_close(rec.encode_items(ids), fresh[ids])


def test_id_only_learns_the_toy_cycle_from_ids_and_never_reads_the_item_llm(tmp_path):
    """train.id_only: HLLM's user side over learned ID embeddings (the Item LLM unread, no bundle)."""
    cfg = toy_config(tmp_path, stage=2, id_only=True, epochs=30, lr=5e-3, eval_every_epochs=10)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    assert rec.cached_items.numel() == 0  # the catalogue was never embedded
    assert not any(p.requires_grad for p in rec.hllm.item_llm.parameters())
    ids = torch.tensor([3, 1, 0])
    torch.testing.assert_close(rec.encode_items(ids), rec.id_embedding(ids))
    torch.testing.assert_close(rec.item_table(), rec.id_embedding.weight)
    assert not rec.item_table()[0].any()  # padding stays a zero row

    result = run_training(cfg, resume=False)
    assert result.bundle is None  # serving embeds items by text: an ID-only model has nothing to serve
    assert result.test["recall@5"] > 0.5  # the cycle is learnable from IDs alone; chance is ~5/20


def test_sasrec_blocks_in_the_user_llm_place_learn_the_toy_cycle(tmp_path, monkeypatch):
    """train.user_model: sasrec: SASRec's blocks between linear maps from and to the item space replace the
    User LLM; the loss and the evaluation both go through them."""
    from trainer.recommenders import ProjectedSASRecUser

    cfg = toy_config(tmp_path, stage=2, id_only=True, user_model="sasrec", sasrec_hidden=32, dropout=0.0,
                     epochs=30, lr=5e-3, eval_every_epochs=10)
    data = load_interaction_data(cfg.data, cfg.item_text)
    import feature_gen.model.hllm as hllm_module

    def no_llama(*args, **kwargs):
        raise AssertionError("the Llama User LLM was built for a run that replaces it")

    monkeypatch.setattr(hllm_module, "build_user_llm", no_llama)
    rec, _, bases = build_recommender(cfg, data)
    assert bases["user"] == "sasrec(2x32)"
    assert isinstance(rec.user_model, ProjectedSASRecUser) and rec.user_model.blocks.item_dim == 32
    assert rec.hllm.user_llm is rec.user_model  # HLLM.losses runs the same module the evaluation does
    items = rec.encode_items(torch.tensor([[3, 1, 2], [0, 4, 5]]))
    out = rec.user_model(items, torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert out.predictions.shape == items.shape
    torch.testing.assert_close(out.user_embedding, out.predictions[:, -1])

    result = run_training(cfg, resume=False)
    assert result.bundle is None  # serving runs a User LLM: this one has nothing to serve
    assert result.test["recall@5"] > 0.5  # chance is ~5/20


def test_a_narrow_item_space_maps_the_text_and_learns_the_toy_cycle(tmp_path):
    """train.item_dim: a learned map takes the frozen Item LLM's embedding into a narrower item space, the
    ID rows are as wide, the User LLM predicts in it; padding stays a zero row; no bundle is written."""
    cfg = toy_config(tmp_path, stage=2, text_plus_id=True, item_dim=16, epochs=30, lr=5e-3, eval_every_epochs=10)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    wide = rec.hllm.item_dim
    assert wide != 16 and rec.cached_items.shape[1] == wide  # the cache keeps the Item LLM's width
    assert rec.item_projection.weight.shape == (16, wide) and rec.id_embedding.weight.shape[1] == 16
    table = rec.item_table()
    assert table.shape == (data.num_items + 1, 16) and not table[0].any()
    ids = torch.tensor([3, 0, 5])
    torch.testing.assert_close(rec.encode_items(ids), table[ids])  # training and evaluation embed items alike
    out = rec.user_model(table[torch.tensor([[3, 1, 2]])], torch.ones(1, 3, dtype=torch.long))
    assert out.predictions.shape == (1, 3, 16)

    result = run_training(cfg, resume=False)
    assert result.bundle is None  # serving's Item LLM has no such map
    assert result.test["recall@5"] > 0.5  # chance is ~5/20


def test_stage1_trains_the_item_llm_through_the_narrow_item_map(tmp_path):
    """train.item_dim in stage 1: the Item LLM, its map into the narrow space and the ID rows train
    together; a step's items and the evaluation table (the stage-1 catalogue cache's source too) embed
    items alike, padding a zero row; one stage, no bundle."""
    cfg = toy_config(tmp_path, stage=1, text_plus_id=True, item_dim=16, epochs=12, lr=5e-3, eval_every_epochs=4)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    wide = rec.hllm.item_dim
    assert wide != 16 and rec.item_projection.weight.shape == (16, wide)
    rec.eval()  # the table runs the Item LLM in eval mode; so must the comparison
    table = rec.item_table()
    assert table.shape == (data.num_items + 1, 16) and not table[0].any()
    ids = torch.tensor([3, 7, 5])  # stage 1 encodes a step's real items only
    torch.testing.assert_close(rec.encode_items(ids), table[ids], atol=1e-5, rtol=1e-5)
    rec.train()
    history = torch.tensor([3, 1, 2, 4])
    out = rec.user_model(rec.encode_items(history).unsqueeze(0), torch.ones(1, 4, dtype=torch.long))
    assert out.predictions.shape == (1, 4, 16)
    logits = out.predictions[0, :3] @ rec.encode_items(torch.arange(1, data.num_items + 1)).T
    torch.nn.functional.cross_entropy(logits, history[1:] - 1).backward()
    assert rec.item_projection.weight.grad.abs().sum() > 0
    trained = [p for p in rec.hllm.item_llm.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)  # the Item LLM learns

    result = run_training(cfg, resume=False)
    assert result.bundle is None  # serving's Item LLM has no such map
    assert result.test["recall@5"] > 0.5  # chance is ~5/20


def test_a_stage2_adapter_keeps_the_padding_row_zero(tmp_path):
    """An adapter's bias must not move the padding id 0, with or without the item_dim map after it."""
    cfg = toy_config(tmp_path, stage=2)
    cfg = cfg.model_copy(update={"item_llm": cfg.item_llm.model_copy(update={"adapter": "linear"})})
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    with torch.no_grad():
        rec.hllm.item_llm.adapter.bias.fill_(1.0)  # a bias that would show in the padding row
    assert not rec.item_table()[0].any() and not rec.encode_items(torch.tensor([0, 2]))[0].any()


def test_a_zero_text_map_starts_as_the_id_model_and_lets_the_text_in(tmp_path, caplog):
    """train.item_projection_init: zero: at the start every item is its ID row alone (the text's map is
    zero); one training step moves the map off zero, so the text can enter."""
    cfg = toy_config(tmp_path, stage=2, text_plus_id=True, item_dim=16, item_projection_init="zero")
    data = load_interaction_data(cfg.data, cfg.item_text)
    with caplog.at_level(logging.INFO, logger="trainer.recommenders"):
        rec, _, _ = build_recommender(cfg, data)
    assert "item embedding at init: text part mean norm 0.000, ID rows mean norm" in caplog.text
    assert not rec.item_projection.weight.any() and not rec.item_projection.bias.any()
    ids = torch.arange(data.num_items + 1)
    torch.testing.assert_close(rec.item_table(), rec.id_embedding.weight.detach())
    torch.testing.assert_close(rec.encode_items(ids), rec.id_embedding(ids))
    history = torch.tensor([[3, 1, 2, 4]])
    out = rec.user_model(rec.encode_items(history), torch.ones(1, 4, dtype=torch.long))
    target = rec.catalogue()
    loss = -torch.log_softmax(out.predictions[0] @ target.T, dim=-1)[torch.arange(3), history[0, 1:]].sum()
    loss.backward()
    assert rec.item_projection.weight.grad.abs().sum() > 0  # the text map learns from its zero start

    default_cfg = toy_config(tmp_path / "default", stage=2, text_plus_id=True, item_dim=16)
    with caplog.at_level(logging.INFO, logger="trainer.recommenders"):
        default, _, _ = build_recommender(default_cfg, data)
    assert default.item_projection.weight.abs().sum() > 0  # PyTorch's init: the text part is there from the start
    assert not torch.allclose(default.item_table(), default.id_embedding.weight.detach())


def test_text_pca_rows_keep_the_catalogue_geometry():
    """text_pca_rows: centred, projected on the top components, one scale to std 0.02. On features of rank
    3 the 3 components keep every pairwise distance, scaled by that one factor."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(30, 3, generator=gen) @ torch.randn(3, 10, generator=gen) + 5.0  # rank 3, off-centre
    rows = text_pca_rows(features, 3)
    assert rows.shape == (30, 3) and rows.dtype == torch.float32
    assert rows.std().item() == pytest.approx(0.02, rel=1e-4)
    torch.testing.assert_close(rows.mean(dim=0), torch.zeros(3), atol=1e-6, rtol=0)  # centred
    ratio = torch.cdist(rows.double(), rows.double()) / torch.cdist(features.double(), features.double()).clamp_min(1e-12)
    off_diagonal = ratio[~torch.eye(30, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, off_diagonal[0].item()), rtol=1e-6, atol=0)
    # the first component carries the most variance
    assert rows[:, 0].var() >= rows[:, 1].var() >= rows[:, 2].var()
    with pytest.raises(ValueError, match="ID rows 11 wide need at least 11 items and a text embedding at least 11 wide"):
        text_pca_rows(features, 11)
    with pytest.raises(ValueError, match="text embeddings are all equal"):
        text_pca_rows(torch.ones(5, 4), 2)


@pytest.mark.parametrize("rows", [{"id_only": True}, {"text_plus_id": True, "item_projection_init": "zero"}])
def test_id_rows_start_from_the_items_text(tmp_path, rows):
    """train.id_init: text_pca: the ID rows start at the frozen Item LLM's catalogue embeddings on their top
    principal components (padding a zero row); with the text's map at zero that is the whole item table.
    The Item LLM is read once and trains nothing."""
    cfg = toy_config(tmp_path, stage=2, item_dim=4, id_init="text_pca", **rows)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    expected = text_pca_rows(rec._embed_catalogue("the test's own embedding"), 4)
    torch.testing.assert_close(rec.id_embedding.weight[1:].detach(), expected)
    assert not rec.id_embedding.weight[0].any()
    torch.testing.assert_close(rec.item_table(), rec.id_embedding.weight.detach())
    assert not any(p.requires_grad for p in rec.hllm.item_llm.backbone.parameters())

    normal, _, _ = build_recommender(toy_config(tmp_path / "normal", stage=2, item_dim=4, **rows), data)
    assert not torch.allclose(normal.id_embedding.weight[1:], rec.id_embedding.weight[1:])

    # the control: the same rows in another order (each row still one of text_pca's, not its own item's)
    permuted, _, _ = build_recommender(toy_config(tmp_path / "permuted", stage=2, item_dim=4,
                                                  id_init="text_pca_permuted", **rows), data)
    got = permuted.id_embedding.weight[1:].detach()
    own = text_pca_rows(permuted._embed_catalogue("the test's own embedding"), 4)
    assert not torch.allclose(got, own)
    order = torch.cdist(got, own).argmin(dim=1)
    torch.testing.assert_close(got, own[order])
    assert sorted(order.tolist()) == list(range(data.num_items))


def test_id_anchor_pulls_the_rows_back_to_their_start(tmp_path):
    """train.id_anchor_weight: the loss gains weight x mean(1 - cos(row, start)) over the catalogue; the
    drift is logged (id_start_cos) with or without the pull; a step on the pull brings every row that moved
    back toward its start."""
    from feature_gen.data.sequences import training_windows
    from trainer.loop import generative_examples

    recs = {}
    for weight in (0.0, 2.0):
        cfg = toy_config(tmp_path / str(weight), stage=2, item_dim=4, id_only=True, id_init="text_pca",
                         id_anchor_weight=weight)
        data = load_interaction_data(cfg.data, cfg.item_text)
        split = leave_one_out(data)
        torch.manual_seed(0)  # as run_training does: the [ITEM] token's new row is drawn from the global RNG
        rec, _, _ = build_recommender(cfg, data)
        generative_examples(rec, split, data.num_items, cfg, cfg.data.max_seq_len)
        recs[weight] = rec.eval()  # no dropout: the two losses differ by the pull alone
    free, pulled = recs[0.0], recs[2.0]
    torch.testing.assert_close(pulled.id_start, pulled.id_embedding.weight[1:].detach())
    batch = training_windows(split.train[:6], split.train_timestamps[:6], 8)
    assert pulled.training_step(batch, step=1).stats["id_start_cos"] == pytest.approx(1.0)  # at the start: no pull
    noise = torch.randn(data.num_items, 4, generator=torch.Generator().manual_seed(0)) * 0.02
    for rec in recs.values():
        with torch.no_grad():
            rec.id_embedding.weight[1:] += noise
    cos = torch.nn.functional.cosine_similarity(free.id_start + noise, free.id_start, dim=-1)
    out_free, out_pulled = free.training_step(batch, step=1), pulled.training_step(batch, step=1)
    assert out_free.stats["id_start_cos"] == pytest.approx(float(cos.mean()), abs=1e-4)
    assert float(cos.mean()) < 0.99  # the noise moved the rows
    assert out_pulled.stats["id_start_cos"] == out_free.stats["id_start_cos"]
    assert (out_pulled.loss - out_free.loss).item() == pytest.approx(2.0 * float((1 - cos).mean()), rel=1e-4)
    assert out_pulled.stats["id_anchor_loss"] == pytest.approx(2.0 * float((1 - cos).mean()), rel=1e-3)
    assert "id_anchor_loss" not in out_free.stats
    # one gradient step on the pull alone: every row turns toward its start
    pulled.zero_grad()
    (2.0 * (1 - pulled.id_start_cos()).mean()).backward()
    with torch.no_grad():
        pulled.id_embedding.weight -= 1e-3 * pulled.id_embedding.weight.grad
    assert (pulled.id_start_cos().detach() > cos).all()
    with pytest.raises(ValueError, match="only with a text start"):  # direct callers, past the config's check
        HLLMRecommender(free.hllm, free.catalogue_tokens[1:], free.pad_id, stage=2, id_only=True,
                        id_anchor_weight=1.0)


def test_stage1_length_chunks_give_the_one_batch_vectors_and_gradients(tmp_path):
    """Stage 1 encodes a step's items in length-sorted chunks; the result and its gradients must be
    those of one padded batch, in the caller's id order."""
    from feature_gen.data.sequences import load_interaction_data
    from feature_gen.model.item_text import pad_token_ids

    cfg = toy_config(tmp_path, stage=1)
    cfg = cfg.model_copy(update={"item_text": cfg.item_text.model_copy(update={"max_item_tokens": 64})})
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    ids = torch.tensor([7, 30, 1, 12, 9, 30, 2])  # mixed lengths ("item number 7" vs "... 30"), a repeat
    assert len({len(rec.catalogue_tokens[i]) for i in ids.tolist()}) > 1
    rec.length_chunk = 2
    chunked = rec.encode_items(ids)
    (chunked * torch.arange(chunked.numel()).view_as(chunked)).sum().backward()
    grads = [p.grad.clone() for p in rec.hllm.item_llm.parameters()]
    rec.zero_grad()
    batch = pad_token_ids([rec.catalogue_tokens[i] for i in ids.tolist()], rec.pad_id, rec.padding_side)
    whole = rec.hllm.item_llm(batch.input_ids, batch.attention_mask)
    (whole * torch.arange(whole.numel()).view_as(whole)).sum().backward()
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, (p.grad for p in rec.hllm.item_llm.parameters())):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_zero3_run_freezes_whole_weights_into_the_bundle(tmp_path):
    """ZeRO-3 shards every parameter (a rank's local tensor is empty): the selected checkpoint, the
    bundle and the parameter count must still hold the whole weights."""
    from safetensors.torch import load_file

    from feature_gen.data.sequences import load_interaction_data

    cfg = toy_config(tmp_path, stage=1, epochs=1, deepspeed_config=str(REPO / "configs/deepspeed/zero3.json"))
    result = run_training(cfg, resume=False)
    best = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    bundle = load_bundle(result.bundle)  # verifies every checksum
    state = bundle.model.state_dict()
    assert state and all(v.numel() > 0 for v in state.values())
    for name, value in state.items():
        torch.testing.assert_close(value, best[f"hllm.{name}"])
    rec, _, _ = build_recommender(cfg, load_interaction_data(cfg.data, cfg.item_text))
    assert result.throughput["trainable_params"] == sum(p.numel() for p in rec.parameters() if p.requires_grad)
    assert result.throughput["achieved_flops"] > 0


def test_gradient_clipping_is_applied(tmp_path):
    moved = {}
    for norm in (1.0, 1e-12):
        cfg = toy_config(tmp_path / str(norm), model="sasrec", epochs=1, max_steps=3, max_grad_norm=norm,
                         warmup_steps=0, freeze_bundle=False)
        from feature_gen.data.sequences import leave_one_out, load_interaction_data

        data = load_interaction_data(cfg.data, cfg.item_text)
        rec, _, _ = build_recommender(cfg, data)
        before = rec.items.weight.detach().clone()
        from trainer.loop import train

        train(rec, leave_one_out(data), data.num_items, cfg, cfg.train.output_dir, max_seq_len=8, resume=False)
        moved[norm] = (rec.items.weight.detach() - before).abs().max().item()
    # Adam normalises gradient scale away unless clipping drives it under eps: then updates vanish.
    assert moved[1e-12] < 0.01 * moved[1.0]


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = toy_config(tmp_path, model="sasrec", epochs=3, checkpoint_every_steps=2, freeze_bundle=False)

    def poison(state):
        if state.step == 2:
            with torch.no_grad():
                rec.user_model.ffn_norms[-1].weight.fill_(float("nan"))

    from feature_gen.data.sequences import leave_one_out, load_interaction_data
    from trainer.loop import train

    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    with pytest.raises(TrainingDiverged, match=r"at step 2 .*last good checkpoint: .*step2"):
        train(rec, leave_one_out(data), data.num_items, cfg, cfg.train.output_dir, max_seq_len=8,
              resume=False, on_step=poison)
    assert (Path(cfg.train.output_dir) / "checkpoints" / "step2").is_dir()


def test_bad_settings_fail_before_training(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 99, "zero_optimization": {"stage": 2}}))
    cfg = toy_config(tmp_path, deepspeed_config=str(ds))
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu is 99 but train.batch_size is 16"):
        run_training(cfg, resume=False)
    ds.write_text(json.dumps({"gradient_clipping": 5.0}))
    with pytest.raises(ConfigError, match=r"gradient_clipping is 5.0 but train.max_grad_norm is 1.0"):
        run_training(cfg, resume=False)
    from feature_gen.config import ItemLLMConfig, UserLLMConfig

    missing = toy_config(tmp_path).model_copy(
        update={"item_llm": ItemLLMConfig(source="folder", path=str(tmp_path / "no-model"))})
    with pytest.raises(ConfigError, match=r"^item_llm.path: .* is not a Hugging Face model folder"):
        run_training(missing, resume=False)
    narrow_user = {"source": "tiny_random", "projection": "none", "tiny": {**TINY, "hidden_size": 16, "seed": 1}}
    unprojected = toy_config(tmp_path).model_copy(update={"user_llm": UserLLMConfig(**narrow_user)})
    with pytest.raises(ConfigError, match=r"user_llm.projection: 'none' needs the User LLM's hidden size \(16"):
        run_training(unprojected, resume=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_shipped_deepspeed_configs_agree_with_the_trainer(tmp_path):
    from trainer.deepspeed_setup import build_deepspeed_config

    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        cfg = toy_config(tmp_path, deepspeed_config=str(REPO / "configs" / "deepspeed" / name))
        ds = build_deepspeed_config(cfg, total_steps=10)
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["gradient_clipping"] == cfg.train.max_grad_norm
        assert ds["bf16"]["enabled"] == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_kill_and_resume_continues_the_loss_curve(tmp_path):
    """kill -9 mid-run, resume: steps continue from the checkpoint, the curve has no repeats or gaps,
    and every loss matches an uninterrupted run of the same config. Random windows (redrawn each epoch)
    are the windowing with per-epoch state, so equal losses also show a resumed epoch trains on the
    windows it was killed in."""
    run = dict(epochs=3, freeze_bundle=False, eval_every_epochs=3, windows="random", stage1_max_seq_len=4)
    reference = toy_config(tmp_path / "ref", **run)
    ref = run_training(reference, resume=False)
    ref_curve = losses(ref.run_dir)

    cfg = toy_config(tmp_path / "killed", **run)
    cfg_path = tmp_path / "killed.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    # a fresh process group: not the rank/port variables this pytest process set for its own runs
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["PYTHONUNBUFFERED"] = "1"
    output = (tmp_path / "killed.log").open("w")
    # The toy run's 12 steps take ~0.2 s, less than the poll below needs to see 5 of them and kill: on a
    # slow CI machine the run finished before the kill (and the test failed). Each metrics line is held
    # back 0.15 s, so the kill lands mid-run, after a step has trained (and maybe checkpointed) but
    # before its line is logged: the resumed run must replay that step, not repeat it.
    slowed = ("import runpy, sys, time; import trainer.loop as loop; write = loop._log; "
              "loop._log = lambda path, record: (time.sleep(0.15), write(path, record)); "
              "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", slowed, str(REPO / "trainer" / "train.py"), "--config", str(cfg_path)],
                            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    log = Path(cfg.train.output_dir) / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and len(losses(Path(cfg.train.output_dir))) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert log.exists(), "the training process wrote no metrics:\n" + (tmp_path / "killed.log").read_text()[-3000:]
    done_before_kill = max(losses(Path(cfg.train.output_dir)))
    assert done_before_kill < max(ref_curve), "the run finished before it could be killed"

    resumed = run_training(cfg, resume=True)
    curve = losses(resumed.run_dir)
    assert sorted(curve) == sorted(ref_curve)  # every step once: no repeats, no gaps
    for step, loss in ref_curve.items():
        assert curve[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), f"step {step}"
    assert resumed.state.step == max(ref_curve)


def test_a_resumed_run_that_had_stopped_trains_no_further(tmp_path):
    """Early stopping and max_steps are part of the checkpointed state: resuming a run that stopped
    (here: no validation gain at lr ~0 with patience 1) adds no step and selects the same epoch."""
    cfg = toy_config(tmp_path, epochs=6, eval_every_epochs=1, early_stopping_patience=1, lr=1e-12,
                     freeze_bundle=False, windows="last")
    first = run_training(cfg, resume=False)
    assert first.state.bad_epochs >= 1 and first.state.epoch < 6, "the run should have stopped early"
    curve = losses(first.run_dir)
    again = run_training(cfg, resume=True)
    assert losses(again.run_dir) == curve and again.state.step == first.state.step
    assert again.state.best_epoch == first.state.best_epoch and again.valid == first.valid

    capped = toy_config(tmp_path / "capped", epochs=6, max_steps=3, freeze_bundle=False, windows="last")
    assert run_training(capped, resume=False).state.step == 3
    assert run_training(capped, resume=True).state.step == 3


def test_deepspeed_launcher_runs_two_data_parallel_ranks(tmp_path):
    """`deepspeed --num_gpus 2 trainer/train.py --config X` on CPU (gloo): each rank takes half of the
    users, rank 0 alone writes the log and the bundle, and the bundle loads."""
    import socket

    import yaml

    cfg = toy_config(tmp_path, epochs=2, windows="last", eval_every_epochs=2)
    cfg_path = tmp_path / "dp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["DS_ACCELERATOR"] = "cpu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Path(sys.executable).parent / "deepspeed"
    proc = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(port),
                           str(REPO / "trainer" / "train.py"), "--config", str(cfg_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_dir = Path(cfg.train.output_dir)
    # 60 users, one window each, 2 ranks -> 30 per rank -> ceil(30 / 16) = 2 steps per epoch, 2 epochs
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]  # each step logged once (rank 0), none missing
    result = json.loads((run_dir / "result.json").read_text())
    assert result["throughput"]["world_size"] == 2
    bundles = sorted((run_dir / "bundles").glob("hllm-*"))
    assert len(bundles) == 1
    load_bundle(bundles[0])  # whole and checksum-valid


def test_stage2_evaluates_its_starting_point_and_can_select_it(tmp_path):
    stage1 = run_training(toy_config(tmp_path, epochs=4, eval_every_epochs=2), resume=False)
    cfg = toy_config(tmp_path, stage=2, init_bundle=str(stage1.bundle), epochs=2, eval_every_epochs=1,
                     output_dir=str(tmp_path / "stage2"), freeze_bundle=False)
    result = run_training(cfg, resume=False)
    history = result.state.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # epoch 0 is the stage-1 selection, evaluated again through the stage-2 cache
    assert history[0]["ndcg@10"] == pytest.approx(stage1.valid["ndcg@10"], abs=1e-6)
    best = max(history, key=lambda h: h["ndcg@10"])
    assert result.state.best_epoch == best["epoch"]
    assert result.valid["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-6)
    logged = [json.loads(l) for l in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["step"] == 0 and "valid" in logged[0]


def test_resuming_a_folder_trained_with_another_model_names_the_way_out(tmp_path, caplog):
    """A rerun into the same train.output_dir with another model size used to stop in torch's
    "size mismatch" traceback; a changed field that still loads (the learning rate) resumes with a
    warning naming it, since the two configs' steps are mixed in one curve."""
    first = toy_config(tmp_path, max_steps=2, freeze_bundle=False)
    run_training(first, resume=False)
    assert (Path(first.train.output_dir) / "checkpoints" / "latest").is_file()
    wider = toy_config(tmp_path, max_steps=2, freeze_bundle=False)
    wider = wider.model_copy(update={"item_llm": wider.item_llm.model_copy(update={
        "tiny": wider.item_llm.tiny.model_copy(update={"hidden_size": 2 * TINY["hidden_size"],
                                                        "intermediate_size": 2 * TINY["intermediate_size"]})})})
    with pytest.raises(ConfigError, match=r"train.output_dir: .* holds a checkpoint of another model \(the config "
                                          r"differs in item_llm.tiny.hidden_size: .*--no-resume"):
        run_training(wider, resume=True)
    saved = load_config(Path(first.train.output_dir) / "config.yaml")  # the refused run did not overwrite the record
    assert saved.item_llm.tiny.hidden_size == TINY["hidden_size"]
    caplog.clear()  # (the refused run warned about its own difference first)
    with caplog.at_level(logging.WARNING, logger="trainer.loop"):
        run_training(toy_config(tmp_path, max_steps=2, freeze_bundle=False, lr=1e-3), resume=True)
    assert "train.lr: 0.003 -> 0.001" in caplog.text and "--no-resume starts over" in caplog.text
    assert "hidden_size" not in caplog.text
