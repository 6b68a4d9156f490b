"""`hllm produce-events`: replay an event log (Parquet or CSV) into Kafka, for demos, replays and benchmarks.

User logs need columns user_id, item_id, timestamp (event_type optional, default --event-type); item
logs need item_id plus the text fields (timestamp optional, default now). The log is read as training
and the Spark jobs read files (feature_gen/data/formats.py, then the input contract): .parquet, .csv,
.tsv or .jsonl, `data.columns` mapping, `data.timestamp_format: iso8601`, ids as strings (`007` stays
`007`), only an empty cell missing, `data.encoding` decoding CSV. A row the consumer would dead-letter (a blank id, bytes
invalid in the encoding, a timestamp that is not plausible in `stream.timestamp_unit`) is reported,
one line naming file, row and field, and skipped; the others are sent in file order, keyed by user_id
(item_id), optionally paced to `rate` events per second.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from feature_gen.config import DataConfig
from feature_gen.data.contract import REPLACEMENT_CHAR, DataError, check_timestamp, whole_number
from feature_gen.data.formats import FormatError, read_mapped
from feature_gen.streaming.events import user_event_json

USER_LOG_COLUMNS = ("user_id", "item_id", "timestamp")


class EventLogError(DataError):
    """An event log that cannot be replayed; the message names the file and the column."""


def read_event_log(path: str | Path, kind: str = "user", data: DataConfig | None = None) -> pd.DataFrame:
    """The log at `path` in the contract's columns, read by `read_mapped` as every other reader reads a
    file (`data`: columns, encoding, timestamp format; defaults when None). ISO-8601 times come back as
    Unix seconds. EventLogError names the file and the missing column(s)."""
    path = Path(path)
    if not path.exists():
        raise EventLogError(f"{path}: event log not found")
    try:
        frame = read_mapped(path, data or DataConfig())
    except FormatError as exc:
        raise EventLogError(str(exc)) from exc
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


def _id_problem(value: Any, name: str) -> str | None:
    """Why `value` cannot be the id `name` of an event, or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return f"{name} is empty"
    if REPLACEMENT_CHAR in str(value):
        return f"{name} {value!r} holds bytes that are not valid in the declared encoding"
    return None


def _id_text(value: Any) -> str:
    # an integer id read from Parquet prints as 7, never 7.0; a string id is kept exactly
    return str(value.item() if isinstance(value, np.generic) else value)


def user_messages(frame: pd.DataFrame, event_type: str = "click", timestamp_unit: str = "seconds",
                  skipped: list | None = None, source: str = "events") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per row of a user-event log, in file order. A row the consumer would refuse is
    not sent: its one-line reason (`source: row N: field ...`, 1-based data rows) goes to `skipped`."""
    types = frame["event_type"].astype(str) if "event_type" in frame.columns else [event_type] * len(frame)
    for row, (u, i, t, e) in enumerate(zip(frame["user_id"], frame["item_id"], frame["timestamp"], types), start=1):
        problem = _id_problem(u, "user_id") or _id_problem(i, "item_id")
        checked = check_timestamp(_plain(t), timestamp_unit) if problem is None else None
        if checked is not None and not checked.ok:
            problem = f"timestamp {checked.reason}"
        if problem is not None:
            if skipped is not None:
                skipped.append(f"{source}: row {row}: {problem}")
            continue
        # sent in the unit the consumer reads (stream.timestamp_unit), exactly as the log holds it
        yield _id_text(u).encode(), user_event_json(_id_text(u), _id_text(i), whole_number(_plain(t)), e)


def item_messages(frame: pd.DataFrame, timestamp_unit: str = "seconds", skipped: list | None = None,
                  source: str = "items") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) per row of an item log; every column is sent (the consumer picks the text keys).
    Rows with a blank or undecodable item_id or an implausible timestamp go to `skipped`."""
    now = int(time.time())
    for row, record in enumerate(frame.to_dict("records"), start=1):
        event = {k: _plain(v) for k, v in record.items()}
        problem = _id_problem(event.get("item_id"), "item_id")
        if problem is None and event.get("timestamp") is not None:
            checked = check_timestamp(event["timestamp"], timestamp_unit)
            problem = None if checked.ok else f"timestamp {checked.reason}"
            if checked.ok:
                event["timestamp"] = whole_number(event["timestamp"])
        if problem is not None:
            if skipped is not None:
                skipped.append(f"{source}: row {row}: {problem}")
            continue
        event["item_id"] = _id_text(event["item_id"])
        if event.get("timestamp") is None:
            event["timestamp"] = now * (1000 if timestamp_unit == "milliseconds" else 1)
        yield event["item_id"].encode(), json.dumps(event, separators=(",", ":")).encode()


@dataclass
class ProduceReport:
    sent: int
    seconds: float
    skipped: list = field(default_factory=list)  # one line per row not sent: file, row, field, why

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

    frame = read_event_log(path, kind, cfg.data)
    skipped: list[str] = []
    unit = cfg.stream.timestamp_unit
    if cfg.data.timestamp_format == "iso8601" and "timestamp" in frame.columns and unit == "milliseconds":
        # ISO text was read as Unix seconds; the topic carries the unit its consumer reads
        frame["timestamp"] = frame["timestamp"] * 1000
    messages = (user_messages(frame, event_type, unit, skipped, str(path)) if kind == "user"
                else item_messages(frame, unit, skipped, str(path)))
    topic = topic or (cfg.stream.user_events_topic if kind == "user" else cfg.stream.item_events_topic)
    producer = make_producer(cfg.stream)
    try:
        report = send_paced(producer, topic, messages, rate, limit)
    finally:
        producer.close()
    report.skipped = skipped
    return report
