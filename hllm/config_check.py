"""`hllm check-config`: what will fail later, found now, all at once.

The schema (feature_gen/config.py) checks types and values; this adds what only the machine can say:
every path the config reads exists and is readable, every model folder loads its config, the data
files have a format a reader accepts, every output folder can be created, the DeepSpeed JSON agrees
with the trainer's settings and this machine, and the trainer accepts the objective (the same cross-field rules it applies at start; only the catalogue-size rules, which need the
data, are left to it). Each problem is one line naming the field; `problems(cfg)` returns them all
instead of stopping at the first.
"""

from __future__ import annotations

import os
from pathlib import Path

from feature_gen.config import HLLMConfig

from feature_gen.data.formats import FORMATS as READABLE_DATA  # what the readers take (read_any), by suffix


def _readable(field: str, value: str | None, kind: str = "file") -> list[str]:
    if not value:
        return []
    path = Path(value).expanduser()
    if not path.exists():
        return [f"{field}: {path} does not exist"]
    if kind == "file" and not path.is_file():
        return [f"{field}: {path} is not a file"]
    if kind == "folder" and not path.is_dir():
        return [f"{field}: {path} is not a folder"]
    if not os.access(path, os.R_OK):
        return [f"{field}: {path} is not readable by this user"]
    return []


def _writable(field: str, value: str | None) -> list[str]:
    """An output location: it, or its nearest existing parent, must be a writable folder."""
    if not value:
        return []
    path = Path(value).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"{field}: {path} cannot be created ({probe} is not a folder)"]
    if not os.access(probe, os.W_OK):
        return [f"{field}: {path} cannot be created ({probe} is not writable)"]
    return []


def _model_problems(name: str, section) -> list[str]:
    """A backbone section's files: a folder that loads its config.json, or a GGUF file."""
    from feature_gen.model.base_models import package_folder

    if section.source == "tiny_random":
        return []
    try:
        base = package_folder(section.package) if section.package else None
    except Exception as exc:  # ConfigError: package not installed
        return [f"{name}.package: {exc}"]
    if section.source == "gguf":
        folder = (base / (section.path or "")) if base else Path(section.path).expanduser()
        return _readable(f"{name}.gguf_file", str(folder / section.gguf_file))
    folder = base / section.path if base else Path(section.path).expanduser()
    found = _readable(f"{name}.path", str(folder), kind="folder")
    if found:
        return found
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(folder)
    except Exception as exc:  # OSError / ValueError from transformers: say which folder and why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"{name}.path: {folder} does not load as a Hugging Face model folder ({reason})"]
    return []


def _bundle_problems(field: str, value: str | None) -> list[str]:
    found = _readable(field, value, kind="folder")
    if found or not value:
        return found
    if not (Path(value).expanduser() / "manifest.json").is_file():
        return [f"{field}: {value} is not a model bundle (no manifest.json)"]
    return []


def _objective_problems(cfg: HLLMConfig) -> list[str]:
    """The trainer's own objective check, run without the data: a field one objective or kind of
    negatives would ignore, or that one stage cannot honour (e.g. `loss.num_negatives` without
    `negatives: sampled`), fails here rather than after `hllm train` has loaded the data."""
    from feature_gen.config import ConfigError

    try:
        if cfg.loss.objective == "discriminative":
            from trainer.discriminative import check_discriminative

            check_discriminative(cfg)
        else:
            from feature_gen.model.losses import check_run_objective

            check_run_objective(cfg)  # the data is not read here: the catalogue-size rules stay with the trainer
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _deepspeed_problems(cfg: HLLMConfig) -> list[str]:
    """The DeepSpeed JSON merged the way the trainer merges it (trainer.deepspeed_setup): a value that
    contradicts the trainer's (lr, batch size, clipping, precision, accumulation), fp16, another
    optimizer, or bf16 on a machine without a bf16 GPU. The world size is this launch's (WORLD_SIZE, 1
    when unset): check a multi-process JSON where it is launched."""
    from feature_gen.config import ConfigError

    if cfg.train.deepspeed_config and _readable("train.deepspeed_config", cfg.train.deepspeed_config):
        return []  # the missing file is reported already (without a JSON: the trainer's own settings, e.g. bf16)
    from trainer.deepspeed_setup import build_deepspeed_config

    try:
        build_deepspeed_config(cfg, total_steps=1, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as exc:
        return list(exc.problems)
    return []


def problems(cfg: HLLMConfig) -> list[str]:
    """Every problem the config's files and folders would cause, one line each (empty: all good)."""
    found: list[str] = []
    if cfg.data.source == "files":
        for field in ("items_path", "interactions_path"):
            value = getattr(cfg.data, field)
            # a folder is a Parquet dataset (Spark's output), which every reader takes
            is_folder = bool(value) and Path(value).expanduser().is_dir()
            found += _readable(f"data.{field}", value, kind="folder" if is_folder else "file")
            if value and not is_folder and not value.lower().endswith(READABLE_DATA):
                found.append(f"data.{field}: {value} has an unknown format (expected one of {', '.join(READABLE_DATA)})")
    found += _readable("train.deepspeed_config", cfg.train.deepspeed_config)
    found += _bundle_problems("train.init_bundle", cfg.train.init_bundle)
    found += _bundle_problems("stream.bundle_path", cfg.stream.bundle_path)
    for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        found += _readable(f"stream.{field}", getattr(cfg.stream, field))
    if cfg.stream.sasl_password_env and cfg.stream.sasl_password_env not in os.environ:
        found.append(f"stream.sasl_password_env: environment variable {cfg.stream.sasl_password_env} is not set")
    for name in ("item_llm", "user_llm"):
        found += _model_problems(name, getattr(cfg, name))
    found += _writable("train.output_dir", cfg.train.output_dir)
    found += _writable("store.repo_path", cfg.store.repo_path)
    found += _writable("store.offline_root", cfg.store.offline_root)
    found += _objective_problems(cfg)
    found += _deepspeed_problems(cfg)
    return found
