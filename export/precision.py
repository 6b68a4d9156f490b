"""Lower-precision variants of an exported fp32 graph.

fp16: weights and activations in half precision, inputs and outputs kept float32 (callers do not
change), and the RMS-norm arithmetic (Pow, ReduceMean, Sqrt, Reciprocal) kept in fp32: in half it
loses about 1e-2 relative error on its own, kept in fp32 the graph measures about 1e-3.
int8: dynamic quantisation of the MatMul weights (activations quantised per call, one scale per
tensor); embeddings, norms and attention softmax stay fp32. On real LLM hidden states a few outlier
channels set that scale, so the error is ~0.1 relative (per-channel weight scales measured 0.099 vs
0.113 per tensor on the SmolLM2 slice, too small a gain to change the default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

NORM_OPS_IN_FP32 = ["Pow", "ReduceMean", "Sqrt", "Reciprocal"]


def to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(
        onnx.load(str(src)), keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + NORM_OPS_IN_FP32
    )
    graph = OnnxModel(model)
    graph.topological_sort()  # the converter appends its Cast nodes at the end; the ONNX spec wants order
    onnx.save(graph.model, str(dst))


def to_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantiser suggests a pre-processing step on every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        quiet.setLevel(level)


def convert(src: Path, dst: Path, precision: str) -> None:
    if precision == "fp16":
        to_fp16(src, dst)
    elif precision == "int8":
        to_int8(src, dst)
    else:
        raise ValueError(f"precision: expected 'fp16' or 'int8' for a conversion; got {precision!r}")
