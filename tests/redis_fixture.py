"""A real redis-server on a free loopback port, started and stopped by the tests themselves.

Debian's redis-server (installed by `make setup`) does not start on install, and a shared machine may
run other servers: each test session gets its own process, no persistence, no config file.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp_dir) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run `make setup` (it apt-installs Debian's redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_dir), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server on port {port} did not come up (exit code {proc.poll()})")
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """`host:port` of a fresh redis-server, stopped at the end of the session."""
    proc, address = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
