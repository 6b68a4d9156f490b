"""`make bench`: every benchmark, printed as the Markdown rows BENCHMARKS.md holds.

Each benchmark module exposes `run() -> dict` and `markdown(result) -> str`; add new ones to BENCHMARKS.
Raw figures go to outputs/bench/; those of the modules in RESULTS also to benchmarks/results/<name>.json,
the committed figures BENCHMARKS.md's tables are printed from (`python -m benchmarks.sections`).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = ["benchmarks.eval_bench", "benchmarks.harness_sanity", "benchmarks.spark_bench", "benchmarks.onnx_bench",
              "benchmarks.stream_bench", "benchmarks.read_bench", "benchmarks.encoder_flops", "benchmarks.scaling_bench", "benchmarks.data_facts"]
RESULTS = {"benchmarks.stream_bench", "benchmarks.read_bench", "benchmarks.encoder_flops", "benchmarks.scaling_bench"}
RESULTS_DIR = Path("benchmarks/results")


def main() -> int:
    out = Path("outputs/bench")
    out.mkdir(parents=True, exist_ok=True)
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        print(f"\n== {name}  (reproduce: {module.COMMAND})", flush=True)
        result = module.run()
        print(module.markdown(result))
        (out / f"{name.split('.')[-1]}.json").write_text(json.dumps(result, indent=2, default=str))
        if name in RESULTS:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            (RESULTS_DIR / f"{name.split('.')[-1]}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nraw figures -> {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
