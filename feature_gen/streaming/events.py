"""The event contract of the two topics, and the check every consumed message goes through first.

User events (topic `stream.user_events_topic`, key = user_id so one user's events stay in order):

    {"user_id": "42", "item_id": "1193", "timestamp": 978300760, "event_type": "click"}

Item events (topic `stream.item_events_topic`, key = item_id): a new or changed item, with the text
fields the Item LLM reads (`item_text.text_keys`, e.g. title, tags, description) and the time of the
change:

    {"item_id": "9001", "timestamp": 1763900000, "title": "...", "tags": ["a", "b"], "description": "..."}

Ids are JSON strings or integers (stored as strings); `timestamp` is a JSON integer in
`stream.timestamp_unit` (seconds by default; event time, not produce time), read by the one timestamp
rule of feature_gen/data/contract.py: outside [1995-01-01, now + clock skew] it is a bad_field (a
millisecond value sent as seconds is refused, not stored as the year ~55,000); `event_type` is a
non-empty string (click, rating, purchase, ...). A message that breaks the contract raises
InvalidEvent with one of the REASON_* codes below; the consumer dead-letters it with that reason and
its original bytes, and goes on.
Ids are at most MAX_ID_CHARS characters of valid Unicode. No input makes the parsers raise anything
else: deep nesting, numbers of any size, lone surrogates and undecodable bytes are all InvalidEvent
(tests/test_stream_fuzz.py throws arbitrary input at them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from feature_gen.data.contract import check_timestamp

REASON_OVERSIZE = "oversize"
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_AN_OBJECT = "not_an_object"
REASON_MISSING_FIELD = "missing_field"
REASON_BAD_FIELD = "bad_field"
REASON_KEY_MISMATCH = "key_mismatch"
REASON_UNKNOWN_ITEM = "unknown_item"
REASON_NO_TEXT = "no_text"
REASON_OVERSIZE_TEXT = "oversize_text"
REASON_PROCESSING_FAILED = "processing_failed"  # valid by the contract, but processing it raised (see refresh.py)

INT64_LIMIT = 2**63
MAX_ID_CHARS = 1024  # an id is a key in every store; a megabyte "id" is a producer bug

USER_EVENT_FIELDS = ("user_id", "item_id", "timestamp", "event_type")
ITEM_EVENT_FIELDS = ("item_id", "timestamp")


class InvalidEvent(ValueError):
    """A message that breaks the event contract; `reason` is a REASON_* code, `detail` says what and where."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UserEvent:
    user_id: str
    item_id: str
    timestamp: int  # event time, Unix seconds
    event_type: str


@dataclass(frozen=True)
class ItemEvent:
    item_id: str
    timestamp: int  # time of the change, Unix seconds
    fields: Mapping[str, Any] = field(default_factory=dict)  # every key of the message (text fields included)


def _object(raw: bytes | None, max_bytes: int) -> dict:
    if raw is None:
        raise InvalidEvent(REASON_NOT_AN_OBJECT, "message has no value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidEvent(REASON_OVERSIZE, f"{len(raw)} bytes, the limit is {max_bytes}")
    try:
        obj = json.loads(raw)
    except RecursionError:
        # the C parser recurses once per nesting level: a few KB of brackets exhaust the stack
        raise InvalidEvent(REASON_INVALID_JSON, "nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise InvalidEvent(REASON_INVALID_JSON, str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidEvent(REASON_NOT_AN_OBJECT, f"expected a JSON object; got {type(obj).__name__}")
    return obj


def _require(obj: dict, names: tuple[str, ...]) -> None:
    missing = [n for n in names if obj.get(n) is None]
    if missing:
        raise InvalidEvent(REASON_MISSING_FIELD, f"field(s) {', '.join(missing)} missing or null")


def _id(obj: dict, name: str) -> str:
    value = obj[name]
    # bool is an int in Python; an id of `true` is a producer bug, not an id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(REASON_BAD_FIELD, f"{name}: expected a string or integer id; got {type(value).__name__}")
    if isinstance(value, int) and not -INT64_LIMIT <= value < INT64_LIMIT:
        raise InvalidEvent(REASON_BAD_FIELD, f"{name}: integer id out of the int64 range")
    text = value.strip() if isinstance(value, str) else str(value)
    if not text:
        raise InvalidEvent(REASON_BAD_FIELD, f"{name}: empty id")
    if len(text) > MAX_ID_CHARS:
        raise InvalidEvent(REASON_BAD_FIELD, f"{name}: {len(text)} characters, the limit is {MAX_ID_CHARS}")
    _check_unicode(text, name)
    return text


def _check_unicode(text: str, name: str) -> None:
    # JSON may escape a lone surrogate ("\ud800"): a str Python holds but no store can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(REASON_BAD_FIELD, f"{name}: not valid Unicode ({exc.reason} at position {exc.start})") from None


def _check_strings(obj: dict) -> None:
    """Every string of an item event (its text fields feed the tokenizer), walked without recursion."""
    stack: list = [("", obj)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            _check_unicode(value, name or "value")
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_unicode(k, "a field name")
                stack.append((name or k, v))
        elif isinstance(value, list):
            stack.extend((name, v) for v in value)


def _timestamp(obj: dict, unit: str, now_s: float | None) -> int:
    value = obj["timestamp"]
    # JSON integers only: a string or a float timestamp is a producer bug worth seeing in the dead letters.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(REASON_BAD_FIELD, f"timestamp: expected an integer ({unit}); got {repr(value)[:80]}")
    checked = check_timestamp(value, unit, now_s)
    if not checked.ok:
        raise InvalidEvent(REASON_BAD_FIELD, f"timestamp: {checked.reason}")
    return checked.seconds


def parse_user_event(raw: bytes | None, key: bytes | None = None, max_bytes: int = 4096,
                     timestamp_unit: str = "seconds", now_s: float | None = None) -> UserEvent:
    """Validate one user-event message; raises InvalidEvent. A key, when present, must be the user id
    (per-user ordering rests on it). The timestamp is read in `timestamp_unit` against the clock
    `now_s` (default: this machine's) and returned as Unix seconds."""
    obj = _object(raw, max_bytes)
    _require(obj, USER_EVENT_FIELDS)
    user_id = _id(obj, "user_id")
    event_type = obj["event_type"]
    if not isinstance(event_type, str) or not event_type.strip():
        raise InvalidEvent(REASON_BAD_FIELD, f"event_type: expected a non-empty string; got {repr(event_type)[:80]}")
    _check_unicode(event_type, "event_type")
    if key is not None and key.decode("utf-8", "replace") != user_id:
        raise InvalidEvent(REASON_KEY_MISMATCH, f"message key {key[:80]!r} is not its user_id {user_id[:80]!r}")
    return UserEvent(user_id, _id(obj, "item_id"), _timestamp(obj, timestamp_unit, now_s), event_type.strip())


def parse_item_event(raw: bytes | None, key: bytes | None = None, max_bytes: int = 1_000_000,
                     timestamp_unit: str = "seconds", now_s: float | None = None) -> ItemEvent:
    """Validate one item-event message; raises InvalidEvent. Whether it has embeddable text is decided
    by feature_gen.model.item_text (the one place that builds item text)."""
    obj = _object(raw, max_bytes)
    _require(obj, ITEM_EVENT_FIELDS)
    item_id = _id(obj, "item_id")
    _check_strings(obj)
    if key is not None and key.decode("utf-8", "replace") != item_id:
        raise InvalidEvent(REASON_KEY_MISMATCH, f"message key {key[:80]!r} is not its item_id {item_id[:80]!r}")
    return ItemEvent(item_id, _timestamp(obj, timestamp_unit, now_s), dict(obj, item_id=item_id))


def user_event_json(user_id, item_id, timestamp: int, event_type: str = "click") -> bytes:
    """The wire form of a user event (what `hllm produce-events` sends)."""
    return json.dumps(
        {"user_id": str(user_id), "item_id": str(item_id), "timestamp": int(timestamp), "event_type": event_type},
        separators=(",", ":"),
    ).encode()
