"""Dead-lettering: a message the consumer cannot use goes to the dead-letter topic, unchanged.

The dead-letter record keeps the original key and value bytes exactly, and says why in its headers:

    hllm.reason        a REASON_* code of feature_gen.streaming.events (invalid_json, missing_field, ...)
    hllm.detail        one line: what was wrong and where
    hllm.source        topic/partition/offset the message came from
    hllm.consumer      the consumer group that rejected it
    hllm.truncated     only when the letter had to be cut to fit: "key", "value" or "key,value"
    hllm.original_size / hllm.original_key_size   the sizes in bytes before the cut

`deliver` returns only once the broker has acknowledged every letter, and the consumer commits past a
message only after that, so a rejected message is either in the dead-letter topic or will be read
again: never lost.

A letter can always be delivered: the message it quotes may be too large for the dead-letter topic (an
oversize event is a reason to dead-letter in the first place), so a value above `max_value_bytes`
(512 KiB by default, under both the producer's `max_request_size` and a broker's `message.max.bytes`
defaults of 1 MiB) is cut to that size, a key above MAX_KEY_BYTES too, with headers saying so. If the
producer or the broker still refuses the size (a cluster configured smaller), the letter is cut
further, down to an empty value, rather than stalling the consumer. Other send errors, raised at once
by `send` (no metadata within `max_block_ms`) or through the future, become a DeadLetterError naming
the undelivered letters: the loop retries them with backoff (a broker outage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

REASON_HEADER = "hllm.reason"
DETAIL_HEADER = "hllm.detail"
SOURCE_HEADER = "hllm.source"
CONSUMER_HEADER = "hllm.consumer"
TRUNCATED_HEADER = "hllm.truncated"
ORIGINAL_SIZE_HEADER = "hllm.original_size"
ORIGINAL_KEY_SIZE_HEADER = "hllm.original_key_size"

MAX_VALUE_BYTES = 512 * 1024
MAX_KEY_BYTES = 1024
_SHRINK = 16  # each size refusal cuts the value limit by this factor (512 KiB -> 32 KiB -> 2 KiB -> 128 B -> 0)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str

    @classmethod
    def of(cls, record, reason: str, detail: str) -> "DeadLetter":
        """From a kafka-python ConsumerRecord."""
        return cls(record.topic, record.partition, record.offset, record.key, record.value, reason, detail)


class DeadLetterError(RuntimeError):
    """Some dead letters were not acknowledged by the broker; `letters` are the ones to send again."""

    def __init__(self, letters: list[DeadLetter], cause: Exception):
        super().__init__(f"{len(letters)} dead letter(s) not delivered: {cause}")
        self.letters = letters


def error_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line for a letter's detail: its type and message, whitespace folded."""
    text = f"{type(exc).__name__}: " + " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dead_letter_headers(letter: DeadLetter, group_id: str) -> list[tuple[str, bytes]]:
    return [
        (REASON_HEADER, letter.reason.encode()),
        (DETAIL_HEADER, letter.detail[:1000].encode("utf-8", "replace")),
        (SOURCE_HEADER, f"{letter.topic}/{letter.partition}/{letter.offset}".encode()),
        (CONSUMER_HEADER, group_id.encode("utf-8", "replace")),
    ]


def fitted_record(letter: DeadLetter, group_id: str, max_value_bytes: int,
                  max_key_bytes: int = MAX_KEY_BYTES) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead-letter record, key and value cut to the limits, headers saying
    what was cut and the original sizes."""
    key, value = letter.key, letter.value
    headers = dead_letter_headers(letter, group_id)
    cut = []
    if key is not None and len(key) > max_key_bytes:
        cut.append("key")
        headers.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key)).encode()))
        key = key[:max_key_bytes]
    if value is not None and len(value) > max_value_bytes:
        cut.append("value")
        headers.append((ORIGINAL_SIZE_HEADER, str(len(value)).encode()))
        value = value[:max_value_bytes]
    if cut:
        headers.append((TRUNCATED_HEADER, ",".join(cut).encode()))
    return key, value, headers


def read_headers(record) -> dict[str, str]:
    """The hllm.* headers of a dead-letter record as text (for tests and for whoever triages the topic)."""
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or []) if k.startswith("hllm.")}


class DeadLetterWriter:
    """Delivers dead letters to one topic (see the module docstring for the size rule)."""

    def __init__(self, producer, topic: str, group_id: str, timeout_s: float = 30.0,
                 max_value_bytes: int = MAX_VALUE_BYTES):
        self.producer = producer
        self.topic = topic
        self.group_id = group_id
        self.timeout_s = timeout_s
        self.max_value_bytes = max_value_bytes

    def deliver(self, letters: list[DeadLetter]) -> None:
        """Send and wait for every acknowledgement; raises DeadLetterError naming the undelivered ones."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        limits = {id(letter): self.max_value_bytes for letter in letters}
        pending = list(letters)
        undelivered: list[DeadLetter] = []
        first_error: Exception | None = None
        while pending:
            sent, resend = [], []
            for letter in pending:
                try:
                    sent.append((letter, self._send(letter, limits[id(letter)])))
                except MessageSizeTooLargeError:  # raised by send itself: over the producer's max_request_size
                    resend.append(letter)
                except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms
                    undelivered.append(letter)
                    first_error = first_error or exc
            if sent:
                try:
                    self.producer.flush(timeout=self.timeout_s)
                except KafkaError as exc:  # a flush timeout: every unacknowledged letter is retried
                    first_error = first_error or exc
            for letter, future in sent:
                if future.is_done and future.succeeded():
                    continue
                error = future.exception if future.is_done else None
                if isinstance(error, MessageSizeTooLargeError):  # the broker's message.max.bytes is smaller
                    resend.append(letter)
                else:
                    undelivered.append(letter)
                    first_error = first_error or error or TimeoutError(f"no acknowledgement in {self.timeout_s} s")
            pending = []
            for letter in resend:
                if limits[id(letter)] == 0:  # an empty value refused too: nothing left to cut
                    undelivered.append(letter)
                    first_error = first_error or MessageSizeTooLargeError("refused even with an empty value")
                    continue
                limits[id(letter)] //= _SHRINK
                log.warning("dead letter from %s/%d/%d refused as too large; cutting its value to %d bytes",
                            letter.topic, letter.partition, letter.offset, limits[id(letter)])
                pending.append(letter)
        if undelivered:
            raise DeadLetterError(undelivered, first_error)

    def _send(self, letter: DeadLetter, max_value_bytes: int):
        key, value, headers = fitted_record(letter, self.group_id, max_value_bytes)
        return self.producer.send(self.topic, key=key, value=value, headers=headers)
