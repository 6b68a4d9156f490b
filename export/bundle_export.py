"""`hllm export`: a bundle's encoders -> onnx/ inside the bundle, checked, recorded in the manifest.

Steps: load (and so verify) the bundle; trace both encoders to fp32 ONNX in a scratch folder inside
the bundle; convert to fp16 / int8 if asked; run the parity check on fresh random inputs with ONNX
Runtime; only if every case is within the precision's bound, swap the scratch folder in as onnx/ and
record checksums, opset, precision and the measured errors in the manifest (record_files). A failed
check raises ParityError and leaves the bundle as it was (no partial onnx/).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from export.graphs import export_item_encoder, export_user_encoder
from export.parity import ITEM_CASES, USER_CASES, ParityCase, item_parity, user_parity
from export.precision import convert
from feature_gen.inference.encoders import load_encoders
from feature_gen.model.bundle import load_bundle, record_files
from feature_gen.config import ExportConfig
from feature_gen.inference.onnx_runtime import (
    ITEM_FILE, ITEM_INPUTS, ONNX_DIR, USER_FILE, USER_INPUTS, OnnxItemEncoder, OnnxUserEncoder, open_session,
)

ITEM_NAME = Path(ITEM_FILE).name
USER_NAME = Path(USER_FILE).name


class ParityError(RuntimeError):
    """An exported graph that does not compute the PyTorch function within its precision's bound."""


@dataclass
class ExportReport:
    bundle: Path
    version: str
    precision: str
    opset: int
    bound: float
    rel_error: dict[str, float]  # worst case per encoder
    cases: list[ParityCase] = field(default_factory=list)
    sizes_mb: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _worst(cases: list[ParityCase], encoder: str) -> ParityCase:
    return max((c for c in cases if c.encoder == encoder), key=lambda c: c.rel_error)


def _check_parity(scratch: Path, bundle, cfg: ExportConfig, precision: str) -> list[ParityCase]:
    """Open the scratch graphs on the CPU provider (parity is about the graph, not the device)."""
    model, manifest = bundle.model, bundle.manifest
    item = OnnxItemEncoder(open_session(scratch / ITEM_NAME, ["CPUExecutionProvider"], torch.get_num_threads()),
                           model.item_llm.hidden_size, model.item_llm.backbone.get_input_embeddings().num_embeddings)
    user = OnnxUserEncoder(open_session(scratch / USER_NAME, ["CPUExecutionProvider"], torch.get_num_threads()),
                           model.user_llm.item_dim, model.user_llm.time_embedding is not None)
    eager = load_encoders(bundle, "torch")  # the reference: the encoders every producer runs in "torch"
    cases = item_parity(eager.item, item, manifest["max_item_tokens"], cfg.parity_seed)
    cases += user_parity(eager.user, user, manifest["max_seq_len"], cfg.parity_seed)
    bound = cfg.max_rel_error(precision)
    for case in cases:
        if not case.rel_error <= bound:  # also catches NaN
            raise ParityError(
                f"{bundle.path}: {precision} {case.describe()}: relative error {case.rel_error:.3g} exceeds the "
                f"bound {bound:g} (export.max_rel_error_{precision}); nothing was written"
            )
    return cases


def _onnx_section(bundle, cfg: ExportConfig, precision: str, cases: list[ParityCase]) -> dict:
    import onnxruntime

    model = bundle.model
    item_worst, user_worst = _worst(cases, "item_encoder"), _worst(cases, "user_encoder")
    uses_ts = model.user_llm.time_embedding is not None
    return {
        "opset": cfg.opset,
        "precision": precision,
        "exporter": f"torch.onnx TorchScript exporter (torch {torch.__version__}), dynamic batch/sequence axes",
        "onnxruntime": onnxruntime.__version__,
        "parity": {
            "bound": cfg.max_rel_error(precision),
            "metric": "||onnx - torch|| / ||torch||, worst case over random padded batches",
            "seed": cfg.parity_seed,
            "item_cases": [list(c) for c in ITEM_CASES],
            "user_cases": [list(c) for c in USER_CASES],
        },
        "item_encoder": {
            "file": ITEM_FILE,
            "inputs": {"input_ids": "int64 [batch, tokens]", "attention_mask": "int64 [batch, tokens]"},
            "outputs": {"item_embedding": f"float32 [batch, {model.item_llm.hidden_size}]"},
            "hidden_size": model.item_llm.hidden_size,
            "vocab_size": model.item_llm.backbone.get_input_embeddings().num_embeddings,
            "pooling": model.item_llm.pooling,
            "parity_rel_error": item_worst.rel_error,
        },
        "user_encoder": {
            "file": USER_FILE,
            "inputs": {name: ("float32 [batch, seq, %d]" % model.user_llm.item_dim if name == "item_embeddings"
                              else "int64 [batch, seq]") for name in (USER_INPUTS if uses_ts else USER_INPUTS[:2])},
            "outputs": {"user_embedding": f"float32 [batch, {model.user_llm.item_dim}]",
                        "predictions": f"float32 [batch, seq, {model.user_llm.item_dim}]"},
            "item_dim": model.user_llm.item_dim,
            "uses_timestamps": uses_ts,
            "parity_rel_error": user_worst.rel_error,
        },
    }


def export_bundle(path: str | Path, cfg: ExportConfig | None = None, precision: str | None = None) -> ExportReport:
    """Export the bundle at `path` to `<path>/onnx/` (replacing an earlier export only on success)."""
    started = time.perf_counter()
    cfg = cfg or ExportConfig()
    precision = precision or cfg.precision
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision: expected 'fp32', 'fp16' or 'int8'; got {precision!r}")
    bundle = load_bundle(path)  # verifies every checksum first
    path = bundle.path
    scratch = Path(tempfile.mkdtemp(prefix=".onnx-partial-", dir=path))
    old = path / ".onnx-replaced"
    try:
        fp32 = scratch / "fp32" if precision != "fp32" else scratch
        fp32.mkdir(exist_ok=True)
        export_item_encoder(bundle.model.item_llm, fp32 / ITEM_NAME, cfg.opset)
        export_user_encoder(bundle.model.user_llm, fp32 / USER_NAME, cfg.opset)
        if precision != "fp32":
            for name in (ITEM_NAME, USER_NAME):
                convert(fp32 / name, scratch / name, precision)
            shutil.rmtree(fp32)
        for name in (ITEM_NAME, USER_NAME):
            onnx.checker.check_model(str(scratch / name))
        cases = _check_parity(scratch, bundle, cfg, precision)
        target = path / ONNX_DIR
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by an interrupted earlier swap
            target.rename(old)
        scratch.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        manifest = record_files(path, {"onnx": _onnx_section(bundle, cfg, precision, cases)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if old.exists() and not (path / ONNX_DIR).exists():
            old.rename(path / ONNX_DIR)  # the swap failed half way: put the previous export back
    return ExportReport(
        bundle=path, version=manifest["version"], precision=precision, opset=cfg.opset,
        bound=cfg.max_rel_error(precision),
        rel_error={"item_encoder": _worst(cases, "item_encoder").rel_error,
                   "user_encoder": _worst(cases, "user_encoder").rel_error},
        cases=cases,
        sizes_mb={name: round((path / ONNX_DIR / name).stat().st_size / 2**20, 2) for name in (ITEM_NAME, USER_NAME)},
        seconds=time.perf_counter() - started,
    )
