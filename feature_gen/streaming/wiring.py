"""What the two refresh consumers (`hllm refresh`, `hllm refresh-items`) share: loading the bundle's
encoders, opening the online store, the Kafka clients and dead-letter writer around a processor, and
running until a signal. Each consumer module only builds its processor."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from feature_gen.config import ConfigError, HLLMConfig
from feature_gen.inference.encoders import Encoders, load_encoders
from feature_gen.streaming.consumer_loop import ConsumerLoop, LoopSettings, stop_on_signals
from feature_gen.streaming.metrics import StreamMetrics

if TYPE_CHECKING:  # the store module imports Feast; a consumer that is handed a store need not
    from feature_gen.store.feature_store import HLLMFeatureStore

log = logging.getLogger(__name__)


def consumer_encoders(cfg: HLLMConfig) -> Encoders:
    """The bundle's encoders in the runtime the stream section asks for (one load per process)."""
    import torch

    if not cfg.stream.bundle_path:
        raise ConfigError("stream.bundle_path: required (the model bundle folder the consumer loads)")
    if cfg.stream.torch_threads:
        torch.set_num_threads(cfg.stream.torch_threads)
    return load_encoders(cfg.stream.bundle_path, cfg.stream.runtime, threads=cfg.stream.torch_threads)


def consumer_store(cfg: HLLMConfig, store: HLLMFeatureStore | None = None) -> HLLMFeatureStore:
    """The online store the consumer writes to: `store` when a caller already holds one (tests, demo)."""
    if store is not None:
        return store
    from feature_gen.store.feature_store import open_store

    return open_store(cfg.store)


def wire_loop(cfg: HLLMConfig, processor, metrics: StreamMetrics, *, topic: str, group_id: str,
              stop: threading.Event | None) -> ConsumerLoop:
    """`processor` behind a consumer of `topic` in `group_id`, with its dead letters going to the
    configured topic under the same group."""
    from feature_gen.streaming.clients import make_consumer, make_producer
    from feature_gen.streaming.dead_letter import DeadLetterWriter

    s = cfg.stream
    return ConsumerLoop(
        make_consumer(s, group_id),
        processor,
        DeadLetterWriter(make_producer(s), s.dead_letter_topic, group_id),
        metrics,
        LoopSettings(topic, group_id, s.max_batch_events, s.max_batch_ms, s.retry_backoff_ms, s.retry_backoff_max_ms),
        stop,
    )


def run_until_signalled(cfg: HLLMConfig, build_loop, name: str, topic: str, group_id: str,
                        max_batches: int | None = None) -> int:
    """Consume until SIGTERM/SIGINT (or `max_batches`); serve metrics when a port is configured."""
    stop = threading.Event()
    stop_on_signals(stop)
    loop = build_loop(cfg, stop)
    if cfg.stream.metrics_port is not None:
        loop.metrics.serve(cfg.stream.metrics_port)
    encoders = loop.processor.encoders
    log.info("%s: group %s on %s, bundle %s (%s)", name, group_id, topic, encoders.version, encoders.runtime)
    loop.run(max_batches=max_batches)
    return 0
