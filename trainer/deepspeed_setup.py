"""DeepSpeed glue: the config from the trainer's settings, the single-process CPU switch, and ZeRO-3's
whole-parameter access (sizes, gathering, saving).

The trainer's config (`train.*`) is the source of truth. A DeepSpeed JSON (`train.deepspeed_config`,
e.g. configs/deepspeed/zero2.json) contributes what the trainer does not own (ZeRO stage, offload,
communication settings); a value that contradicts the trainer's (`train_micro_batch_size_per_gpu` vs
`train.batch_size`, `gradient_clipping` vs `train.max_grad_norm`, the optimizer's lr ...) stops the run
before training, naming both fields. "auto" is filled in. Two fields the JSON may set for the trainer:
`gradient_accumulation_steps` (applies when `train.gradient_accumulation_steps` is left at 1; a JSON
value of 1, as in the shipped configs, leaves the trainer's) and
`bf16.enabled` (applies when `train.precision` is `auto`); `train_batch_size` must then equal
micro-batch x accumulation x world size.

CPU: DeepSpeed picks its CPU accelerator with DS_ACCELERATOR=cpu and the gloo backend when oneCCL is
absent. A plain `python`/`hllm train` run has no launcher, so `ensure_single_process_env` provides the
rank variables the launcher would have set (otherwise DeepSpeed looks for mpi4py and fails).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from feature_gen.config import ConfigError, HLLMConfig, read_data_file


def ensure_single_process_env() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return  # the deepspeed launcher (or torchrun) set them
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


@torch.no_grad()
def clamp_logit_scale_copies(module: nn.Module) -> int:
    """Hold the optimizer's fp32 copy of every LogitScale's parameter inside its bound; returns how many
    copies it moved. LogitScale clamps its parameter in place in forward, which holds where the optimizer
    steps the parameter itself (ZeRO 0, fp32: nothing to do here). Under ZeRO >= 1 or DeepSpeed's bf16 the
    optimizer steps a copy of its own and writes it back after each step, so the clamp never reaches it:
    on ZeRO-2 the copy drifted from log 50 to 5.91 (bound log 100 = 4.61) in 20 steps of a loss that
    wants a larger scale, and would leave a dead zone the size of the drift when the loss turns. Call it
    on every rank after each optimizer step (ZeRO-3 gathers the copy)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    from feature_gen.model.losses import LogitScale

    moved = 0
    for m in module.modules():
        if not isinstance(m, LogitScale):
            continue
        full = safe_get_full_fp32_param(m.log_scale)
        if full is None:  # no copy: the parameter is what the optimizer steps
            continue
        clamped = full.clamp(0.0, m.max_log_scale)
        if not torch.equal(clamped, full):
            safe_set_full_fp32_param(m.log_scale, clamped)
            moved += 1
    return moved


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accumulation_steps(cfg: HLLMConfig, base: dict | None = None, source: str = "<trainer defaults>") -> int:
    """Micro-batches per optimizer step: `train.gradient_accumulation_steps`, or the DeepSpeed JSON's
    `gradient_accumulation_steps` where the trainer's is left at 1 (1 or 'auto' in the JSON: the
    trainer's). Both above 1 and different: ConfigError naming both."""
    mine = cfg.train.gradient_accumulation_steps
    theirs = (base or {}).get("gradient_accumulation_steps", "auto")
    if theirs == "auto" or theirs is None or theirs == 1:
        return mine
    if not isinstance(theirs, int) or isinstance(theirs, bool) or theirs < 1:
        raise ConfigError(f"{source}: gradient_accumulation_steps must be a positive integer or 'auto'; got {theirs!r}")
    if mine == 1 or theirs == mine:
        return theirs
    raise ConfigError(f"{source}: gradient_accumulation_steps is {theirs} but train.gradient_accumulation_steps is "
                      f"{mine}; set one of them (or 'auto')")


def use_bf16(cfg: HLLMConfig, base: dict | None = None, source: str = "<trainer defaults>") -> bool:
    """Train in bf16? `train.precision` (auto: bf16 where the GPU supports it, else fp32), or the
    DeepSpeed JSON's `bf16.enabled` where the trainer's is `auto`. bf16 asked for on a machine without
    a bf16 GPU, fp16, or the two settings disagreeing: ConfigError naming the field."""
    base = base or {}
    precision = cfg.train.precision
    if (base.get("fp16") or {}).get("enabled") is True:
        raise ConfigError(f"{source}: fp16.enabled: the trainer trains in fp32 or bf16 (train.precision); "
                          "remove fp16 (loss scaling is not wired in)")
    theirs = (base.get("bf16") or {}).get("enabled", "auto")
    field = "train.precision"
    if theirs != "auto" and precision == "auto":
        precision, field = ("bf16" if theirs else "fp32"), f"{source}: bf16.enabled"
    elif theirs != "auto" and (precision == "bf16") != bool(theirs):
        raise ConfigError(f"{source}: bf16.enabled is {theirs!r} but train.precision is {precision!r}; set one of them")
    if precision == "auto":
        return bf16_available()
    if precision == "bf16" and not bf16_available():
        raise ConfigError(f"{field}: bf16 asked for, but this machine has no bf16-capable GPU (use 'auto' or 'fp32')")
    return precision == "bf16"


def _check(ds: dict, key_path: str, wanted: Any, owner: str, source: str) -> None:
    node: Any = ds
    parts = key_path.split(".")
    for p in parts[:-1]:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    if not isinstance(node, dict) or parts[-1] not in node:
        return
    value = node[parts[-1]]
    if value == "auto":
        return
    if isinstance(wanted, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{source}: {key_path} is {value!r}, not a number (or 'auto')")
    same = abs(float(value) - float(wanted)) <= 1e-12 * max(1.0, abs(float(wanted))) if isinstance(wanted, (int, float)) else value == wanted
    if not same:
        raise ConfigError(f"{source}: {key_path} is {value!r} but {owner} is {wanted!r}; set one of them (or 'auto')")


def build_deepspeed_config(cfg: HLLMConfig, total_steps: int, world_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed config for this run: the user's JSON (if any) merged under the trainer's settings."""
    t = cfg.train
    base: dict[str, Any] = {}
    source = "<trainer defaults>"
    if t.deepspeed_config:
        path = Path(t.deepspeed_config)
        base = read_data_file(path, ConfigError, f"train.deepspeed_config: {path} does not exist",
                              what=f"train.deepspeed_config: {path}")
        source = str(path)
        if not isinstance(base, dict):
            raise ConfigError(f"{source}: expected a JSON object of DeepSpeed settings; got {type(base).__name__}")
        for key in ("optimizer", "bf16", "fp16", "zero_optimization", "scheduler"):
            if key in base and not isinstance(base[key], dict):
                raise ConfigError(f"{source}: {key} must be an object ({{...}}); got {base[key]!r}")
        _check(base, "train_micro_batch_size_per_gpu", t.batch_size, "train.batch_size", source)
        _check(base, "gradient_clipping", t.max_grad_norm, "train.max_grad_norm", source)
        _check(base, "optimizer.params.lr", t.lr, "train.lr", source)
        _check(base, "optimizer.params.weight_decay", t.weight_decay, "train.weight_decay", source)
        opt_type = base.get("optimizer", {}).get("type", "AdamW")
        if str(opt_type).lower() not in ("adamw", "adam"):
            raise ConfigError(f"{source}: optimizer.type {opt_type!r}: the trainer uses AdamW")
    accumulation = accumulation_steps(cfg, base, source)
    _check(base, "train_batch_size", t.batch_size * accumulation * world_size,
           "train.batch_size x gradient accumulation steps x world size", source)
    bf16 = use_bf16(cfg, base, source)
    ds = dict(base)
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = accumulation
    ds.pop("train_batch_size", None)  # DeepSpeed derives it (micro-batch x accumulation x its world size)
    ds["gradient_clipping"] = t.max_grad_norm
    ds["optimizer"] = {
        "type": "AdamW",
        # torch's AdamW: DeepSpeed's fused CPU Adam needs a ~90 s compile and gains nothing at this size.
        "params": {"lr": t.lr, "weight_decay": t.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True},
    }
    ds["scheduler"] = {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": max(total_steps, t.warmup_steps + 1),
            "warmup_num_steps": max(1, t.warmup_steps),  # DeepSpeed refuses 0
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.1,
        },
    }
    ds["bf16"] = {**(base.get("bf16") or {}), "enabled": bf16}
    ds.setdefault("zero_optimization", {"stage": 0})
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs its own figures
    ds.setdefault("wall_clock_breakdown", False)
    return ds


# ZeRO-3 partitions every parameter across ranks: locally a parameter is then an empty tensor and its
# real size is `ds_numel`. Code that reads weights directly (counting, saving, loading the selected
# checkpoint, the bundle, the ID table used in evaluation) goes through the helpers below.


def full_numel(p: torch.Tensor) -> int:
    """A parameter's full size, also when ZeRO-3 has partitioned it away (its local numel is then 0)."""
    return int(getattr(p, "ds_numel", p.numel()))


def is_sharded(module: nn.Module) -> bool:
    """True when ZeRO-3 has partitioned the module's parameters across ranks."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def full_parameters(module: nn.Module):
    """Context in which every parameter of `module` is whole on this rank. Under ZeRO-3 forward hooks
    gather what a forward needs, but nothing else does; changes made inside (loading weights) are
    taken from rank 0 and re-sharded on exit. Without ZeRO-3: no-op."""
    if not is_sharded(module):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0)


def whole_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state, whole even under ZeRO-3 (every rank must call it: gathering is collective),
    each tensor once: a submodule reachable under two names (HLLMRecommender's `user_model` is
    `hllm.user_llm`) is saved under its first name; `load_state_dict(strict=False)` fills both.
    Unsharded: the module's own tensors, no copy (safetensors moves them to CPU as it writes).
    Sharded: standalone CPU copies, because gathered parameters are views into one flat buffer that
    safetensors rightly refuses to save as separate tensors, and the buffer is freed on exit."""
    if not is_sharded(module):
        return _each_tensor_once(module.state_dict())
    with full_parameters(module):
        return {k: v.to("cpu", copy=True) for k, v in _each_tensor_once(module.state_dict()).items()}


def _each_tensor_once(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without aliases: a tensor reachable under several names is kept under its first."""
    seen, kept = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor.detach()
    return kept
