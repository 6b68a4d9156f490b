"""The consumer loop both refresh consumers run: poll -> validate -> process -> write -> commit.

    while not stopping:
        records = poll_batch()                   # up to max_batch_events, or for at most max_batch_ms
        outcome = processor.process(records)     # validate, process, write to the online store
        deliver(outcome.dead_letters)            # acknowledged by the broker before the commit
        commit(records, outcome.held)            # only now: at-least-once

Delivery rules kept here, so both consumers share them:

- **commit after write**: offsets of a batch are committed only after its features are written and its
  dead letters acknowledged. A crash anywhere before replays the batch; the writes are idempotent.
- **held events**: a processor may hold events it cannot finish yet (a user event on an item with no
  embedding); a partition's commit then stops at its lowest held offset, so a crash or a rebalance
  replays the held events instead of losing them.
- **rebalance**: when partitions are revoked, records buffered but not yet processed and events held
  for them are dropped, not committed: the new owner reads them again from the last commit.
- **broker outage**: polls reconnect with backoff inside the client; a failed commit or dead-letter send
  is retried with exponential backoff (`retry_backoff_ms` doubling to `retry_backoff_max_ms`) until
  it succeeds, the group has moved on (the commit is then dropped: the new owner replays), or a stop
  is requested (nothing committed: replayed on restart).
- **SIGTERM / SIGINT**: the loop stops polling, finishes and commits the current batch, leaves the group
  and returns.

- **fencing**: before each online write the processor calls `fence()`, which commits (synchronously,
  with this member's group generation) offsets the member may commit anyway: the lowest offset of each
  partition it has not finished. A member that lost its partitions (it stalled past its session
  timeout or `max_poll_interval_ms` and the group moved on) is refused by the broker or its own client
  (CommitFailedError / IllegalStateError): the write is skipped with FencedError, the batch dropped
  uncommitted, and the new owner, who replays from the last commit, is the only writer. Feast has no
  compare-and-set, so a window remains between the fence and the write's completion (milliseconds,
  where the unfenced window was the whole stall).

A record's failure never gets here (the processors dead-letter it). A processor error that does (the
store is down, a bug) propagates without a commit: the process exits non-zero, its supervisor restarts
it, and the group replays from the last commit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from feature_gen.streaming.dead_letter import DeadLetter, DeadLetterError, DeadLetterWriter
from feature_gen.streaming.metrics import StreamMetrics

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    held: dict = field(default_factory=dict)  # TopicPartition -> lowest offset still held (not committable)


class FencedError(RuntimeError):
    """A write refused because this member no longer owns the partition (the group has a newer generation)."""


class BatchProcessor(Protocol):
    def process(self, records: list) -> BatchOutcome: ...
    def has_held(self) -> bool: ...
    def forget(self, partitions: set) -> None: ...  # revoked: drop held events of these partitions


@dataclass
class LoopSettings:
    topic: str
    group_id: str
    max_batch_events: int
    max_batch_ms: int
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 10_000
    commit_timeout_ms: int = 10_000
    # seconds between "events/s, lag, dead letters, last batch" lines (None: HLLM_PROGRESS_SECONDS, 30)
    status_every_s: float | None = None


class ConsumerLoop:
    def __init__(self, consumer, processor: BatchProcessor, dead_letters: DeadLetterWriter,
                 metrics: StreamMetrics, settings: LoopSettings, stop: threading.Event | None = None):
        self.consumer = consumer
        self.processor = processor
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.settings = settings
        self.stop = stop or threading.Event()
        self._buffer: list = []  # polled, not yet processed
        self._next_offset: dict = {}  # TopicPartition -> offset after the last processed record
        self._held: dict = {}  # TopicPartition -> lowest offset held by the processor after the last batch
        self._unfinished: dict = {}  # TopicPartition -> lowest offset not yet finished (what fence() commits)
        self.batches = 0  # loop iterations that processed something (records, or held events retried)
        self.status = StatusLine(settings.group_id, settings.status_every_s)

    # ------------------------------------------------------------------ the loop

    def run(self, max_batches: int | None = None) -> None:
        from kafka import ConsumerRebalanceListener

        loop = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                loop._on_revoked(set(revoked))

            def on_partitions_assigned(self, assigned):
                loop.metrics.assigned.set(len(assigned))
                log.info("%s: assigned %s", loop.settings.group_id, sorted(tp.partition for tp in assigned))

        self.consumer.subscribe([self.settings.topic], listener=_Listener())
        try:
            while not self.stop.is_set() and (max_batches is None or self.batches < max_batches):
                records = self.poll_batch()
                if not records and not self.processor.has_held():
                    continue
                started = time.monotonic()
                self._unfinished = self._lowest_unfinished(records)
                try:
                    outcome = self.processor.process(records)
                except FencedError as exc:
                    self._on_fenced(exc)
                    continue
                self._held = dict(outcome.held)
                if self._deliver(outcome.dead_letters):
                    self._commit(records, outcome.held)
                self._observe(records, outcome, time.monotonic() - started)
        finally:
            self.consumer.close(autocommit=False)
            self.dead_letters.producer.close(timeout=5)

    # ------------------------------------------------------------------ steps

    def poll_batch(self) -> list:
        """Records until max_batch_events, or until max_batch_ms after the loop came back for more, or a
        stop. The window starts when the loop is ready, not at the first record: records that queued up
        while the previous batch was being processed have waited already."""
        s = self.settings
        self._buffer = []
        deadline = time.monotonic() + s.max_batch_ms / 1000
        while len(self._buffer) < s.max_batch_events and not self.stop.is_set():
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                break
            polled = self.consumer.poll(timeout_ms=wait_ms, max_records=s.max_batch_events - len(self._buffer))
            for records in polled.values():
                self._buffer.extend(records)
            if not self._buffer:
                break  # idle: let the loop look at held events and the stop flag
        return self._buffer

    def fence(self) -> None:
        """Prove this member still owns its partitions, right before a write (see the module docstring);
        raises FencedError when it does not. Retries a broker outage like a commit."""
        from kafka.structs import OffsetAndMetadata

        assigned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self._unfinished.items() if tp in assigned}
        lost = set(self._unfinished) - assigned
        if lost:
            raise FencedError(f"partition(s) {sorted(tp.partition for tp in lost)} revoked during the batch")
        if not offsets:
            return
        outcome, exc = self._commit_offsets(offsets, "fence")
        if outcome == "lost":
            raise FencedError(f"this member no longer owns partition(s) "
                              f"{sorted(tp.partition for tp in offsets)}: {exc}") from exc
        if outcome == "stopped":
            raise FencedError(f"stopping before membership could be confirmed: {exc}") from exc

    def _lowest_unfinished(self, records: list) -> dict:
        """Per partition: the first offset of this batch, or a lower one the processor still holds."""
        from kafka import TopicPartition

        lowest = dict(self._held)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            lowest[tp] = min(lowest.get(tp, r.offset), r.offset)
        return lowest

    def _on_fenced(self, exc: FencedError) -> None:
        log.warning("%s: write refused, batch dropped uncommitted (the partition's new owner replays it): %s",
                    self.settings.group_id, exc)
        self.metrics.retries.labels("fenced").inc()
        lost = set(self._unfinished) | set(self._next_offset) | set(self._held)
        self.processor.forget(lost)
        for tp in lost:
            self._next_offset.pop(tp, None)
        self._held = {}
        self._buffer = []

    def _on_revoked(self, revoked: set) -> None:
        from kafka import TopicPartition

        if not revoked:
            return
        dropped = [r for r in self._buffer if TopicPartition(r.topic, r.partition) in revoked]
        self._buffer[:] = [r for r in self._buffer if TopicPartition(r.topic, r.partition) not in revoked]
        for tp in revoked:
            self._next_offset.pop(tp, None)
            self._held.pop(tp, None)
        self.processor.forget(revoked)
        self.metrics.assigned.set(len(self.consumer.assignment() - revoked))
        log.info("%s: revoked %s (%d buffered records left to the next owner)",
                 self.settings.group_id, sorted(tp.partition for tp in revoked), len(dropped))

    def _deliver(self, letters: list[DeadLetter]) -> bool:
        """True once the broker has every letter; False when a stop came first (then nothing is
        committed, and the batch is read again on restart)."""
        pending = letters
        attempt = 0
        while pending:
            try:
                self.dead_letters.deliver(pending)
                pending = []
            except DeadLetterError as exc:
                if self.stop.is_set() and attempt > 0:
                    log.warning("%s: stopping with undelivered dead letters; the batch is not committed",
                                self.settings.group_id)
                    return False
                pending = exc.letters
                attempt = self._backoff("dead_letter", attempt, exc)
        for letter in letters:
            self.metrics.dead_letters.labels(letter.reason).inc()
            log.warning("%s: dead letter %s/%d/%d: %s (%s)", self.settings.group_id, letter.topic, letter.partition,
                        letter.offset, letter.reason, letter.detail)
        self.metrics.count("dead_letter", len(letters))
        self.status.dead_letters += len(letters)
        return True

    def _commit(self, records: list, held: dict) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        for r in records:
            self._next_offset[TopicPartition(r.topic, r.partition)] = r.offset + 1
        assigned = self.consumer.assignment()
        offsets = {}
        for tp in set(self._next_offset) | set(held):
            if tp not in assigned:
                continue
            offset = min(self._next_offset.get(tp, held.get(tp)), held.get(tp, self._next_offset.get(tp)))
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        outcome, exc = self._commit_offsets(offsets, "commit")
        if outcome == "lost":
            # The group rebalanced under us: these partitions belong to someone else now, who
            # replays from the last successful commit. Our writes were idempotent; nothing is lost.
            log.warning("%s: commit dropped after a rebalance (%s)", self.settings.group_id, exc)
            self.metrics.retries.labels("commit_dropped").inc()
        elif outcome == "stopped":
            log.warning("%s: stopping with an uncommitted batch (replayed on restart): %s", self.settings.group_id, exc)

    def _commit_offsets(self, offsets: dict, call: str) -> tuple[str, Exception | None]:
        """Commit `offsets` synchronously, retrying a broker outage with backoff (the one commit loop
        of the batch commit and the pre-write fence). Returns ("committed", None), ("lost", exc) when
        the group rebalanced and these partitions are no longer this member's, or ("stopped", exc) when
        a stop came during an outage. What a lost partition means is the caller's to decide."""
        from kafka.errors import CommitFailedError, IllegalStateError, KafkaError

        attempt = 0
        while True:
            try:
                self.consumer.commit(offsets, timeout_ms=self.settings.commit_timeout_ms)
                return "committed", None
            except (CommitFailedError, IllegalStateError) as exc:
                return "lost", exc
            except KafkaError as exc:
                if self.stop.is_set() and attempt > 0:
                    return "stopped", exc
                attempt = self._backoff(call, attempt, exc)

    def _backoff(self, call: str, attempt: int, exc: Exception) -> int:
        s = self.settings
        wait_ms = min(s.retry_backoff_ms * 2**attempt, s.retry_backoff_max_ms)
        log.warning("%s: %s failed (%s); retrying in %d ms", s.group_id, call, exc, wait_ms)
        self.metrics.retries.labels(call).inc()
        time.sleep(wait_ms / 1000)
        return attempt + 1

    def _observe(self, records: list, outcome: BatchOutcome, seconds: float) -> None:
        self.batches += 1
        log.debug("%s: batch of %d records in %.3f s", self.settings.group_id, len(records), seconds)
        if records:  # a pass that only retried held events is not a batch: it would skew sizes and times
            self.metrics.batch_events.observe(len(records))
            self.metrics.batch_seconds.observe(seconds)
        lag = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                behind = max(0, high - self.consumer.position(tp))
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(behind)
                lag += behind
        self.status.observe(len(records), seconds, lag)


class StatusLine:
    """The consumer's periodic log line: `group: 1250 events in 30 s (41.7/s), 118 batches, lag 12, dead
    letters 3, last batch 45 ms (17 events)`, at most once per `every_s` (HLLM_PROGRESS_SECONDS, 30 s)
    and only after events arrived since the last one (an idle consumer stays quiet)."""

    def __init__(self, name: str, every_s: float | None = None):
        from feature_gen.logs import progress_interval

        self.name = name
        self.every_s = progress_interval() if every_s is None else every_s
        self.events = self.batches = self.dead_letters = 0
        self.last_batch: tuple[int, float] = (0, 0.0)
        self.since = time.monotonic()

    def observe(self, events: int, seconds: float, lag: int) -> str | None:
        if events:
            self.events += events
            self.batches += 1
            self.last_batch = (events, seconds)
        elapsed = time.monotonic() - self.since
        if not self.events or elapsed < self.every_s:
            return None
        n, secs = self.last_batch
        line = (f"{self.name}: {self.events} events in {elapsed:.0f} s ({self.events / max(elapsed, 1e-9):.1f}/s), "
                f"{self.batches} batches, lag {lag}, dead letters {self.dead_letters}, last batch {secs * 1000:.0f} ms ({n} events)")
        log.info(line)
        self.events = self.batches = self.dead_letters = 0
        self.since = time.monotonic()
        return line


def stop_on_signals(stop: threading.Event, signals: tuple = (signal.SIGTERM, signal.SIGINT)) -> None:
    """SIGTERM/SIGINT set `stop`: the loop finishes and commits its batch, then returns (main thread only)."""

    def _handler(signum, _frame):
        log.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    for sig in signals:
        signal.signal(sig, _handler)


