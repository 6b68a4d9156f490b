"""ONNX Runtime backend of the bundle's encoders: the inference path of serving (refresh, ranker).

`load_onnx_encoders(bundle_dir)` verifies the bundle's checksums, opens one ONNX Runtime session per
encoder (cached per process, so the refresh consumer, a Spark worker or a ranker opens each file once)
and returns drop-in replacements for the eager modules: `OnnxItemEncoder` is called like `ItemLLM`
(`(input_ids, attention_mask) -> [B, D]`), `OnnxUserEncoder` like `UserLLM`
(`(item_embeddings, attention_mask, timestamps) -> .predictions / .user_embedding`), so
feature_gen/inference/encoders.py runs either backend through the same code. Outputs are float32 numpy arrays.

Inputs are checked before they reach ONNX Runtime: a wrong dtype, rank or hidden size raises
`OnnxInputError` naming the expected shape, not an ONNX Runtime stack trace.

The graphs are written by `hllm export` (export/); this module only reads them and the manifest's
`onnx` section, and imports nothing from export/.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from feature_gen.model.bundle import BundleError, read_manifest, verify_bundle

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ITEM_FILE = f"{ONNX_DIR}/item_encoder.onnx"
USER_FILE = f"{ONNX_DIR}/user_encoder.onnx"
# The graphs' input and output names: the contract between export/ and this runtime.
ITEM_INPUTS = ("input_ids", "attention_mask")
ITEM_OUTPUTS = ("item_embedding",)
USER_INPUTS = ("item_embeddings", "attention_mask", "timestamps")  # timestamps only when the model uses them
USER_OUTPUTS = ("user_embedding", "predictions")

Device = Literal["auto", "cpu", "cuda"]


class OnnxInputError(ValueError):
    """An input of the wrong dtype, rank or size, described with the shape the encoder expects."""


# ---------------------------------------------------------------------------------------------------
# Providers and sessions


def _cuda_present() -> bool:
    """True when a CUDA device can really be used: torch sees one, or the NVIDIA driver library loads.
    Asking ONNX Runtime for CUDA without one makes it log an error before it falls back to the CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except Exception:  # a torch without CUDA support, or none at all
        pass
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(device: Device = "auto") -> list[str]:
    """ONNX Runtime execution providers for `device`: CUDA first only where it can load."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda'; got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_present()
    if device == "cuda" and not cuda:
        raise RuntimeError(
            "device 'cuda': no usable CUDA device (the onnxruntime wheel offers "
            f"{ort.get_available_providers()}, and no GPU is visible); use device 'auto' or 'cpu'"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def default_threads() -> int:
    """Intra-op threads: the cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def open_session(model_path: Path, providers: list[str], threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # the graphs are one chain of layers: nothing to run side by side
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: optimizer notes are not worth a line per session
    # Idle worker threads sleep instead of spinning: these sessions share the cores with PyTorch, Spark
    # or Kafka work in the same process or machine, and spinning threads starve them (in the benchmark's
    # interleaved calls on 2 busy cores, eager PyTorch ran markedly slower with spinning on).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN libraries from pip wheels (torch's), where the system has none
            ort.preload_dlls()
        except Exception:  # best effort: the provider check below tells what really loaded
            pass
    session = ort.InferenceSession(str(model_path), opts, providers=providers)
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in session.get_providers():
        log.warning("%s: the CUDA provider did not load; running on the CPU", model_path)
    return session


# ---------------------------------------------------------------------------------------------------
# Input checks: everything ONNX Runtime would reject with a stack trace, said in one line


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _integers(name: str, x: Any, expected: str) -> np.ndarray:
    arr = _as_array(x)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    raise OnnxInputError(f"{name}: expected integers {expected}; got dtype {arr.dtype} shape {arr.shape}")


def _check_mask(mask: np.ndarray, expected: str) -> None:
    if not np.isin(mask, (0, 1)).all():
        raise OnnxInputError(f"attention_mask: expected 0/1 values {expected}")
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise OnnxInputError(f"attention_mask: row {int(empty[0])} has no real position; every row needs one")


# ---------------------------------------------------------------------------------------------------
# The encoders


class OnnxItemEncoder:
    """Token ids + attention mask [B, T] (either padding side) -> item embeddings [B, D] float32.
    The [ITEM] token is appended inside the graph, as ItemLLM does."""

    def __init__(self, session, hidden_size: int, vocab_size: int):
        self.session = session
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size

    def __call__(self, input_ids: Any, attention_mask: Any) -> np.ndarray:
        expected = "[batch, tokens] (int64 token ids and a 0/1 mask of the same shape)"
        ids = _integers("input_ids", input_ids, expected)
        mask = _integers("attention_mask", attention_mask, expected)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise OnnxInputError(f"item encoder expects input_ids and attention_mask {expected}; got {ids.shape} and {mask.shape}")
        if ids.shape[1] == 0:
            raise OnnxInputError(f"input_ids: expected {expected} with at least one token; got {ids.shape}")
        _check_mask(mask, expected)
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise OnnxInputError(f"input_ids: token ids must lie in [0, {self.vocab_size}); got {ids.min()}..{ids.max()}")
        (out,) = self.session.run(list(ITEM_OUTPUTS), {"input_ids": ids, "attention_mask": mask})
        return out


@dataclass
class OnnxUserOutput:
    predictions: np.ndarray  # [B, L, D_item] prediction of the next item's embedding at each position
    user_embedding: np.ndarray  # [B, D_item] the prediction at each row's last real position


class OnnxUserEncoder:
    """Item-embedding sequences [B, L, D] + mask [B, L] (+ unix-second timestamps [B, L] when the model
    was trained with them; the time-gap bucketing runs inside the graph) -> user embeddings."""

    def __init__(self, session, item_dim: int, uses_timestamps: bool):
        self.session = session
        self.item_dim = item_dim
        self.uses_timestamps = uses_timestamps

    def __call__(self, item_embeddings: Any, attention_mask: Any, timestamps: Any = None) -> OnnxUserOutput:
        expected = f"item_embeddings [batch, seq, {self.item_dim}] float32 and attention_mask [batch, seq]"
        embs = _as_array(item_embeddings)
        if not np.issubdtype(embs.dtype, np.floating):
            raise OnnxInputError(f"user encoder expects {expected}; got item_embeddings dtype {embs.dtype}")
        if embs.ndim != 3 or embs.shape[-1] != self.item_dim or embs.shape[1] == 0:
            raise OnnxInputError(f"user encoder expects {expected}; got item_embeddings shape {embs.shape}")
        mask = _integers("attention_mask", attention_mask, expected)
        if mask.shape != embs.shape[:2]:
            raise OnnxInputError(f"user encoder expects {expected}; got attention_mask shape {mask.shape} for item_embeddings {embs.shape}")
        _check_mask(mask, expected)
        feeds = {"item_embeddings": embs.astype(np.float32, copy=False), "attention_mask": mask}
        if self.uses_timestamps:  # like UserLLM, a model without time embeddings ignores timestamps
            if timestamps is None:
                raise OnnxInputError(f"this user encoder uses timestamps: pass timestamps [batch, seq] int64 unix seconds with {expected}")
            ts = _integers("timestamps", timestamps, "[batch, seq] unix seconds")
            if ts.shape != mask.shape:
                raise OnnxInputError(f"timestamps: expected shape {mask.shape} (= attention_mask); got {ts.shape}")
            feeds["timestamps"] = ts
        user, predictions = self.session.run(list(USER_OUTPUTS), feeds)
        return OnnxUserOutput(predictions=predictions, user_embedding=user)


@dataclass
class OnnxEncoders:
    item: OnnxItemEncoder
    user: OnnxUserEncoder
    version: str  # the bundle version every embedding they produce must carry
    precision: str  # fp32 | fp16 | int8
    providers: list[str]  # what the sessions really run on


_cache: dict[tuple, OnnxEncoders] = {}
_cache_lock = threading.Lock()


def onnx_section(path: str | Path) -> dict[str, Any]:
    """The manifest's `onnx` section, or a BundleError saying how to create it."""
    manifest = read_manifest(path)
    section = manifest.get("onnx")
    if not section:
        raise BundleError(f"{path}: no ONNX encoders in this bundle; run `hllm export --bundle {path}` first")
    return section


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


def load_onnx_encoders(path: str | Path, device: Device = "auto", threads: int | None = None) -> OnnxEncoders:
    """Verify the bundle (every checksum, the ONNX files included) and open its ONNX encoders.
    Sessions are cached per process by bundle folder, file checksums, device and threads."""
    path = Path(path).resolve()
    threads = threads or default_threads()
    manifest = read_manifest(path)
    files = manifest.get("files", {})
    # A cached session was built from verified bytes; a file touched since (size or mtime) is a miss,
    # so a corrupted or replaced graph is re-verified, and refused, instead of served from memory.
    stats = tuple((s.st_size, s.st_mtime_ns) for s in (_stat(path / ITEM_FILE), _stat(path / USER_FILE)) if s)
    key = (str(path), files.get(ITEM_FILE), files.get(USER_FILE), stats, device, threads)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        manifest = verify_bundle(path)
        section = onnx_section(path)
        for name in (ITEM_FILE, USER_FILE):
            if name not in manifest["files"]:
                raise BundleError(f"{path}: {name} is not listed in the manifest; re-run `hllm export --bundle {path}`")
        providers = choose_providers(device)
        item_session = open_session(path / ITEM_FILE, providers, threads)
        user_session = open_session(path / USER_FILE, providers, threads)
        item_meta, user_meta = section["item_encoder"], section["user_encoder"]
        encoders = OnnxEncoders(
            item=OnnxItemEncoder(item_session, int(item_meta["hidden_size"]), int(item_meta["vocab_size"])),
            user=OnnxUserEncoder(user_session, int(user_meta["item_dim"]), bool(user_meta["uses_timestamps"])),
            version=manifest["version"],
            precision=section["precision"],
            providers=item_session.get_providers(),
        )
        _cache[key] = encoders
        return encoders
