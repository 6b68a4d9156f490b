"""The one rule for an event's timestamp, shared by the stream's event parser and the batch jobs.

An event time is integer Unix seconds in the plausible window

    0 <= timestamp <= now + MAX_CLOCK_SKEW_S

Why these bounds: every store of a timestamp is int64 (Parquet, Feast, numpy), so anything at or
beyond 2**63 cannot even be written; pandas datetimes end in 2262 and Spark's `timestamp_seconds`
overflows near 2**63 microseconds, so a far-future value breaks the point-in-time joins of a whole
job; and a future event would become a user's newest event forever (a replay never moves a sequence
backwards). A producer's clock may run ahead of ours, hence the skew allowance.

`timestamp_problem(value, now)` returns None for a valid value, else one line saying what is wrong;
`max_event_ts(now)` is the upper bound for code that checks whole columns (Spark).
"""

from __future__ import annotations

import time

INT64_MAX = 2**63 - 1
MIN_EVENT_TS = 0
MAX_CLOCK_SKEW_S = 24 * 3600  # a producer clock up to a day ahead is tolerated


def max_event_ts(now: float | None = None) -> int:
    """The newest plausible event time (Unix seconds) at wall-clock `now` (default: the current time)."""
    return int(time.time() if now is None else now) + MAX_CLOCK_SKEW_S


def timestamp_problem(value, now: float | None = None) -> str | None:
    """None when `value` is a valid event time; otherwise what is wrong with it, in one line."""
    # bool is an int in Python; `true` is a producer bug, not a time.
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected integer Unix seconds; got {type(value).__name__} {_short(value)}"
    if value < MIN_EVENT_TS:
        return f"{_short(value)} is negative (expected Unix seconds >= {MIN_EVENT_TS})"
    newest = max_event_ts(now)
    if value > newest:
        return (f"{_short(value)} is later than now + {MAX_CLOCK_SKEW_S} s ({newest}); expected Unix seconds "
                "(not milliseconds) no later than now")
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
