"""ONNX export of a bundle's frozen encoders (`hllm export --bundle DIR`).

graphs.py         the item and user encoder graphs, traced with torch.onnx (dynamic batch and length)
precision.py      fp16 conversion and dynamic int8 quantisation of an exported fp32 graph
parity.py         fresh random inputs of several shapes; relative error of ONNX Runtime vs PyTorch
bundle_export.py  export -> convert -> parity check -> write into the bundle and its manifest

The runtime that reads the graphs lives in the core (feature_gen/inference/onnx_runtime.py), which imports
nothing from here.
"""

from export.bundle_export import ExportReport, ParityError, export_bundle

__all__ = ["ExportReport", "ParityError", "export_bundle"]
