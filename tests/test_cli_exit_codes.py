"""Issue 20: every project error type becomes one line and its documented exit code (hllm/cli.py):
2 config / data / bundle, 3 broker, 4 feature store."""

from __future__ import annotations

import shutil

import pytest

from hllm.cli import exit_code_of, main
from hllm.local_broker import free_port
from tests.streaming_support import broker, stream_config, write_config  # noqa: F401  (broker is a fixture)


class _Broker:  # a bootstrap address where nothing listens
    bootstrap = f"127.0.0.1:{free_port()}"


def _refresh(cfg, tmp_path, *extra) -> int:
    return main(["refresh", "--config", str(write_config(cfg, tmp_path / "stream.yaml")), *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    ours = [line for line in err if line.startswith("hllm ")]
    assert len(ours) == 1, err
    return ours[0]


def test_a_tampered_bundle_is_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    weights = next(p for p in sorted(bundle.rglob("*.safetensors")))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    cfg = stream_config(tmp_path, _Broker, bundle)
    assert _refresh(cfg, tmp_path) == 2
    line = _one_line(capsys)
    assert line.startswith("hllm refresh: BundleError: ") and "checksum" in line
    assert _refresh(cfg, tmp_path, "--set", "stream.runtime=onnx") == 2  # the ONNX path: same line, no trace
    assert _one_line(capsys).startswith("hllm refresh: BundleError: ")


def test_an_unreachable_broker_is_one_line_and_exit_3(tiny_bundle, tmp_path, capsys):
    cfg = stream_config(tmp_path, _Broker, tiny_bundle)
    assert _refresh(cfg, tmp_path) == 3
    line = _one_line(capsys)
    assert line.startswith("hllm refresh: Broker") and _Broker.bootstrap in line


def test_an_unreachable_store_is_one_line_and_exit_4(tiny_bundle, tmp_path, broker, capsys):
    from feature_gen.streaming.clients import make_producer
    from feature_gen.streaming.events import user_event_json
    from feature_gen.streaming.produce import send_paced
    from tests.streaming_support import create_stream_topics

    cfg = stream_config(tmp_path, broker, tiny_bundle)
    create_stream_topics(cfg, partitions=1)
    send_paced(make_producer(cfg.stream), cfg.stream.user_events_topic, [(b"u", user_event_json("u", "1", 1_700_000_000))])
    unreachable = f"127.0.0.1:{free_port()}"  # Feast opens Redis lazily: the first read of the batch fails
    assert _refresh(cfg, tmp_path, "--set", "store.online_store=redis", "--set", f"store.redis_connection={unreachable}") == 4
    line = _one_line(capsys)
    assert line.startswith("hllm refresh: OnlineStoreError: ") and unreachable in line


@pytest.mark.parametrize("error, code", [
    ("feature_gen.config:ConfigError", 2), ("feature_gen.data.contract:DataError", 2),
    ("feature_gen.model.bundle:BundleError", 2), ("feature_gen.store.feature_store:FeatureStoreError", 4),
    ("feature_gen.store.feature_store:OnlineStoreError", 4),
    ("feature_gen.streaming.clients:BrokerError", 3), ("kafka.errors:KafkaTimeoutError", 3),
    ("feature_gen.streaming.clients:BrokerUnreachable", 3), ("builtins:KeyError", None),
])
def test_each_error_type_has_its_documented_code(error, code):
    from importlib import import_module

    module, name = error.split(":")
    assert exit_code_of(getattr(import_module(module), name)("x")) == code
