"""Benchmark: the user-event refresh consumer against a real Kafka-protocol broker (Tansu, in memory)
and the Feast SQLite online store, on this machine's 2 cores.

Per model (tiny random Llamas; the demo's SmolLM2-135M slices, frozen into a bundle):

- **sustained events/s**: `events` user events (uniform over `users` users and `items` items, keyed
  by user, 4 partitions) are produced up front; one consumer (`hllm refresh`'s loop, in this process)
  drains them in micro-batches of `stream.max_batch_events`: read sequences, merge, recompute every
  touched user with the User LLM, write sequences and embeddings, commit. Rate = events / (time from
  the first batch to the last).
- **freshness at a fixed rate**: `hllm produce-events --rate R` (a separate process) replays a log at
  R events/s for `seconds`; freshness of an event = the moment the push of its user's new embedding to
  the online store returned (readable from then on) minus the producer's record timestamp (CreateTime,
  same machine clock). p50/p99 over every event of the paced phase.

- **where a batch goes** (issue 23): seconds per stage over the sustained phase (parse, store read,
  model, store write; the rest is the loop: poll, commit, metrics) as shares of the drain time, and the
  model-only limit = events / seconds in the User LLM (what the consumer would do if the store and
  parsing were free).
- **new path / Feast path**: `--paths online_io,feast` runs the same measurement twice, once with the
  batched online paths (feature_gen/store/online_io.py, what the consumer uses) and once with the plain
  Feast API the consumer used before (DataFrames through push + get_online_features; `_FeastPathState`
  below), and reports the ratio of events/s. The 1-minute load average is recorded with every row.

Reproduce: .venv/bin/python -m benchmarks.stream_bench   (`--models tiny` for the quick one;
`--stores sqlite` where there is no redis-server; `make bench` runs the default, both stores)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import seed_online_state, wait_until, write_result
import pandas as pd

COMMAND = ".venv/bin/python -m benchmarks.stream_bench"
STAGES = ("parse", "store_read", "model", "store_write")
ROOT = Path("outputs/bench/stream")
MODELS = {  # name -> (config file, overrides, torch threads, items, max_batch_events)
    "tiny": ("configs/tiny.yaml", {"user_llm.use_timestamps": True}, 1, 2000, 1000),
    "demo": ("configs/demo.yaml", {}, 1, 500, 100),
}


def _bundle(name: str) -> Path:
    from feature_gen.model.bundle import save_bundle
    from feature_gen.config import load_config
    from feature_gen.model.hllm import build_hllm

    config, overrides = MODELS[name][:2]
    cfg = load_config(config, overrides)
    model, tok = build_hllm(cfg)
    return save_bundle(model.eval(), tok, cfg, ROOT / "bundles", base_models={"config": config})


# The backlog's events start at 1.7e9 s (2023-11); the paced ones after them, and in the past: the input
# contract refuses events later than the reader's clock (plus skew), so a constant in the future (the
# 1.8e9 = 2027-01 this once was) turns every paced event into a dead letter and the wait into a timeout.
BACKLOG_START_TS = 1_700_000_000
PACED_START_TS = 1_750_000_000


def _events(users: int, items: int, n: int, seed: int, start_ts: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    return pd.DataFrame({
        "user_id": [f"u{u}" for u in user],
        "item_id": rng.integers(0, items, n).astype(str),
        "timestamp": start_ts + np.arange(n, dtype=np.int64),  # strictly increasing: every event is new
    })


class _FeastPathStateMixin:
    """The consumer's state through the plain Feast API, as before issue 23 (the baseline of the ratio)."""

    def sequences(self, user_ids):
        from feature_gen.streaming.recent_items import RecentSequence

        got = self.store.recent_items(user_ids)
        return {u: RecentSequence(list(i), t.tolist()) for u, i, t in zip(got.user_ids, got.item_ids, got.item_ts)}

    def write_users(self, sequences, user_ids, emb):
        if sequences:
            self.store.push_recent_items(pd.DataFrame({
                "user_id": list(sequences), "recent_item_ids": [s.item_ids for s in sequences.values()],
                "recent_item_ts": [np.asarray(s.timestamps, dtype=np.int64) for s in sequences.values()],
                "last_event_ts": [s.last_event_ts for s in sequences.values()]}))
        if emb is not None and len(user_ids):
            self.store.push_user_embeddings(pd.DataFrame({
                "user_id": user_ids, "embedding": list(emb.vectors), "seq_len": emb.seq_len,
                "last_event_ts": emb.last_event_ts, "bundle_version": self.version}), only_newer_events=True)
        return len(user_ids)


class _FeastReads:
    def __init__(self, store):
        self.item_embeddings = store.item_embeddings


def _feast_path_state(store, version, ttl_ms):
    from feature_gen.streaming.online_state import OnlineState

    state = type("FeastPathState", (_FeastPathStateMixin, OnlineState), {})(store, version, ttl_ms)
    state.io = _FeastReads(store)  # item reads through get_online_features too
    return state


def _wait(predicate, timeout_s: float, what: str) -> None:
    wait_until(predicate, timeout_s, what, who="stream_bench", poll_s=0.01)


def _bench_model(name: str, events: int, users: int, rate: float, seconds: float, runtime: str,
                 batch_ms: int = 100, online_store: str = "sqlite", path: str = "online_io") -> dict:
    import torch

    from feature_gen.config import HLLMConfig
    from feature_gen.store.feature_store import open_store
    from hllm.local_broker import LocalBroker
    from feature_gen.streaming.clients import create_topics, make_producer
    from feature_gen.inference.encoders import load_encoders
    from feature_gen.streaming.online_state import OnlineState
    from feature_gen.streaming.produce import send_paced, user_messages
    from feature_gen.streaming.refresh import build_user_loop

    _, _, threads, num_items, batch = MODELS[name]
    torch.set_num_threads(threads)
    bundle = _bundle(name)
    if runtime == "onnx":
        from export import export_bundle
        from feature_gen.model.bundle import read_manifest

        if read_manifest(bundle).get("onnx", {}).get("precision") != "fp32":
            export_bundle(bundle)
    work = ROOT / f"{name}-{runtime}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    encoders = load_encoders(bundle, runtime, threads=threads)
    store_fields = {"repo_path": str(work / "repo"), "offline_root": str(work / "offline"), "online_store": online_store}
    redis_proc = None
    if online_store == "redis":
        from tests.redis_fixture import start_redis

        redis_proc, store_fields["redis_connection"] = start_redis(work)
    load_start = os.getloadavg()[0]

    with LocalBroker.start(log_path=work / "tansu.log") as broker:
        cfg = HLLMConfig.model_validate({
            "store": store_fields,
            "stream": {"bundle_path": str(bundle), "bootstrap_servers": broker.bootstrap, "runtime": runtime,
                       "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_batch_events": batch,
                       "max_batch_ms": batch_ms, "torch_threads": threads},
        })
        s = cfg.stream
        create_topics(s, {s.user_events_topic: 4, s.dead_letter_topic: 1})
        store = open_store(cfg.store)
        state = OnlineState(store, encoders.version)
        history = max(s.max_recent_items, encoders.max_seq_len)
        item_seconds = seed_online_state(state, encoders, num_items, users, history)

        # 1. sustained: a backlog drained as fast as the consumer goes
        backlog = _events(users, num_items, events, seed=0, start_ts=BACKLOG_START_TS)
        send_paced(make_producer(s), s.user_events_topic, user_messages(backlog))
        loop = build_user_loop(cfg, threading.Event(), encoders, store)
        if path == "feast":
            loop.processor.state = _feast_path_state(store, encoders.version, s.item_cache_ttl_ms)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        m = loop.metrics
        try:
            _wait(lambda: m.value("hllm_stream_batch_events_count") >= 1, 120, "the first batch")
            first_batch = m.value("hllm_stream_batch_events_sum")
            stage0 = {st: m.value("hllm_stream_stage_seconds_total", {"stage": st}) for st in STAGES}
            started = time.perf_counter()
            # batch_events is observed after a batch's commit: the backlog's last batch is then done
            _wait(lambda: m.value("hllm_stream_batch_events_sum") >= events, 1800, "the backlog to drain")
            drained = time.perf_counter() - started
            stages = {st: m.value("hllm_stream_stage_seconds_total", {"stage": st}) - stage0[st] for st in STAGES}
            load_sustained = os.getloadavg()[0]
            batches = m.value("hllm_stream_batch_events_count")
            users_per_batch = m.value("hllm_stream_batch_entities_sum") / max(1, m.value("hllm_stream_batch_entities_count"))

            # 2. freshness at a fixed rate, produced by `hllm produce-events` in its own process
            sustained = (events - first_batch) / drained
            if sustained < 1.25 * rate:  # at capacity there is only backlog to measure: pace at half of it
                rate = max(1.0, round(sustained / 2))
            n_paced = int(rate * seconds)
            paced = _events(users, num_items, n_paced, seed=1, start_ts=PACED_START_TS)
            log_path = work / "paced.parquet"
            paced.to_parquet(log_path)
            config_path = work / "stream.yaml"
            import yaml

            config_path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            m.freshness_samples = []
            batch_count0, batch_sum0 = m.value("hllm_stream_batch_events_count"), m.value("hllm_stream_batch_events_sum")
            batch_s0 = m.value("hllm_stream_batch_seconds_sum")
            produced = subprocess.run(
                [sys.executable, "-m", "hllm.cli", "produce-events", "--config", str(config_path),
                 "--input", str(log_path), "--rate", str(rate)],
                capture_output=True, text=True, check=True)
            _wait(lambda: m.value("hllm_stream_batch_events_sum") >= events + n_paced, 600, "the paced events")
            fresh = np.array(m.freshness_samples)
            np.save(work / "freshness.npy", fresh)
            paced_batches = m.value("hllm_stream_batch_events_count") - batch_count0
            paced_batch_events = (m.value("hllm_stream_batch_events_sum") - batch_sum0) / max(1, paced_batches)
            paced_batch_ms = (m.value("hllm_stream_batch_seconds_sum") - batch_s0) / max(1, paced_batches) * 1000
        finally:
            loop.stop.set()
            thread.join(timeout=60)
        # every paced user's embedding is readable and reflects a paced event
        last_users = sorted(set(paced["user_id"].tolist()))
        readable = store.user_embeddings(last_users)
        stale = int((readable.last_event_ts < PACED_START_TS).sum())
    if redis_proc is not None:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    drained_events = events - first_batch

    return {
        "model": name,
        "runtime": runtime,
        "online_store": online_store,
        "path": path,
        "stage_share": {st: round(v / drained, 3) for st, v in stages.items()},
        "model_only_events_per_s": round(drained_events / stages["model"], 1) if stages["model"] else None,
        "load_avg_1m_start": round(load_start, 2),
        "load_avg_1m_after_sustained": round(load_sustained, 2),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "bundle": bundle.name,
        "user_hidden": encoders.user.backbone.config.hidden_size if hasattr(encoders.user, "backbone") else None,
        "max_seq_len": encoders.max_seq_len,
        "torch_threads": threads,
        "users": users,
        "items": num_items,
        "item_embed_s": round(item_seconds, 2),
        "events": events,
        "max_batch_events": batch,
        "max_batch_ms": batch_ms,
        "batches": int(batches),
        "users_per_batch": round(users_per_batch, 1),
        "drain_s": round(drained, 2),
        "history_len": history,
        "events_per_s": round(sustained, 1),
        "paced_rate": rate,
        "paced_events": n_paced,
        "producer": produced.stdout.strip(),
        "paced_batch_events": round(paced_batch_events, 1),
        "paced_batch_ms": round(paced_batch_ms, 1),
        "paced_users_not_refreshed": stale,
        "freshness_p50_s": round(float(np.percentile(fresh, 50)), 3),
        "freshness_p99_s": round(float(np.percentile(fresh, 99)), 3),
        "freshness_max_s": round(float(fresh.max()), 3),
    }


def run(models: tuple[str, ...] = ("tiny", "demo"), events: int = 20_000, users: int = 2_000, rate: float = 1000.0,
        seconds: float = 20.0, runtime: str = "torch", demo_events: int = 1_000, batch_ms: int = 100,
        stores: tuple[str, ...] = ("sqlite", "redis"), paths: tuple[str, ...] = ("online_io", "feast")) -> dict:
    """Each (model, store, path) in its own process (a clean torch, Kafka client and Feast state per
    measurement); the paths of one model and store run back to back, so their ratio shares the load."""
    import json

    rows = []
    for name in models:
        for online_store in stores:
            for path in paths:
                cmd = [sys.executable, "-m", "benchmarks.stream_bench", "--one", name, "--users", str(users),
                       "--events", str(events if name == "tiny" else demo_events), "--rate", str(rate),
                       "--seconds", str(seconds), "--runtime", runtime, "--batch-ms", str(batch_ms),
                       "--stores", online_store, "--paths", path]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"stream_bench {name} {online_store} {path} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for row in rows:  # the new path's events/s over the Feast path's, same model and store
        base = next((b for b in rows if b["path"] == "feast" and b["model"] == row["model"]
                     and b["online_store"] == row["online_store"]), None)
        row["events_per_s_vs_feast_path"] = round(row["events_per_s"] / base["events_per_s"], 2) if base else None
    return {"command": COMMAND, "rows": rows, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}


def markdown(r: dict) -> str:
    lines = [
        "| model | store | path | events/s (vs Feast path) | store / model / parse share | model-only limit | "
        "paced rate | freshness p50 / p99 / max | batch (users/batch) | load avg 1m start / sustained / end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        sh = x["stage_share"]
        ratio = f" ({x['events_per_s_vs_feast_path']:.2f} x)" if x.get("events_per_s_vs_feast_path") else ""
        lines.append(
            f"| {x['model']} ({x['runtime']}) | {x['online_store']} | {x['path']} | {x['events_per_s']:.0f}{ratio} "
            f"| {(sh['store_read'] + sh['store_write']) * 100:.0f} % / {sh['model'] * 100:.0f} % / {sh['parse'] * 100:.0f} % "
            f"| {x['model_only_events_per_s']:.0f}/s | {x['paced_rate']:.0f}/s "
            f"| {x['freshness_p50_s'] * 1000:.0f} / {x['freshness_p99_s'] * 1000:.0f} / {x['freshness_max_s'] * 1000:.0f} ms "
            f"| {x['max_batch_events']} ({x['users_per_batch']}) "
            f"| {x['load_avg_1m_start']} / {x['load_avg_1m_after_sustained']} / {x['load_avg_1m_end']} |"
        )
    lines.append(f"\n{r['rows'][0]['users']} users x {r['rows'][0]['items']} items, backlog {r['rows'][0]['events']} events, "
                 f"histories of {r['rows'][0]['history_len']}; {r['cpu_count']} cores. Command: `{r['command']}`")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,demo")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one model, JSON on the last line
    parser.add_argument("--events", type=int, default=None, help="backlog events (default 20000 tiny, 1000 demo)")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-ms", type=int, default=100)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--stores", default="sqlite,redis",
                        help="online stores, comma-separated (default sqlite,redis: the goals are read on Redis)")
    parser.add_argument("--paths", default="online_io,feast", help="online_io (the consumer's) and/or feast (baseline)")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if os.environ.get("HLLM_BENCH_DEBUG"):
        logging.getLogger("feature_gen.streaming").setLevel(logging.DEBUG)
    import json

    if args.one:
        row = _bench_model(args.one, args.events, args.users, args.rate, args.seconds, args.runtime, args.batch_ms,
                           args.stores, args.paths)
        print(json.dumps(row))
        return
    kwargs = {} if args.events is None else {"events": args.events, "demo_events": args.events}
    result = run(tuple(args.models.split(",")), users=args.users, rate=args.rate, seconds=args.seconds,
                 runtime=args.runtime, batch_ms=args.batch_ms, stores=tuple(args.stores.split(",")),
                 paths=tuple(args.paths.split(",")), **kwargs)
    print(markdown(result))
    print(json.dumps(result, indent=2))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
