"""One logging setup and one progress reporter for every entry point (CLI, Spark driver, consumers, demo).

`setup_logging(level)`: the project's own loggers at `level` (INFO by default, `-q` = WARNING), one
line format with time and logger; third-party loggers (Feast, Kafka, Spark's py4j, DeepSpeed,
transformers, TensorFlow, ...) at WARNING unless `level` is DEBUG, so their INFO chatter ("Registry
cache expired", connection lines, banners) does not bury ours; Python warnings go through logging
(DeprecationWarnings from libraries are dropped outside DEBUG).

`Progress(total, desc)`: a bar with total and ETA on a terminal (tqdm); elsewhere (a log file, CI) one
log line every `HLLM_PROGRESS_SECONDS` (30 s) instead of a ticker rewriting itself many times a second.
This module imports nothing from the project: every room may use it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Any, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of libraries that speak at INFO about their own plumbing.
THIRD_PARTY = ("feast", "kafka", "py4j", "pyspark", "urllib3", "httpx", "filelock", "transformers", "DeepSpeed",
               "deepspeed", "torch", "tensorflow", "absl", "matplotlib", "asyncio", "onnxruntime", "redis",
               "numexpr", "h5py", "fsspec", "botocore", "snowflake", "grpc")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is when a record is written, not the object it was when
    logging was set up: a redirect (a test's capture, a notebook) that is later closed must not turn
    every later record into "--- Logging error --- ValueError: I/O operation on closed file"."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it; the property ignores them
        pass


def setup_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (a later call replaces the earlier setup).
    `stream`: where records go (default: the process's stderr at the time of each record)."""
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"--log-level: expected one of {', '.join(LEVELS)}; got {level!r}")
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    logging.basicConfig(level=numeric, format=FORMAT, handlers=[handler], force=True)
    quiet_third_party = numeric > logging.DEBUG
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING) if quiet_third_party else numeric)
    # TensorFlow's C++ banners are not Python logging: its own variable (read when TF is imported).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if quiet_third_party else "0")
    logging.captureWarnings(True)
    if quiet_third_party:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(feast|transformers|torch|deepspeed|pyspark)")


def progress_interval() -> float:
    """Seconds between progress lines when output is not a terminal (HLLM_PROGRESS_SECONDS, default 30)."""
    try:
        return max(0.0, float(os.environ.get("HLLM_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of `total` units (steps, items, partitions) with rate and ETA.

    On a terminal: a tqdm bar. Otherwise one `logger` line at most every `interval` seconds (and one
    at the end): `desc: 120/400 steps (30%), 2.1 steps/s, elapsed 0:57, eta 2:13`. `initial` counts
    units done before this process started (a resumed run), which do not enter the rate."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
                 logger: logging.Logger | None = None, interval: float | None = None, stream: TextIO | None = None,
                 tty: bool | None = None, disable: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self._start_done = initial
        self.log = logger or logging.getLogger("hllm.progress")
        self.interval = progress_interval() if interval is None else interval
        self.stream = stream or sys.stderr
        self.started = self._last = time.monotonic()
        self.disable = disable
        tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None
        if tty and not disable:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.stream, dynamic_ncols=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}"
        if self.total and rate > 0 and self.done < self.total:
            text += f", eta {_duration((self.total - self.done) / rate)}"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.disable:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info(self.line())

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self.disable:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self.log.info(self.line())
        self.disable = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
