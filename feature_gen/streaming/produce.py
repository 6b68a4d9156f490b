"""`hllm produce-events`: replay an event log (Parquet or CSV) into Kafka, for demos, replays and benchmarks.

User logs need columns user_id, item_id, timestamp (event_type optional, default --event-type); item
logs need item_id plus the text fields (timestamp optional, default now). Rows are sent in file order,
keyed by user_id (item_id), optionally paced to `rate` events per second.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from feature_gen.data.contract import DataError
from feature_gen.streaming.events import user_event_json

USER_LOG_COLUMNS = ("user_id", "item_id", "timestamp")


class EventLogError(DataError):
    """An event log that cannot be replayed; the message names the file and the column."""


def read_event_log(path: str | Path, kind: str = "user") -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise EventLogError(f"{path}: event log not found")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        raise EventLogError(f"{path}: expected a .parquet, .csv or .tsv file")
    needed = USER_LOG_COLUMNS if kind == "user" else ("item_id",)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise EventLogError(f"{path}: {kind} event log lacks column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")
    return frame


def _plain(value: Any) -> Any:
    """numpy / pandas values as JSON values (NaN -> null, arrays -> lists)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def user_messages(frame: pd.DataFrame, event_type: str = "click") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per row of a user-event log, in file order."""
    types = frame["event_type"].astype(str) if "event_type" in frame.columns else [event_type] * len(frame)
    for u, i, t, e in zip(frame["user_id"], frame["item_id"], frame["timestamp"], types):
        yield str(u).encode(), user_event_json(u, i, int(t), e)


def item_messages(frame: pd.DataFrame) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per row of an item log; every column is sent (the consumer picks the text keys)."""
    now = int(time.time())
    for row in frame.to_dict("records"):
        event = {k: _plain(v) for k, v in row.items()}
        event["item_id"] = str(event["item_id"])
        if event.get("timestamp") is None:
            event["timestamp"] = now
        yield event["item_id"].encode(), json.dumps(event, separators=(",", ":")).encode()


@dataclass
class ProduceReport:
    sent: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


def send_paced(producer, topic: str, messages: Iterable[tuple[bytes, bytes]], rate: float | None = None,
               limit: int | None = None) -> ProduceReport:
    """Send (key, value) messages, at most `rate` per second when given; flushes before returning."""
    started = time.monotonic()
    sent = 0
    for key, value in messages:
        if limit is not None and sent >= limit:
            break
        if rate:
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.send(topic, key=key, value=value)
        sent += 1
    producer.flush()
    return ProduceReport(sent, time.monotonic() - started)


def run_produce_events(cfg, path: str, kind: str = "user", rate: float | None = None, limit: int | None = None,
                       event_type: str = "click", topic: str | None = None) -> ProduceReport:
    """`hllm produce-events`: replay `path` into the configured user (or item) topic."""
    from feature_gen.streaming.clients import make_producer

    frame = read_event_log(path, kind)
    messages = user_messages(frame, event_type) if kind == "user" else item_messages(frame)
    topic = topic or (cfg.stream.user_events_topic if kind == "user" else cfg.stream.item_events_topic)
    producer = make_producer(cfg.stream)
    try:
        return send_paced(producer, topic, messages, rate, limit)
    finally:
        producer.close()
