"""Each refresh consumer's metrics are its own, even in a process where Feast was imported first.

Feast sets PROMETHEUS_MULTIPROC_DIR on import; a prometheus_client imported after it would keep values
in a per-process file keyed by name and labels, so a second consumer's counters would start from the
first one's totals. The check runs in a fresh interpreter because the import order is the point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from feature_gen.streaming.metrics import StreamMetrics

REPO = Path(__file__).resolve().parent.parent

FEAST_FIRST = """
import json
import feast  # sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported
from prometheus_client import values
mode_on_import = values.ValueClass.__name__
from feature_gen.streaming.metrics import StreamMetrics
first = StreamMetrics("user_refresh")
first.count("added", 3)
first.batch_seconds.observe(0.5)
second = StreamMetrics("user_refresh")
second.count("added", 1)
second.batch_seconds.observe(0.5)
print(json.dumps({
    "mode_on_import": mode_on_import,
    "first_added": first.value("hllm_stream_events_total", {"consumer": "user_refresh", "outcome": "added"}),
    "second_added": second.value("hllm_stream_events_total", {"consumer": "user_refresh", "outcome": "added"}),
    "second_batches": second.value("hllm_stream_batch_seconds_count"),
}))
"""


def test_consumers_in_one_process_do_not_share_counts_after_feast_import():
    run = subprocess.run([sys.executable, "-c", FEAST_FIRST], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["mode_on_import"] == "MmapedValue"  # the trap is armed: Feast did switch the mode
    assert got["first_added"] == 3
    assert got["second_added"] == 1  # not 4: its counter did not start from the first consumer's total
    assert got["second_batches"] == 1


def test_counts_and_histograms_read_back_per_consumer():
    m = StreamMetrics("item_refresh")
    m.count("superseded", 0)  # a zero count creates no series (a dashboard would show a 0 that never happened)
    assert m.registry.get_sample_value("hllm_stream_events_total",
                                       {"consumer": "item_refresh", "outcome": "superseded"}) is None
    m.count("embedded", 2)
    m.count("embedded", 0)
    m.observe_freshness([0.2, 3.0])
    assert m.value("hllm_stream_events_total", {"consumer": "item_refresh", "outcome": "embedded"}) == 2
    assert m.value("hllm_stream_events_total", {"consumer": "item_refresh", "outcome": "too_late"}) == 0
    assert m.value("hllm_stream_freshness_seconds_count") == 2
    assert m.value("hllm_stream_freshness_seconds_bucket", {"le": "0.2"}) == 1
