"""build.gradle through Debian's real Gradle 4.4.1 (--offline, no daemon left behind): the Spark job bundle
task builds the zip spark-submit ships, and it imports from the zip alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _gradle(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    gradle = shutil.which("gradle")
    assert gradle, "gradle is not on PATH: `make setup` installs Debian's gradle (apt-get install gradle)"
    cmd = [gradle, "--offline", "--no-daemon", "--console=plain", "--project-cache-dir", str(tmp_path / "gradle-cache"),
           "-g", str(tmp_path / "gradle-home"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GRADLE_OPTS": "-Xmx256m"})


def test_spark_jobs_zip_task_builds_an_importable_bundle(tmp_path):
    out = _gradle(tmp_path, "sparkJobsZip", f"-PdistDir={tmp_path / 'dist'}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    target = tmp_path / "dist" / "hllm_jobs.zip"
    names = set(zipfile.ZipFile(target).namelist())
    for required in ("feature_gen/__init__.py", "feature_gen/inference/encoders.py", "feature_gen/store/feature_store.py",
                     "feature_gen/data/sequences.py", "spark_jobs/item_embed.py", "spark_jobs/user_embed.py"):
        assert required in names, required
    assert all(n.endswith(".py") for n in names)
    assert not any(n.startswith(("tests/", "trainer/", "ranker_integration/")) or "__pycache__" in n for n in names)
    expected = {p.relative_to(REPO).as_posix() for pkg in ("feature_gen", "spark_jobs")
                for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert names == expected
    # executors import the project from the zip alone (what --py-files does): not from the checkout
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import feature_gen.config, spark_jobs.item_frames; "
             "print(feature_gen.config.__file__)")
    run = subprocess.run([sys.executable, "-c", probe, str(target)], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"},
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "hllm_jobs.zip" in run.stdout, run.stdout


def test_export_bundle_task_without_a_bundle_says_what_to_pass(tmp_path):
    out = _gradle(tmp_path, "exportBundle", "-x", "setup")
    assert out.returncode != 0
    assert "exportBundle: pass the bundle folder, e.g. -Pbundle=" in out.stdout + out.stderr
