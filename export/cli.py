"""The `hllm export` handler: run the export, print what was written, one line per problem."""

from __future__ import annotations

import sys

from feature_gen.model.bundle import BundleError
from feature_gen.config import HLLMConfig


def run_export(cfg: HLLMConfig, bundle: str) -> int:
    from export.bundle_export import ParityError, export_bundle

    try:
        report = export_bundle(bundle, cfg.export)
    except (BundleError, ParityError) as exc:
        print(f"hllm export: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"bundle      {report.bundle}  ({report.version})")
    print(f"precision   {report.precision}  opset {report.opset}")
    for name, err in report.rel_error.items():
        size = report.sizes_mb[f"{name}.onnx"]
        print(f"{name:<12}onnx/{name}.onnx  {size} MiB  worst relative error {err:.2e} (bound {report.bound:g})")
    print(f"parity      {len(report.cases)} random padded batches; checksums and errors recorded in manifest.json")
    print(f"took        {report.seconds:.1f} s")
    return 0
