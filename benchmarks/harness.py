"""What the benchmarks share: waiting on a running system, and writing a result where a program reads it.

Every benchmark writes its JSON through `write_result` (indented, a trailing newline, non-JSON values as
strings), so `benchmarks/sections.py` and `render_quality.py` read every file the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, *, who: str = "benchmark",
               poll_s: float = 0.05) -> None:
    """Poll `predicate` every `poll_s` seconds until it holds; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{who}: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def write_result(result: dict, path: str | Path | None) -> Path | None:
    """`result` as indented JSON at `path` (folders made); nothing when `path` is None."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
