"""The model bundle: the frozen stage-3 artifact every downstream job reads.

Layout of `<root>/<version>/`:

    manifest.json        version, base models, dims, text template, max lengths, data fingerprint,
                         metrics, sha256 of every other file
    config.yaml          the HLLMConfig the model was built from (backbone sources point into the bundle)
    item_llm/            backbone config.json + model.safetensors (save_pretrained)
    user_llm/            the same for the User LLM
    heads.safetensors    everything that is not a backbone: [ITEM] token, projections, time embeddings,
                         logit scale, fusion heads
    tokenizer/           the Item LLM tokenizer
    onnx/                added by `hllm export` (listed in the manifest with checksums)
    README.md            the model card (feature_gen/model/model_card.py), rendered from the manifest

The version is derived from the content (a hash of the files' hashes), so the same weights always get
the same version and a changed weight always gets a new one. Loading verifies every checksum and
refuses a tampered or partial bundle. Weights are safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from feature_gen.config import HLLMConfig, config_from_dict, read_data_file
from feature_gen.model.model_card import CARD, base_model_licence, render_model_card

MANIFEST = "manifest.json"
MODEL_SECTIONS = ("seed", "data", "item_text", "item_llm", "user_llm", "loss", "eval")
FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle that is missing, partial, tampered with, or of an unknown format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _version_of(hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name, digest in sorted(hashes.items()):
        if name.startswith("onnx/") or name == CARD:
            continue  # derived artefacts (ONNX graphs, the model card) do not change what the model is
        h.update(f"{name}:{digest}\n".encode())
    return "hllm-" + h.hexdigest()[:12]


def _is_backbone_key(key: str) -> bool:
    # early_scorer holds a reference to the same User LLM; its copy of the weights is not separate.
    return ".backbone." in key or key.startswith("early_scorer.user_llm.")


def _bundle_config(cfg: HLLMConfig) -> dict[str, Any]:
    """The training config with both backbones pointing at the bundle's own folders (relative)."""
    raw = cfg.model_dump()
    for name in ("item_llm", "user_llm"):
        raw[name].update(source="folder", path=name, package=None, gguf_file=None, keep_layers=None)
    return raw


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    cfg: HLLMConfig
    model: Any  # feature_gen.model.hllm.HLLM, in eval mode
    tokenizer: Any

    @property
    def version(self) -> str:
        return self.manifest["version"]


def save_bundle(
    model,
    tokenizer,
    cfg: HLLMConfig,
    root: str | Path,
    *,
    data_fingerprint: str | None = None,
    metrics: dict[str, Any] | None = None,
    base_models: dict[str, str] | None = None,
    data_sizes: dict[str, int] | None = None,
) -> Path:
    """Freeze `model` into `<root>/<version>/` atomically, with its model card (README.md); return
    that folder. `data_sizes`: e.g. {"users": U, "items": N, "interactions": I} for the card."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        model.item_llm.backbone.save_pretrained(tmp / "item_llm", safe_serialization=True)
        model.user_llm.backbone.save_pretrained(tmp / "user_llm", safe_serialization=True)
        heads = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not _is_backbone_key(k)}
        save_file(heads, str(tmp / "heads.safetensors"))
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "config.yaml").write_text(yaml.safe_dump(_bundle_config(cfg), sort_keys=False))
        hashes = _file_hashes(tmp)
        version = _version_of(hashes)
        manifest = {
            "format": FORMAT_VERSION,
            "version": version,
            "created_unix": int(time.time()),
            "base_models": base_models or {},
            "item_dim": int(model.item_llm.hidden_size),
            "user_hidden": int(model.user_llm.backbone.config.hidden_size),
            "item_text": cfg.item_text.model_dump(),
            "max_item_tokens": cfg.item_text.max_item_tokens,
            "max_seq_len": cfg.data.max_seq_len,
            "pooling": cfg.item_llm.pooling,
            "use_timestamps": cfg.user_llm.use_timestamps,
            "data_fingerprint": data_fingerprint,
            "data_sizes": data_sizes or {},
            "metrics": metrics or {},
            "base_model_licences": {n: base_model_licence(getattr(cfg, n).model_dump()) for n in ("item_llm", "user_llm")},
            "files": hashes,
        }
        (tmp / CARD).write_text(render_model_card(manifest, cfg.model_dump(), manifest["base_model_licences"]))
        hashes[CARD] = _sha256(tmp / CARD)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        target = root / version
        if target.exists():
            verify_bundle(target)  # same content already frozen: keep the existing one
            return target
        tmp.rename(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: bundle folder not found")
    manifest_path = path / MANIFEST
    manifest = read_data_file(manifest_path, BundleError, f"{path}: no {MANIFEST} (a partial bundle, or not a bundle)")
    if manifest.get("format") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, this code reads {FORMAT_VERSION}")
    return manifest


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; return the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    expected: dict[str, str] = manifest["files"]
    for name, digest in sorted(expected.items()):
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing (partial bundle)")
        actual = _sha256(f)
        if actual != digest:
            raise BundleError(f"{path}: {name} fails its checksum (sha256 {actual[:12]}…, manifest {digest[:12]}…)")
    if _version_of(expected) != manifest["version"]:
        raise BundleError(f"{path}: version {manifest['version']} does not match the files it lists")
    return manifest


def record_files(path: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-hash the bundle after adding derived files (e.g. onnx/) and merge `extra` into the manifest.
    The version is unchanged: derived files do not enter it."""
    path = Path(path)
    manifest = verify_bundle(path) if not extra else read_manifest(path)
    manifest.update(extra or {})
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    (path / CARD).write_text(render_model_card(manifest, config, manifest.get("base_model_licences")))
    manifest["files"] = _file_hashes(path)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(path / MANIFEST)
    return manifest


def bundle_config(path: str | Path) -> HLLMConfig:
    """The model sections of the bundle's config.yaml, backbone paths resolved into the bundle. Does not
    verify checksums (load_bundle and the ONNX loader do that first)."""
    path = Path(path)
    raw = yaml.safe_load((path / "config.yaml").read_text())
    # Only the sections that define the model: a bundle must keep loading when an unrelated section
    # (ranker, stream, spark ...) of the schema gains or renames a field.
    raw = {k: v for k, v in raw.items() if k in MODEL_SECTIONS}
    for name in ("item_llm", "user_llm"):
        raw[name]["path"] = str(path / raw[name]["path"])
    return config_from_dict(raw, str(path / "config.yaml"))


def load_bundle_tokenizer(path: str | Path):
    """The Item LLM tokenizer saved in the bundle."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path) / "tokenizer")


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load a bundle into an eval-mode HLLM with its tokenizer."""
    from feature_gen.model.hllm import build_hllm

    path = Path(path)
    manifest = verify_bundle(path)
    cfg = bundle_config(path)
    tokenizer = load_bundle_tokenizer(path)
    model, _ = build_hllm(cfg, with_tokenizer=False)
    heads = load_file(str(path / "heads.safetensors"))
    missing, unexpected = model.load_state_dict(heads, strict=False)
    missing = [k for k in missing if not _is_backbone_key(k)]
    if missing or unexpected:
        raise BundleError(f"{path}: heads.safetensors does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Bundle(path=path, manifest=manifest, cfg=cfg, model=model, tokenizer=tokenizer)
