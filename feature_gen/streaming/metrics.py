"""Prometheus metrics of a refresh consumer (prometheus-client), one registry per consumer.

    hllm_stream_events_total{consumer,outcome}   events by what happened to them: added, duplicate,
                                                  too_late, embedded (items), dead_letter, waiting
                                                  (rate() of it is events/s)
    hllm_stream_batch_events                      events per micro-batch (histogram)
    hllm_stream_batch_entities                    users (or items) recomputed per micro-batch (histogram)
    hllm_stream_batch_seconds                     wall time of a batch from poll to commit (histogram)
    hllm_stream_freshness_seconds                 event produce time -> its user's (item's) new embedding
                                                  written to the online store (histogram)
    hllm_stream_stage_seconds{stage}              where a batch's time goes: parse, store_read, model,
                                                  store_write (a counter of seconds; the rest is the loop)
    hllm_stream_consumer_lag{partition}           messages not yet read (high watermark - position)
    hllm_stream_assigned_partitions               partitions this group member owns now
    hllm_stream_dead_letters_total{reason}        dead-lettered messages by reason
    hllm_stream_waiting_events                    events held for an item that has no embedding yet
    hllm_stream_broker_retries_total{call}        broker calls retried after a failure (outage, rebalance)

Serve with `serve(port)` (stream.metrics_port); tests read values with `value(name, labels)`. A
benchmark that needs exact freshness percentiles (not histogram buckets) sets `freshness_samples = []`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values

_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


def keep_values_in_process() -> None:
    """Make prometheus_client keep metric values in the metric objects, whatever was imported first.

    Importing Feast sets PROMETHEUS_MULTIPROC_DIR (for its pre-forked feature server), and a
    prometheus_client first imported after that keeps every value in one mmap file per process, keyed
    by metric name and labels only: a consumer created after another one in the same process then
    starts its counters from the other's totals, whatever registry each uses (seen in the test suite:
    a fresh consumer reported 2,026 events 'added' that it never read). A refresh consumer owns its
    registry and serves it from its own process, so in-process values are always what it wants.
    Metrics created before this call (Feast's own) keep their storage."""
    values.ValueClass = values.MutexValue


class StreamMetrics:
    def __init__(self, consumer: str):
        keep_values_in_process()
        self.consumer = consumer
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("hllm_stream_events", "events consumed, by outcome", ["consumer", "outcome"], registry=r)
        self.batch_events = Histogram("hllm_stream_batch_events", "events per micro-batch", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_entities = Histogram(
            "hllm_stream_batch_entities", "users or items recomputed per micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram("hllm_stream_batch_seconds", "micro-batch wall time", buckets=_SECONDS_BUCKETS, registry=r)
        self.freshness = Histogram(
            "hllm_stream_freshness_seconds", "event produce time to embedding written online", buckets=_SECONDS_BUCKETS, registry=r
        )
        self.stage_seconds = Counter(
            "hllm_stream_stage_seconds", "seconds of batch work by stage", ["stage"], registry=r
        )
        self.lag = Gauge("hllm_stream_consumer_lag", "messages not yet read, per partition", ["topic", "partition"], registry=r)
        self.assigned = Gauge("hllm_stream_assigned_partitions", "partitions this member owns", registry=r)
        self.dead_letters = Counter("hllm_stream_dead_letters", "dead-lettered messages", ["reason"], registry=r)
        self.waiting = Gauge("hllm_stream_waiting_events", "events held for an item without an embedding", registry=r)
        self.retries = Counter("hllm_stream_broker_retries", "broker calls retried", ["call"], registry=r)
        self.freshness_samples: list[float] | None = None

    def observe_freshness(self, seconds: list[float]) -> None:
        for s in seconds:
            self.freshness.observe(s)
        if self.freshness_samples is not None:
            self.freshness_samples.extend(seconds)

    @contextmanager
    def timed(self, stage: str):
        """Add the wall time of the block to hllm_stream_stage_seconds{stage}."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage).inc(time.perf_counter() - started)

    def count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.events.labels(self.consumer, outcome).inc(n)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when never set), e.g. value("hllm_stream_events_total", {...})."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
