"""Kafka clients built from StreamConfig: the only place connection settings (SASL/TLS) are read.

Consumers never auto-commit: the loop commits offsets itself, after the features are written.
"""

from __future__ import annotations

import os
from typing import Any

from feature_gen.config import ConfigError, StreamConfig


def connection_options(cfg: StreamConfig) -> dict[str, Any]:
    """bootstrap, security protocol, SASL and TLS settings, as kafka-python keyword arguments."""
    opts: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "reconnect_backoff_ms": cfg.retry_backoff_ms,
        "reconnect_backoff_max_ms": cfg.retry_backoff_max_ms,
        "retry_backoff_ms": cfg.retry_backoff_ms,
        "bootstrap_timeout_ms": cfg.bootstrap_timeout_ms,
    }
    if cfg.security_protocol.startswith("SASL_"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_username is not None:
            opts["sasl_plain_username"] = cfg.sasl_username
        if cfg.sasl_password_env:
            password = os.environ.get(cfg.sasl_password_env)
            if password is None:
                raise ConfigError(f"stream.sasl_password_env: environment variable {cfg.sasl_password_env} is not set")
            opts["sasl_plain_password"] = password
    if cfg.security_protocol.endswith("SSL"):
        opts["ssl_check_hostname"] = cfg.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(cfg, name):
                opts[name] = getattr(cfg, name)
    return opts


class BrokerUnreachable(RuntimeError):
    """No broker of `stream.bootstrap_servers` answered within `stream.bootstrap_timeout_ms` (`hllm`
    exits 3 with this one line: a service is down or misnamed, not a bug)."""


def _connect(cfg: StreamConfig, what: str, build):
    from kafka import errors

    # kafka-python 3 raises KafkaTimeoutError from its bootstrap; 2.x raised NoBrokersAvailable
    unreachable = tuple(getattr(errors, n) for n in ("KafkaTimeoutError", "NoBrokersAvailable", "KafkaConnectionError")
                        if hasattr(errors, n))
    try:
        return build()
    except unreachable as exc:
        raise BrokerUnreachable(
            f"{what}: no Kafka broker reachable at {cfg.bootstrap_servers} (stream.bootstrap_servers, "
            f"security_protocol {cfg.security_protocol}) within {cfg.bootstrap_timeout_ms} ms "
            f"(stream.bootstrap_timeout_ms): {type(exc).__name__}"
        ) from None


def make_consumer(cfg: StreamConfig, group_id: str, **overrides):
    """A group member with manual commits, reading from the earliest offset when the group has none."""
    from kafka import KafkaConsumer

    opts = connection_options(cfg) | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "max_poll_interval_ms": cfg.max_poll_interval_ms,
        "max_poll_records": cfg.max_batch_events,
        "fetch_max_wait_ms": cfg.fetch_max_wait_ms,
    }
    return _connect(cfg, f"consumer group {group_id}", lambda: KafkaConsumer(**(opts | overrides)))


def make_producer(cfg: StreamConfig, **overrides):
    """A producer that waits for the broker's acknowledgement and retries transient failures."""
    from kafka import KafkaProducer

    opts = connection_options(cfg) | {"acks": "all", "linger_ms": 5, "retries": 2**31 - 1, "delivery_timeout_ms": 120_000}
    return _connect(cfg, "producer", lambda: KafkaProducer(**(opts | overrides)))


def create_topics(cfg: StreamConfig, partitions: dict[str, int]) -> None:
    """Create topics that do not exist yet (tests, the demo, the benchmark; production topics are
    provisioned by whoever runs the cluster)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _connect(cfg, "admin client", lambda: KafkaAdminClient(**connection_options(cfg)))
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
