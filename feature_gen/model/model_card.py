"""The bundle's model card: `README.md`, written at freeze time from the manifest and the config.

What a person reads before using a bundle (Hugging Face's model-card sections, shortened): what it
is for, the base models and their licences, the data (fingerprint, sizes), how it was trained
(objective, stage, epochs), its validation and test metrics with the split, the embedding dimension
and similarity, limits, and how to load it. Everything comes from the manifest, so the card never
disagrees with the weights it sits next to; it is re-rendered when `hllm export` adds ONNX files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"


def base_model_licence(section: dict[str, Any]) -> str:
    """The licence of a backbone config section (`item_llm` / `user_llm`), from the model folder's own
    card (`license:` in its README.md front matter) or the carrier package's metadata."""
    if section.get("source") == "tiny_random":
        return "none (randomly initialised weights)"
    folder = None
    package = section.get("package")
    if package:
        spec = importlib.util.find_spec(package.replace("-", "_"))
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / (section.get("path") or "")
    elif section.get("path"):
        folder = Path(section["path"]).expanduser()
    card = folder / CARD if folder is not None else None
    if card is not None and card.is_file():
        text = card.read_text(errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and front.get("license"):
                return f"{front['license']} (from the model's card)"
    if package:
        try:
            meta = importlib.metadata.metadata(package)
            fields = meta.json  # lower-case keys; a header the package lacks is absent
            licence = fields.get("license_expression") or fields.get("license")
            if licence:
                return f"{licence} (PyPI package {package})"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "not recorded: check the base model's own card before use"


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for split in ("valid", "test"):
        values = metrics.get(split) or {}
        if values:
            cells = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(values.items()))
            rows.append(f"| {split} | {cells} |")
    return rows


def render_model_card(manifest: dict[str, Any], config: dict[str, Any], licences: dict[str, str] | None = None) -> str:
    """Markdown for `README.md`. `manifest`: the bundle's manifest; `config`: its config.yaml as a dict
    (the training config); `licences`: backbone name -> licence (default: looked up from `config`)."""
    licences = licences or {name: base_model_licence(config.get(name, {})) for name in ("item_llm", "user_llm")}
    data, train, loss = config.get("data", {}), config.get("train", {}), config.get("loss", {})
    metrics = manifest.get("metrics") or {}
    version = manifest["version"]
    bases = manifest.get("base_models") or {}
    sizes = manifest.get("data_sizes") or {}
    stage = metrics.get("stage", train.get("stage"))
    lines = [
        f"# HLLM bundle {version}",
        "",
        "Frozen Item LLM + User LLM (HLLM, arXiv 2409.12740) producing item and user-interest embeddings as",
        "features for a ranking model. Written by hllm-features at freeze time from `manifest.json`.",
        "",
        "## Intended use and limits",
        "",
        "- Use: item embeddings for candidate retrieval and ranking features; user-interest embeddings from a",
        "  user's recent items; the user·item score as a ranking feature.",
        f"- Scores are comparable only within this version ({version}); every stored embedding carries it.",
        f"- Items: text only (keys {', '.join(manifest.get('item_text', {}).get('text_keys', []))}); an item with none of",
        "  them is rejected, never embedded from nothing. Users: at least one known item.",
        "- Quality was measured offline on the data below; it says nothing about other domains or",
        "  languages until measured there. Not for decisions about people beyond recommendation.",
        "",
        "## Base models",
        "",
        "| role | model | licence |",
        "|---|---|---|",
    ]
    for role, key in (("Item LLM", "item"), ("User LLM", "user")):
        lines.append(f"| {role} | {bases.get(key, bases.get(key + '_llm', 'not recorded'))} | {licences.get(key + '_llm', 'not recorded')} |")
    lines += [
        "",
        "## Data",
        "",
        f"- Source: `{data.get('source', 'not recorded')}`" + (f" (items `{data['items_path']}`, interactions `{data['interactions_path']}`)"
                                                             if data.get("items_path") else ""),
        f"- Fingerprint: `{manifest.get('data_fingerprint')}`",
    ]
    if sizes:
        lines.append("- Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    lines += [
        f"- Split: `{data.get('split', 'leave_one_out')}` (leave-one-out: last item = test, second last = validation; "
        "ranked against the whole catalogue with the user's history removed)",
        "",
        "## Training",
        "",
        f"- Objective: {loss.get('objective', 'generative')} (next-item prediction, cosine similarity, "
        f"learnable temperature; negatives: {loss.get('num_negatives', 'n/a')})",
        f"- Stage: {stage} (1: Item and User LLM end to end on short histories; 2: Item LLM frozen, User LLM on long ones)",
        f"- Epochs: {train.get('epochs', 'n/a')}, batch size {train.get('batch_size', 'n/a')}, lr {train.get('lr', 'n/a')}, "
        f"max_steps {train.get('max_steps')}; selected epoch {metrics.get('best_epoch', 'n/a')} on validation NDCG@10",
    ]
    if metrics.get("best_epoch") == -1:
        lines.append("- Warning: best_epoch -1: the run stopped (max_steps) before any validation; the weights were not selected.")
    lines += ["", "## Metrics", ""]
    rows = _metric_rows(metrics)
    lines += (["| split | metrics |", "|---|---|", *rows] if rows else ["No metrics recorded (not frozen by the trainer)."])
    lines += [
        "",
        "## Embeddings",
        "",
        f"- Dimension {manifest.get('item_dim')} (items and users), float32; similarity: cosine.",
        f"- Item text: prompt + `key: value` over the text keys, at most {manifest.get('max_item_tokens')} tokens; pooling "
        f"`{manifest.get('pooling')}`.",
        f"- User: the newest {manifest.get('max_seq_len')} items; timestamps {'used' if manifest.get('use_timestamps') else 'not used'}.",
    ]
    onnx = manifest.get("onnx")
    if onnx:
        lines.append(f"- ONNX encoders: `onnx/` (precision {onnx.get('precision', 'fp32')}).")
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from feature_gen.api import Encoder",
        f'enc = Encoder.from_bundle("path/to/{version}")        # runtime="onnx" after `hllm export`',
        'items = enc.encode_items([{"item_id": "1", "title": "..."}])',
        "users = enc.encode_users([[\"1\"]], timestamps=[[1700000000]], items=items)",
        "scores = enc.score(users.vectors[0], items.vectors)",
        "```",
        "",
        f"Or `spark-submit spark_jobs/item_embed.py --bundle path/to/{version} --items items.parquet`.",
        "",
    ]
    return "\n".join(lines)
