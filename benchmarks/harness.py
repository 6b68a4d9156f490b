"""What the benchmarks share: waiting on a running system, and writing a result where a program reads it.

Every benchmark writes its JSON through `write_result` (indented, a trailing newline, non-JSON values as
strings), so `benchmarks/sections.py` and `render_quality.py` read every file the same way.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable


# How every printed table's "Command:" starts: the python command a reader can run as is (after it, how it
# was launched, e.g. `hllm quality`). render_quality.py refuses another at collection;
# tests/test_benchmark_sections.py checks every printed section against it.
RUNNABLE_COMMAND = re.compile(r"(\.venv/bin/)?python (-m benchmarks\.|benchmarks/|-m trainer)")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, *, who: str = "benchmark",
               poll_s: float = 0.05) -> None:
    """Poll `predicate` every `poll_s` seconds until it holds; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{who}: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def write_result(result: dict, path: str | Path | None, indent: int = 2) -> Path | None:
    """`result` as JSON indented by `indent` spaces at `path` (folders made); nothing when `path` is None."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent, default=str) + "\n")
    return path


def merged_command(previous: str | None, new: str) -> str:
    """The command a results file records when `new` runs are merged into one that `previous` produced:
    '<previous>; then <new>', so earlier rows keep their record (`new` alone when there is nothing before it
    or it already holds `previous`)."""
    if not previous or previous == new or previous in new:
        return new
    return f"{previous}; then {new}"


def seed_online_state(state, encoders, num_items: int, users: int, history: int) -> float:
    """What a consumer benchmark starts from: `num_items` synthetic items embedded by `encoders` and
    written online, and users u0..u{users-1} each with a full history of `history` random items (what
    user_embed.py leaves behind, so every event costs a User LLM pass over a whole window, not over the
    one or two items seen so far). Returns the seconds the item embeddings took (encode + write)."""
    import numpy as np

    from feature_gen.model.item_text import build_item_text
    from feature_gen.streaming.recent_items import RecentSequence

    texts = [build_item_text({"title": f"movie number {i}", "tags": ["drama", f"tag{i % 7}"],
                              "description": f"the story of item {i}"}, encoders.text_cfg) for i in range(num_items)]
    t0 = time.perf_counter()
    state.write_item_embeddings([str(i) for i in range(num_items)], encoders.embed_texts(texts))
    item_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(2)
    for start in range(0, users, 500):
        state.write_sequences({
            f"u{u}": RecentSequence(rng.integers(0, num_items, history).astype(str).tolist(),
                                    list(range(1_600_000_000, 1_600_000_000 + history)))
            for u in range(start, min(users, start + 500))
        })
    return item_seconds
