"""Print BENCHMARKS.md's tables from the committed figures in benchmarks/results/*.json, each through its
benchmark module's `markdown()`, so a table in BENCHMARKS.md is never typed by hand.

    .venv/bin/python -m benchmarks.sections            # every results file
    .venv/bin/python -m benchmarks.sections read_bench # one
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# results files whose printer is not the module of the same name
PRINTERS = {"materialize": "benchmarks.materialize_bench", "discriminative_latency": "benchmarks.discriminative_bench",
            "discriminative_quality": "benchmarks.discriminative_bench"}


def section(name: str) -> str:
    """The markdown table of benchmarks/results/<name>.json, printed by the benchmark that wrote it."""
    path = RESULTS_DIR / f"{name}.json"
    doc = json.loads(path.read_text())
    if name.startswith("quality-"):  # one file per suite and data set, all printed by render_quality
        from benchmarks.render_quality import table

        return table(doc)
    module = importlib.import_module(PRINTERS.get(name, f"benchmarks.{name}"))
    return module.markdown(doc)


def main(argv: list[str]) -> int:
    known = sorted(p.stem for p in RESULTS_DIR.glob("*.json"))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sections",
                                     description="Print BENCHMARKS.md's tables from benchmarks/results/*.json.")
    # checked by hand: argparse rejects an empty list against `choices` when nargs="*"
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="results files to print, without .json (default: all): " + ", ".join(known))
    names = parser.parse_args(argv).names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        missing = ", ".join(f"benchmarks/results/{n}.json" for n in unknown)
        parser.error(f"no {missing} (known: {', '.join(known)})")
    for name in names:
        print(f"<!-- printed by `python -m benchmarks.sections {name}` from benchmarks/results/{name}.json -->")
        print(section(name))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
