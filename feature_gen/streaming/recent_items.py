"""A user's recent-item sequence and the one rule that merges new events into it.

The sequence is kept oldest first, ordered by event timestamp (ties in arrival order), holding at most
`capacity` entries. Merging an event:

1. **duplicate**: an entry with the same (item_id, timestamp) is already there -> nothing changes.
   This is what makes a replay (at-least-once delivery) harmless.
2. **too late**: the sequence is full and the event is not newer than its oldest entry -> dropped
   (counted). It would fall outside the window the User LLM reads anyway, and taking it would evict an
   entry a replay could not bring back.
3. otherwise it is **inserted where its timestamp belongs** (after entries with the same timestamp),
   and the oldest entries beyond `capacity` are evicted.

An evicted entry is never newer than the oldest one kept, and a full sequence stays full, so a replayed
event is either a duplicate (1) or too late (2): merging any events a second time changes nothing, and
the sequence never moves backwards.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class RecentSequence:
    item_ids: list[str] = field(default_factory=list)  # oldest first
    timestamps: list[int] = field(default_factory=list)  # aligned with item_ids, non-decreasing

    @property
    def last_event_ts(self) -> int:
        return self.timestamps[-1] if self.timestamps else -1

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class MergeCounts:
    added: int = 0
    duplicate: int = 0
    too_late: int = 0


def merge_event(seq: RecentSequence, item_id: str, timestamp: int, capacity: int) -> str:
    """Merge one event into `seq` in place; returns "added", "duplicate" or "too_late"."""
    lo = bisect.bisect_left(seq.timestamps, timestamp)
    hi = bisect.bisect_right(seq.timestamps, timestamp)
    if item_id in seq.item_ids[lo:hi]:
        return "duplicate"
    if len(seq) >= capacity and timestamp <= seq.timestamps[0]:
        return "too_late"
    seq.item_ids.insert(hi, item_id)
    seq.timestamps.insert(hi, timestamp)
    overflow = len(seq) - capacity
    if overflow > 0:
        del seq.item_ids[:overflow]
        del seq.timestamps[:overflow]
    return "added"


def merge_events(seq: RecentSequence, events: list[tuple[str, int]], capacity: int) -> MergeCounts:
    """Merge (item_id, timestamp) pairs in arrival order; returns what happened to them."""
    counts = MergeCounts()
    for item_id, timestamp in events:
        outcome = merge_event(seq, item_id, timestamp, capacity)
        setattr(counts, outcome, getattr(counts, outcome) + 1)
    return counts
