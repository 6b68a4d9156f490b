"""The trainer's GPU-correct paths, checked on a CPU (issue 21, item 4).

A CPU has one device, so "every tensor is on the model's device" holds by accident there. Three
things make these tests able to fail anyway:
- `TrainingBatch.to` is checked on torch's `meta` device: a field it forgets stays on the CPU;
- a training step runs with torch's default device set to `meta` while the model is on the CPU: a
  tensor the step creates without `device=` lands on `meta`, as on a GPU it would land on the CPU,
  and the forward pre-hooks (or the op mixing devices) fail;
- the real loop (DeepSpeed, gloo) is checked to hand every micro-batch to `TrainingBatch.to` with
  the engine's device, with pre-hooks on every submodule.
Then: gradient accumulation (the same weights as one double batch), DeepSpeed's command-line arguments
through the real CLI, and the precision rule.
"""

from __future__ import annotations

import dataclasses
import math
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from feature_gen.config import ConfigError
from feature_gen.data.sequences import TrainingBatch, leave_one_out, load_interaction_data, training_windows
from feature_gen.model.bundle import load_bundle
from feature_gen.model.losses import GenerativeObjective
from tests.toys import agree_with_bundle, losses, toy_config
from trainer.deepspeed_setup import build_deepspeed_config, use_bf16
from trainer.train import build_recommender

REPO = Path(__file__).resolve().parent.parent


def tensors_of(obj, path="batch"):
    """(path, tensor) for every tensor inside a (nested) dataclass."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from tensors_of(getattr(obj, f.name), f"{path}.{f.name}")


def place_checks(module: torch.nn.Module) -> list:
    """Forward pre-hooks on every submodule with parameters: each tensor argument must be on the
    device of the module's parameters. Returns the handles."""

    def check(mod, args, kwargs):
        device = next(mod.parameters()).device
        for i, value in enumerate([*args, *kwargs.values()]):
            for path, t in tensors_of(value, f"argument {i}"):
                assert t.device == device, f"{type(mod).__name__}: {path} on {t.device}, parameters on {device}"

    return [m.register_forward_pre_hook(check, with_kwargs=True)
            for m in module.modules() if next(m.parameters(recurse=False), None) is not None]


def test_training_batch_to_moves_every_tensor():
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    batch = training_windows(seqs, [np.arange(4) * 60, np.arange(2) * 60], max_seq_len=3)
    moved = batch.to("meta")
    found = dict(tensors_of(moved))
    assert set(found) == {"batch.inputs.item_ids", "batch.inputs.timestamps", "batch.inputs.attention_mask",
                          "batch.targets"}
    for path, t in found.items():
        assert t.device.type == "meta", f"{path} stayed on {t.device}"
    assert all(t.device.type == "cpu" for _, t in tensors_of(batch))  # the original is left as it was
    assert {p: t.shape for p, t in tensors_of(batch)} == {p: t.shape for p, t in found.items()}


def test_objective_to_places_what_it_hands_the_model():
    from feature_gen.config import LossConfig

    cfg = LossConfig(negatives="sampled", num_negatives=5, logq_correction=True)
    objective = GenerativeObjective(cfg, "sampled", np.arange(11), seed=0, never=torch.tensor([3])).to("meta")
    assert objective.allowed.device.type == objective.log_q.device.type == "meta"
    assert objective.extra_ids(step=0).device.type == "meta"
    # the draws themselves stay on the CPU generator: the same negatives on every device
    cpu = GenerativeObjective(cfg, "sampled", np.arange(11), seed=0, never=torch.tensor([3]))
    assert objective.sampler.sample(5, 7).tolist() == cpu.extra_ids(7).tolist()


def _recommender(cfg):
    """The recommender of `cfg` with the training loop's own objective set-up (generative_examples)."""
    from trainer.loop import generative_examples

    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    rec, _, _ = build_recommender(cfg, data)
    generative_examples(rec, split, data.num_items, cfg, cfg.data.max_seq_len)
    return rec, split


@pytest.mark.parametrize("case", ["sasrec-full", "sasrec-in_batch-logq", "stage2-full-text_plus_id",
                                  "stage2-sampled-logq"])
def test_a_step_makes_every_tensor_on_the_model_device(tmp_path, tiny_bundle, case):
    """Default device `meta`, model on the CPU: anything the step creates without the model's device is
    caught (stage 1 tokenises on the CPU by design and is covered by the real-loop test below)."""
    if case.startswith("sasrec"):
        loss = {"negatives": "in_batch", "logq_correction": True} if "in_batch" in case else {}
        cfg = toy_config(tmp_path, model="sasrec", dropout=0.0)
        cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update=loss)})
    else:
        cfg = agree_with_bundle(toy_config(tmp_path, stage=2, text_plus_id="text_plus_id" in case), tiny_bundle)
        loss = {"negatives": "sampled", "num_negatives": 8, "logq_correction": True} if "sampled" in case else {}
        cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update=loss)})
    rec, split = _recommender(cfg)
    handles = place_checks(rec)
    batch = training_windows(split.train[:6], split.train_timestamps[:6], 8)
    with torch.device("meta"):
        out = rec.training_step(batch.to(rec.device), step=3)
    for h in handles:
        h.remove()
    assert out.loss.device == rec.device and torch.isfinite(out.loss)
    # and the same value as without the trap: a write from a misplaced tensor cannot have gone missing
    assert out.loss.item() == pytest.approx(rec.training_step(batch, step=3).loss.item(), rel=1e-6)
    out.loss.backward()
    assert any(p.grad is not None for p in rec.user_model.parameters())


@pytest.mark.parametrize("cache_targets", ["cached", "fresh"])
def test_a_cached_target_cache_encodes_only_the_steps_inputs(tmp_path, cache_targets):
    """Stage 1, negatives: cache. With cached targets the positives are cache rows, so the step runs the
    Item LLM on its inputs only (a target that is not an input costs nothing); with fresh targets it
    encodes them too. Either way the loss trains the Item LLM (through the User LLM's inputs)."""
    cfg = toy_config(tmp_path, windows="last")
    cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"negatives": "cache", "cache_targets": cache_targets})})
    rec, split = _recommender(cfg)
    batch = training_windows(split.train[:2], split.train_timestamps[:2], 3)  # short: targets beyond the inputs
    rec.objective.refresh(0, rec._table_for_cache)  # fill the cache first: its pass encodes the whole catalogue
    encoded = []
    original = rec.encode_items
    rec.encode_items = lambda ids: (encoded.append(ids.clone()), original(ids))[1]
    out = rec.training_step(batch, step=1)
    inputs = set(batch.inputs.item_ids[batch.inputs.item_ids > 0].tolist())
    targets = set(batch.targets[batch.targets > 0].tolist())
    assert targets - inputs, "the toy batch must have a target that is not an input"
    assert set(torch.cat(encoded).tolist()) == (inputs if cache_targets == "cached" else inputs | targets)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rec.hllm.item_llm.parameters())


def test_the_real_loop_places_every_batch_and_module_input(tmp_path, monkeypatch):
    """HLLM stage 1 (catalogue cache), two micro-batches per step, DeepSpeed on gloo: every micro-batch
    goes through TrainingBatch.to(engine.device), and every submodule's inputs are on its device,
    evaluation included."""
    from trainer.loop import train

    placed = []
    original = TrainingBatch.to

    def recording_to(self, device):
        placed.append(torch.device(device))
        return original(self, device)

    monkeypatch.setattr(TrainingBatch, "to", recording_to)
    cfg = toy_config(tmp_path, epochs=1, max_steps=2, gradient_accumulation_steps=2, batch_size=8, windows="last",
                     freeze_bundle=False)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    handles = place_checks(rec)
    result = train(rec, leave_one_out(data), data.num_items, cfg, cfg.train.output_dir, max_seq_len=8, resume=False)
    for h in handles:
        h.remove()
    assert result.state.step == 2 and result.throughput["gradient_accumulation_steps"] == 2
    assert placed == [torch.device(result.throughput["device"])] * 4  # 2 steps x 2 micro-batches
    logged = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["micro_batches"] for r in logged if "loss" in r] == [2, 2]


def test_accumulation_gives_the_weights_of_one_double_batch(tmp_path):
    """2 micro-batches of 8 users and 1 batch of 16 users, same users in the same order, dropout 0: after
    one optimizer step the logged loss, the gradient norm and every weight agree. Adam's first step is
    nearly sign(gradient), so the gradient norm is what shows a mis-scaled accumulation."""
    from trainer.loop import train

    runs = {}
    for name, batch, accumulation in (("accumulated", 8, 2), ("double", 16, 1)):
        cfg = toy_config(tmp_path / name, model="sasrec", dropout=0.0, epochs=1, max_steps=1, windows="last",
                         batch_size=batch, gradient_accumulation_steps=accumulation, freeze_bundle=False,
                         sasrec_hidden=32)
        data = load_interaction_data(cfg.data, cfg.item_text)
        torch.manual_seed(0)
        rec, _, _ = build_recommender(cfg, data)
        train(rec, leave_one_out(data), data.num_items, cfg, cfg.train.output_dir, max_seq_len=8, resume=False)
        record = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()][0]
        runs[name] = (record, {k: v.detach().clone() for k, v in rec.state_dict().items()})
    (acc_log, acc_w), (dbl_log, dbl_w) = runs["accumulated"], runs["double"]
    assert acc_log["micro_batches"] == 2 and dbl_log["micro_batches"] == 1
    assert acc_log["positions"] == dbl_log["positions"]
    assert acc_log["loss"] == pytest.approx(dbl_log["loss"], rel=1e-5)
    assert acc_log["grad_norm"] == pytest.approx(dbl_log["grad_norm"], rel=1e-4)
    for key in dbl_w:
        torch.testing.assert_close(acc_w[key], dbl_w[key], atol=1e-6, rtol=1e-5, msg=key)


def test_deepspeed_json_accumulation_is_honoured(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"gradient_accumulation_steps": 4, "train_batch_size": 16 * 4 * 2}))
    built = build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds)), total_steps=10, world_size=2)
    assert built["gradient_accumulation_steps"] == 4 and "train_batch_size" not in built  # DeepSpeed derives it
    assert built["train_micro_batch_size_per_gpu"] == 16
    with pytest.raises(ConfigError, match=r"ds.json: gradient_accumulation_steps is 4 but "
                                          r"train.gradient_accumulation_steps is 2"):
        build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds), gradient_accumulation_steps=2), 10, 2)
    with pytest.raises(ConfigError, match=r"train_batch_size is 128 but train.batch_size x gradient accumulation "
                                          r"steps x world size is 64"):
        build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds)), 10, world_size=1)
    for shipped in (None, str(REPO / "configs" / "deepspeed" / "zero2.json")):  # zero2.json says 1: the trainer's wins
        mine = build_deepspeed_config(toy_config(tmp_path, gradient_accumulation_steps=3, deepspeed_config=shipped), 10)
        assert mine["gradient_accumulation_steps"] == 3


def test_precision_rule(tmp_path, monkeypatch):
    import trainer.deepspeed_setup as setup

    ds = tmp_path / "ds.json"
    monkeypatch.setattr(setup, "bf16_available", lambda: False)
    assert use_bf16(toy_config(tmp_path)) is False  # auto on a machine without a bf16 GPU: fp32
    with pytest.raises(ConfigError, match=r"^train.precision: bf16 asked for, but this machine has no bf16-capable GPU"):
        use_bf16(toy_config(tmp_path, precision="bf16"))
    ds.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"ds.json: bf16.enabled: bf16 asked for, but this machine"):
        build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds)), 10)
    with pytest.raises(ConfigError, match=r"bf16.enabled is True but train.precision is 'fp32'"):
        build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds), precision="fp32"), 10)
    ds.write_text(json.dumps({"fp16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"fp16.enabled: the trainer trains in fp32 or bf16"):
        build_deepspeed_config(toy_config(tmp_path, deepspeed_config=str(ds)), 10)
    monkeypatch.setattr(setup, "bf16_available", lambda: True)
    assert build_deepspeed_config(toy_config(tmp_path), 10)["bf16"]["enabled"] is True  # auto on a bf16 GPU
    assert build_deepspeed_config(toy_config(tmp_path, precision="fp32"), 10)["bf16"]["enabled"] is False


def test_deepspeed_command_line_arguments(tmp_path, capsys):
    """`python -m trainer.train --config X --deepspeed --deepspeed_config ds.json --local_rank 0`: the
    JSON's accumulation applies; a --deepspeed_config that contradicts train.deepspeed_config is refused."""
    from trainer.train import main

    cfg = toy_config(tmp_path, epochs=1, max_steps=1, windows="last", batch_size=8, freeze_bundle=False)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"gradient_accumulation_steps": 2, "zero_optimization": {"stage": 1}}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--config", str(cfg_path), "--deepspeed",
                           "--deepspeed_config", str(ds), "--local_rank", "0", "--no-resume"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert " INFO hllm.progress: train " in proc.stderr, proc.stderr[-2000:]  # the trainer's own entry point logs progress
    records = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["micro_batches"]) for r in records if "loss" in r] == [(1, 2)]
    assert json.loads((Path(cfg.train.output_dir) / "result.json").read_text())["throughput"]["gradient_accumulation_steps"] == 2

    other = tmp_path / "other.json"
    other.write_text("{}")
    cfg_path.write_text(yaml.safe_dump({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "deepspeed_config": str(other)}}))
    assert main(["--config", str(cfg_path), "--deepspeed", "--deepspeed_config", str(ds)]) == 2
    err = capsys.readouterr().err
    assert f"--deepspeed_config {ds} but train.deepspeed_config is {other}; give one of them" in err


def _bf16_params_fp32_buffers(module: torch.nn.Module) -> None:
    """What DeepSpeed's bf16 does to a module (engine._configure_distributed_model, 0.19): parameters to
    bf16, floating buffers (here: stage 2's cached catalogue, the text start) kept in float32."""
    for p in module.parameters():
        p.data = p.data.to(torch.bfloat16)


@pytest.mark.parametrize("case", ["stage2-full", "stage2-full-text_plus_id", "stage2-adapter-item_dim",
                                  "stage2-sampled-logq", "stage2-id_init-anchor", "stage1-in_batch", "stage1-cache",
                                  "stage1-cache-fresh", "stage1-item_dim", "stage1-item_dim-cache", "sasrec-full"])
def test_a_bf16_step_mixes_no_dtypes(tmp_path, tiny_bundle, case):
    """A step as DeepSpeed's bf16 runs it (bf16 parameters, float32 buffers) on a CPU, then the table
    evaluation ranks with. A float32 tensor (stage 2's cached catalogue, stage 1's table from
    embed_token_ids) meeting a bf16 matmul (the softmax, an adapter, the item_dim map) stops it with a
    dtype error: on an H200 stage 2 did exactly that (benchmarks/gpu_check.py). Each generative variant
    that reads such a tensor is here; the loss is float32 and every trainable part gets a gradient."""
    if case.startswith("sasrec"):
        cfg = toy_config(tmp_path, model="sasrec", dropout=0.0)
    elif case.startswith("stage1"):
        cfg = toy_config(tmp_path, windows="last", **({"item_dim": 16} if "item_dim" in case else {}))
        if "cache" in case:
            loss = {"negatives": "cache", "cache_targets": "fresh" if "fresh" in case else "cached"}
            cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update=loss)})
    else:
        train = {"stage": 2}
        if "text_plus_id" in case:
            train["text_plus_id"] = True
        if "item_dim" in case:
            train["item_dim"] = 16
        if "id_init" in case:
            train.update(text_plus_id=True, item_dim=16, id_init="text_pca", id_anchor_weight=0.1)
        cfg = toy_config(tmp_path, **train)
        if "item_dim" in train:  # its own (random, frozen) Item LLM: an init bundle fixes the item width
            cfg = cfg.model_copy(update={"item_llm": cfg.item_llm.model_copy(update={"adapter": "linear"})})
        else:
            cfg = agree_with_bundle(cfg, tiny_bundle)
        if "sampled" in case:
            loss = {"negatives": "sampled", "num_negatives": 8, "logq_correction": True}
            cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update=loss)})
    rec, split = _recommender(cfg)
    _bf16_params_fp32_buffers(rec)
    batch = training_windows(split.train[:6], split.train_timestamps[:6], 8)
    if case.startswith("stage1-cache"):
        rec.objective.refresh(0, rec._table_for_cache)
    out = rec.training_step(batch, step=3)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in rec.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all() for g in grads)
    for part in ("item_projection", "id_embedding"):
        if getattr(rec, part, None) is not None:
            assert getattr(rec, part).weight.grad is not None, part
    if "id_init" in case:
        assert rec.id_start_cos().dtype == torch.float32  # bf16 would round a cosine near 1 to 1
    table = rec.item_table()  # what evaluation ranks with (in float32, trainer/loop.evaluate)
    assert table.dim() == 2 and table.shape[0] > 1 and torch.isfinite(table.float()).all()


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_logit_scale_bound_holds_on_the_optimizers_own_copy(tmp_path, zero_stage):
    """A loss that wants an ever larger scale, started just under the bound (LogitScale(0.011): log 90.9
    against log 100), lr 0.1, 20 steps through DeepSpeed. ZeRO-2 steps an fp32 copy of its own that
    forward's in-place clamp never reaches: without clamp_logit_scale_copies it drifts past the bound (the
    control), with it the copy ends on the bound. ZeRO 0 has no copy: forward's clamp holds there."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from feature_gen.model.losses import LogitScale
    from trainer.deepspeed_setup import clamp_logit_scale_copies, ensure_single_process_env

    class WantsLargerScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = LogitScale(0.011, max_scale=100.0)
            self.other = torch.nn.Linear(2, 2)  # a second parameter, so the flat partition is not the scale alone

        def forward(self, x):
            return -self.scale() + 0.0 * self.other(x).sum()

    ensure_single_process_env()
    bound = math.log(100.0)
    ends = {}
    for clamp in (False, True):
        torch.manual_seed(0)
        module = WantsLargerScale()
        ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": zero_stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "weight_decay": 0.0, "torch_adam": True}}}
        engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=ds)
        for _ in range(20):
            engine.backward(engine(torch.zeros(1, 2)))
            engine.step()
            if clamp:
                clamp_logit_scale_copies(engine.module)
        param = engine.module.scale.log_scale
        copy = safe_get_full_fp32_param(param)
        assert (copy is None) == (zero_stage == 0)
        ends[clamp] = float((param if copy is None else copy).detach()[0])
    if zero_stage == 2:
        assert ends[False] > bound + 1.0  # the control: the copy ran away (~20 steps x 0.1)
        assert ends[True] == pytest.approx(bound, abs=1e-6)  # clamped after every step
    else:
        # ZeRO 0: the optimizer steps the parameter, and forward's clamp holds it (the last step's ~0.1
        # lands after the last forward); the helper finds no copy and changes nothing
        assert ends[False] == pytest.approx(ends[True]) and ends[True] <= bound + 0.1 + 1e-6


def test_the_loop_clamps_the_copies_once_per_optimizer_step(tmp_path, monkeypatch):
    """The wiring of the test above: trainer.loop.train calls clamp_logit_scale_copies after each
    optimizer step (2 steps of 2 micro-batches: 2 calls, not 4), on the module being trained."""
    import trainer.loop as loop

    calls = []
    monkeypatch.setattr(loop, "clamp_logit_scale_copies", lambda module: calls.append(module) or 0)
    cfg = toy_config(tmp_path, epochs=1, max_steps=2, windows="last", batch_size=8, gradient_accumulation_steps=2)
    data = load_interaction_data(cfg.data, cfg.item_text)
    rec, _, _ = build_recommender(cfg, data)
    loop.train(rec, leave_one_out(data), data.num_items, cfg, cfg.train.output_dir, max_seq_len=8, resume=False)
    assert len(calls) == 2 and all(m is rec for m in calls)
