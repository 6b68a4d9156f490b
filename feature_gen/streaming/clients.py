"""Kafka clients built from StreamConfig: the only place connection settings (SASL/TLS) are read.

Consumers never auto-commit: the loop commits offsets itself, after the features are written.
"""

from __future__ import annotations

import os
from typing import Any

from feature_gen.config import ConfigError, StreamConfig


class BrokerError(RuntimeError):
    """The Kafka cluster could not be reached, or refused a client, where retrying inside the client does
    not apply (start-up, authorisation, a topic that does not exist); the message names the servers."""


def connection_options(cfg: StreamConfig) -> dict[str, Any]:
    """bootstrap, security protocol, SASL and TLS settings, as kafka-python keyword arguments."""
    opts: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "reconnect_backoff_ms": cfg.retry_backoff_ms,
        "reconnect_backoff_max_ms": cfg.retry_backoff_max_ms,
        "retry_backoff_ms": cfg.retry_backoff_ms,
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
    return KafkaConsumer(**(opts | overrides))


def make_producer(cfg: StreamConfig, **overrides):
    """A producer that waits for the broker's acknowledgement and retries transient failures."""
    from kafka import KafkaProducer

    opts = connection_options(cfg) | {"acks": "all", "linger_ms": 5, "retries": 2**31 - 1, "delivery_timeout_ms": 120_000}
    return KafkaProducer(**(opts | overrides))


def create_topics(cfg: StreamConfig, partitions: dict[str, int]) -> None:
    """Create topics that do not exist yet (tests, the demo, the benchmark; production topics are
    provisioned by whoever runs the cluster)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**connection_options(cfg))
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
