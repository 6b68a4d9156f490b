"""Dead-lettering: a message the consumer cannot use goes to the dead-letter topic, unchanged.

The dead-letter record keeps the original key and value bytes exactly, and says why in its headers:

    hllm.reason        a REASON_* code of feature_gen.streaming.events (invalid_json, missing_field, ...)
    hllm.detail        one line: what was wrong and where
    hllm.source        topic/partition/offset the message came from
    hllm.consumer      the consumer group that rejected it

`deliver` returns only once the broker has acknowledged every letter, and the consumer commits past a
message only after that, so a rejected message is either in the dead-letter topic or will be read
again: never lost.
"""

from __future__ import annotations

from dataclasses import dataclass

REASON_HEADER = "hllm.reason"
DETAIL_HEADER = "hllm.detail"
SOURCE_HEADER = "hllm.source"
CONSUMER_HEADER = "hllm.consumer"


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


def dead_letter_headers(letter: DeadLetter, group_id: str) -> list[tuple[str, bytes]]:
    return [
        (REASON_HEADER, letter.reason.encode()),
        (DETAIL_HEADER, letter.detail[:1000].encode("utf-8", "replace")),
        (SOURCE_HEADER, f"{letter.topic}/{letter.partition}/{letter.offset}".encode()),
        (CONSUMER_HEADER, group_id.encode()),
    ]


def read_headers(record) -> dict[str, str]:
    """The hllm.* headers of a dead-letter record as text (for tests and for whoever triages the topic)."""
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or []) if k.startswith("hllm.")}


class DeadLetterWriter:
    """Delivers dead letters to one topic."""

    def __init__(self, producer, topic: str, group_id: str, timeout_s: float = 30.0):
        self.producer = producer
        self.topic = topic
        self.group_id = group_id
        self.timeout_s = timeout_s

    def deliver(self, letters: list[DeadLetter]) -> None:
        """Send and wait for every acknowledgement; raises DeadLetterError naming the undelivered ones."""
        if not letters:
            return
        futures = [
            (letter, self.producer.send(self.topic, key=letter.key, value=letter.value,
                                        headers=dead_letter_headers(letter, self.group_id)))
            for letter in letters
        ]
        try:
            self.producer.flush(timeout=self.timeout_s)
        except Exception as exc:  # a flush timeout: every unacknowledged letter is retried
            undelivered = [letter for letter, f in futures if not (f.is_done and f.succeeded())]
            raise DeadLetterError(undelivered, exc) from exc
        failed = [(letter, f.exception) for letter, f in futures if not f.succeeded()]
        if failed:
            raise DeadLetterError([letter for letter, _ in failed], failed[0][1])
