"""Build the zip that `spark-submit --py-files` ships to the executors: this project's Python packages
(feature_gen, spark_jobs) and nothing else; third-party libraries come from the executors' Python.

    python -m spark_jobs.package [dist/hllm_jobs.zip]
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGES = ("feature_gen", "spark_jobs")
REPO = Path(__file__).resolve().parents[1]


def build_zip(target: str | Path = REPO / "dist" / "hllm_jobs.zip") -> Path:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for path in sorted((REPO / package).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(REPO).as_posix())
    tmp.replace(target)  # never leave a half-written zip where spark-submit would pick it up
    return target


if __name__ == "__main__":
    print(build_zip(*sys.argv[1:2]))
