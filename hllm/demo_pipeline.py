"""`make demo` / `hllm demo`: the whole pipeline, end to end, on MovieLens-100K and embedded defaults.

    data        ML-100K; events up to the 80 % time quantile are history, later ones are the future
    train       `hllm train` stage 2 on the history (configs/demo_e2e.yaml) -> frozen bundle
    export      `hllm export`: ONNX item and user encoders into the bundle (parity-checked)
    spark       spark-submit item_embed.py and user_embed.py (history) -> offline Parquet + Feast online
    features    the ranker's feature config pinned to the bundle and validated against store and bundle
    stream      a Tansu broker; a slice of the future replayed through the refresh consumer (ONNX runtime)
    ranker      point-in-time training set over the future; the TF ranker with and without HLLM features;
                SavedModel; request-time scoring from the online store
    evaluate    full-ranking Recall@K / NDCG@K of the bundle against reference scorers
    report      report.md with plots and a sanity table, and a short summary on stdout

Orchestration only: every step calls the package that owns it (trainer, export, spark_jobs,
feature_gen.store.feature_store, feature_gen.streaming, ranker_integration). This module may import all of
them; the core does not import it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from feature_gen.config import HLLMConfig, load_config
from ranker_integration.feature_config import SHIPPED_CONFIG as FEATURE_CONFIG

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "demo_e2e.yaml"
STREAM_EVENTS = 2000  # future events replayed through the refresh consumer
STREAM_RATE = 250.0  # events per second
WELL_KNOWN = ["Star Wars (1977)", "Toy Story (1995)", "Pulp Fiction (1994)", "Fargo (1996)", "Scream (1996)"]


@dataclass
class DemoRun:
    cfg: HLLMConfig
    out: Path
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, what it produced)
    facts: dict = field(default_factory=dict)


@contextmanager
def _step(run: DemoRun, name: str, title: str):
    print(f"\n== {name}: {title}", flush=True)
    started = time.perf_counter()
    note: list[str] = []
    yield note
    seconds = time.perf_counter() - started
    run.steps.append((name, seconds, "; ".join(note)))
    print(f"   ({seconds:.1f} s)", flush=True)


def _run_logged(cmd: list[str], log: Path, desc: str, env: dict | None = None) -> None:
    """A subprocess with its output in `log` (its own progress lines included) and elapsed time meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f, _elapsed_bar(desc):
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        while proc.poll() is None:
            time.sleep(1.0)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{desc} failed (exit {proc.returncode}); log {log}:\n{tail}")


def _demo_config(config_path: str | Path | None, out: Path) -> HLLMConfig:
    """The demo config with every output under `out` (absolute, so subprocesses agree)."""
    cfg = load_config(config_path or DEFAULT_CONFIG)
    raw = cfg.model_dump()
    raw["train"]["output_dir"] = str(out / "train")
    raw["store"].update(repo_path=str(out / "feature_repo"), offline_root=str(out / "features"), sqlite_path=None)
    raw["ranker"]["output_dir"] = str(out / "ranker")
    raw["data"].update(source="files", items_path=str(out / "data" / "items.parquet"),
                       interactions_path=str(out / "data" / "history.parquet"))
    return HLLMConfig.model_validate(raw)


@contextmanager
def _elapsed_bar(desc: str):
    """Elapsed time for a step with no natural progress count: a ticking bar on a terminal, one line
    every HLLM_PROGRESS_SECONDS (30 s) in a log file (feature_gen.logs.Progress)."""
    from feature_gen.logs import Progress

    stop = threading.Event()
    bar = Progress(None, desc.strip(), "s")

    def tick():
        while not stop.wait(1.0):
            bar.update(1)

    try:
        with _while_block_runs(tick, stop):
            yield
    finally:
        bar.close()


@contextmanager
def _while_block_runs(work, stop: threading.Event):
    """Run `work` (a loop that ends when `stop` is set) in a daemon thread for the length of the block."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------------------------- steps


def step_data(run: DemoRun) -> None:
    from feature_gen.data.movielens import LOADERS

    with _step(run, "data", "MovieLens-100K; history = events up to the 80 % time quantile") as note:
        items, interactions = LOADERS["ml-100k"]()
        folder = run.out / "data"
        folder.mkdir(parents=True, exist_ok=True)
        cut = int(np.quantile(interactions["timestamp"].to_numpy(), run.cfg.ranker.history_quantile))
        order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")  # file order breaks ties
        events = interactions.iloc[order].reset_index(drop=True)
        history, future = events[events["timestamp"] <= cut], events[events["timestamp"] > cut]
        items.to_parquet(folder / "items.parquet", index=False)
        history.to_parquet(folder / "history.parquet", index=False)
        future.head(STREAM_EVENTS).to_parquet(folder / "stream.parquet", index=False)
        run.facts.update(items=items, interactions=interactions, cut=cut, history=history, future=future)
        msg = (f"{len(items)} movies, {interactions['user_id'].nunique()} users, {len(interactions)} ratings; "
               f"history {len(history)} events up to {pd.Timestamp(cut, unit='s'):%Y-%m-%d}, future {len(future)}")
        print("   " + msg)
        note.append(msg)


def step_train(run: DemoRun) -> None:
    from trainer.train import run_training

    t = run.cfg.train
    layers = lambda llm: f"[:{llm.keep_layers}]" if llm.keep_layers else ""  # noqa: E731
    frozen = "frozen" if t.stage == 2 else "trained"
    with _step(run, "train", f"HLLM stage {t.stage} ({run.cfg.item_llm.source} Item LLM{layers(run.cfg.item_llm)} {frozen}, "
                             f"User LLM{layers(run.cfg.user_llm)} trained), {t.epochs} epochs") as note:
        shutil.rmtree(t.output_dir, ignore_errors=True)
        # run_training reports its own progress: optimizer steps of the run's total, with an ETA
        result = run_training(run.cfg, resume=False)
        run.facts.update(bundle=Path(result.bundle), train=result)
        note.append(f"bundle {Path(result.bundle).name}; test NDCG@10 {result.test.get('ndcg@10', float('nan')):.4f}")


def step_export(run: DemoRun) -> None:
    from export.bundle_export import export_bundle

    with _step(run, "export", "ONNX item and user encoders (fp32, parity-checked)") as note:
        with _elapsed_bar("   export + parity check"):
            report = export_bundle(run.facts["bundle"], run.cfg.export)
        errors = ", ".join(f"{k} {v:.1e}" for k, v in report.rel_error.items())
        print(f"   worst relative error vs PyTorch: {errors}")
        note.append(f"onnx/ in the bundle; relative error {errors}")


def step_spark(run: DemoRun) -> None:
    with _step(run, "spark", "spark-submit item_embed.py + user_embed.py (local[2]) -> offline Parquet + online") as note:
        config_path = run.out / "demo_config.yaml"
        config_path.write_text(yaml.safe_dump(run.cfg.model_dump(), sort_keys=False))
        venv_bin = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
               "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
        submit = [str(venv_bin / "spark-submit"), "--master", "local[2]", "--driver-memory", "2g"]
        bundle = str(run.facts["bundle"])
        data = run.out / "data"
        _run_logged([*submit, str(REPO / "spark_jobs" / "item_embed.py"), "--bundle", bundle, "--items",
                     str(data / "items.parquet"), "--config", str(config_path), "--materialize"],
                    run.out / "logs" / "spark_item_embed.log", "   spark item_embed.py", env)
        _run_logged([*submit, str(REPO / "spark_jobs" / "user_embed.py"), "--bundle", bundle, "--interactions",
                     str(data / "history.parquet"), "--config", str(config_path), "--materialize"],
                    run.out / "logs" / "spark_user_embed.log", "   spark user_embed.py", env)
        from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, read_version

        version = run.facts["bundle"].name
        n_items = len(read_version(run.cfg.store.offline_root, ITEM_EMBEDDING, version))
        n_users = len(read_version(run.cfg.store.offline_root, USER_EMBEDDING, version))
        msg = f"{n_items} item and {n_users} user embeddings of {version} in {run.cfg.store.offline_root} and online (SQLite)"
        print("   " + msg)
        note.append(msg)


def step_features(run: DemoRun) -> None:
    from feature_gen.model.bundle import read_manifest
    from ranker_integration.feature_config import (dump_feature_config, load_feature_config, pin_to_bundle,
                                                   validate_feature_config)

    with _step(run, "features", "feature config pinned to the bundle, validated against Feast and the manifest") as note:
        pinned = pin_to_bundle(load_feature_config(FEATURE_CONFIG), read_manifest(run.facts["bundle"]))
        path = dump_feature_config(pinned, run.out / "feature_config.yaml")
        report = validate_feature_config(pinned, run.cfg.store, run.facts["bundle"])
        for line in report.checked:
            print("   " + line)
        run.facts["fc"] = pinned
        note.append(f"{path} ({len(report.checked)} features, bundle {report.bundle_version})")


def step_stream(run: DemoRun) -> None:
    from feature_gen.logs import Progress
    from feature_gen.store.feature_store import open_store
    from hllm.local_broker import LocalBroker
    from feature_gen.streaming.clients import create_topics, make_producer
    from feature_gen.inference.encoders import load_encoders
    from feature_gen.streaming.produce import user_messages
    from feature_gen.streaming.refresh import build_user_loop

    events = pd.read_parquet(run.out / "data" / "stream.parquet")
    with _step(run, "stream", f"Tansu broker; {len(events)} future events through the refresh consumer (ONNX)") as note:
        with LocalBroker.start(log_path=run.out / "logs" / "tansu.log") as broker:
            raw = run.cfg.model_dump()
            raw["stream"].update(bootstrap_servers=broker.bootstrap, bundle_path=str(run.facts["bundle"]), runtime="onnx")
            cfg = HLLMConfig.model_validate(raw)
            s = cfg.stream
            create_topics(s, {s.user_events_topic: 2, s.dead_letter_topic: 1})
            store = open_store(cfg.store)
            loop = build_user_loop(cfg, threading.Event(), load_encoders(s.bundle_path, "onnx", threads=1), store)
            loop.metrics.freshness_samples = []
            thread = threading.Thread(target=loop.run, daemon=True)
            thread.start()
            m = loop.metrics
            producer = make_producer(s)
            try:
                started = time.monotonic()
                with Progress(len(events), "replay", "events") as bar:
                    for sent, (key, value) in enumerate(user_messages(events)):
                        ahead = started + sent / STREAM_RATE - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                        producer.send(s.user_events_topic, key=key, value=value)
                        bar.update(1)
                producer.flush()
                deadline = time.monotonic() + 300
                with Progress(len(events), "refreshed", "events") as bar:
                    while m.value("hllm_stream_batch_events_sum") < len(events):
                        if time.monotonic() > deadline:
                            raise TimeoutError("stream: the refresh consumer did not drain the replay within 300 s")
                        bar.update(int(m.value("hllm_stream_batch_events_sum")) - bar.done)
                        time.sleep(0.5)
                    bar.update(len(events) - bar.done)
            finally:
                loop.stop.set()
                thread.join(timeout=60)
                producer.close(timeout=10)  # before the broker stops: an open client logs ERRORs as it goes
            fresh = np.asarray(m.freshness_samples, dtype=np.float64)
            users = events["user_id"].astype(str).unique().tolist()
            rows = store.user_embeddings(users)
            newest = events.groupby(events["user_id"].astype(str))["timestamp"].max()
            caught_up = int(sum(rows.last_event_ts[i] == newest[u] for i, u in enumerate(users)))
            dead = m.value("hllm_stream_events_total", {"consumer": "user_refresh", "outcome": "dead_letter"})
        np.save(run.out / "freshness_seconds.npy", fresh)
        run.facts.update(freshness=fresh, stream_users=users)
        msg = (f"{len(events)} events at {STREAM_RATE:.0f}/s, {len(users)} users refreshed online "
               f"({caught_up} reflect their newest replayed event), {int(dead)} dead-lettered; freshness "
               f"p50 {np.percentile(fresh, 50):.2f} s, p99 {np.percentile(fresh, 99):.2f} s")
        print("   " + msg)
        note.append(msg)


def step_ranker(run: DemoRun) -> None:
    from feature_gen.store.feature_store import open_store
    from ranker_integration.click_head import click_head_for
    from ranker_integration.ranker import export_ranker, load_ranker, train_ranker
    from ranker_integration.serving import RequestScorer
    from ranker_integration.training_set import build_training_set, make_labels
    from spark_jobs.user_snapshots import backfill_user_snapshots, snapshot_cutoffs

    rcfg, version = run.cfg.ranker, run.facts["bundle"].name
    with _step(run, "ranker", f"TF ranker ({rcfg.model}) with and without HLLM features, time split") as note:
        labels = make_labels(run.facts["items"], run.facts["interactions"], rcfg, seed=run.cfg.seed)
        cut, end = run.facts["cut"], int(labels["timestamp"].max())
        cutoffs = snapshot_cutoffs(cut, end, rcfg.snapshot_interval_s)  # the Spark job's snapshot covers `cut`
        added = backfill_user_snapshots(run.facts["bundle"], run.facts["interactions"], cutoffs, run.cfg.store, progress=True)
        head = click_head_for(run.facts["fc"], run.facts["bundle"])  # None unless the contract has click_score
        ts = build_training_set(labels, run.cfg.store, version, run.facts["fc"], click_head=head)
        train, test = ts.split("train"), ts.split("test")
        print(f"   {len(train.frame)} training rows, {len(test.frame)} test rows ({rcfg.labels}, "
              f"{rcfg.negatives_per_positive} negatives per positive); {added} snapshot rows backfilled")
        fc = run.facts["fc"]
        # the scalar HLLM features alone (cosine, sequence length, freshness): tells a ranker team what
        # the embedding vectors add on top of them (benchmarks/results/ranker_inputs.json)
        scalars = fc.scalars_only()
        results = {}
        for name, variant, use_hllm in (("IDs + context only", fc, False), ("+ HLLM scalars, no vectors", scalars, True),
                                        ("with HLLM features", fc, True)):
            r = train_ranker(train, test, variant, rcfg, use_hllm=use_hllm, seed=run.cfg.seed, verbose=2)
            results[name] = r
            print(f"   {name}: AUC {r.auc:.4f}  GAUC {r.gauc:.4f} (train {r.train_seconds:.1f} s)")
        best = results["with HLLM features"]
        saved = export_ranker(best, Path(rcfg.output_dir) / "saved_model")
        scorer = RequestScorer(load_ranker(saved), open_store(run.cfg.store), run.facts["fc"], click_head=head)
        rng = np.random.default_rng(0)
        catalogue = run.facts["items"]["item_id"].astype(str).to_numpy()
        users = run.facts["stream_users"]
        latencies, reads = [], []
        now = int(run.facts["future"]["timestamp"].iloc[min(STREAM_EVENTS, len(run.facts["future"]) - 1)])
        for i in range(60):
            started = time.perf_counter()
            scored = scorer.score(users[i % len(users)], rng.choice(catalogue, 100, replace=False), now_ts=now)
            latencies.append((time.perf_counter() - started) * 1e3)
            reads.append(scored.read_ms)
        lat = np.asarray(latencies[10:])  # after warm-up
        run.facts.update(ranker=results, saved_model=saved, ranker_rows=(len(train.frame), len(test.frame)),
                         request_ms=(float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                                     float(np.median(reads[10:]))))
        (Path(rcfg.output_dir) / "metrics.json").write_text(json.dumps({k: v.summary() for k, v in results.items()}, indent=2))
        note.append(f"SavedModel {saved}; request of 100 candidates p50 {np.percentile(lat, 50):.1f} ms")


def rank_scorers(user_vectors, table, split, num_users: int, num_items: int, cfg: HLLMConfig,
                 content_table=None) -> pd.DataFrame:
    """Test-split metrics (rows: scorers) of the model's user vectors [U, D] against the item table
    [N+1, D] beside the reference scorers, every one through the one evaluation protocol: the model
    in the space it is trained on (cosine, the trainer's model selection), reference scorers in the
    one their vectors are built for. `content_table` [N+1, D]: the frozen Item LLM's vectors for the
    content kNN row when they differ from `table` (an Item LLM with a trained adapter); default `table`."""
    content = table if content_table is None else content_table
    from feature_gen.evaluation import reference_scorers
    from feature_gen.evaluation.protocol import evaluate_vectors

    scorers = {
        "HLLM (trained User LLM)": (user_vectors, table, "cosine"),
        "content kNN (frozen Item LLM)": (reference_scorers.content_user_vectors(content, split.test.histories), content, "cosine"),
        "popularity": (*reference_scorers.popularity_vectors(split.train, num_users, num_items), "dot"),
        "random": (*reference_scorers.random_vectors(num_users, num_items), "dot"),
    }
    return pd.DataFrame({name: evaluate_vectors(u, i, split.test, cfg, sim).values
                         for name, (u, i, sim) in scorers.items()}).T


def step_evaluate(run: DemoRun) -> None:
    import torch

    from feature_gen.data.sequences import leave_one_out, load_interaction_data
    from feature_gen.inference.encoders import load_encoders
    from feature_gen.inference.item_table import ItemTable
    from feature_gen.store.offline_store import ITEM_EMBEDDING, read_version

    with _step(run, "evaluate", "full ranking over the catalogue (leave-one-out on the history)") as note:
        raw = run.cfg.model_dump()
        raw["eval"]["ks"] = [1, 5, 10, 20, 50, 100, 200]
        cfg = HLLMConfig.model_validate(raw)
        data = load_interaction_data(cfg.data, cfg.item_text)
        split = leave_one_out(data)
        items = read_version(cfg.store.offline_root, ITEM_EMBEDDING, run.facts["bundle"].name)
        stored = ItemTable.of(items["item_id"], list(items["embedding"]))
        table = stored.vectors[torch.from_numpy(np.concatenate([[0], stored.rows(data.items["item_id"])]))]
        encoders = load_encoders(run.facts["bundle"], "torch")
        with _elapsed_bar("   user embeddings (test histories)"):
            users = encoders.embed_users(table, split.test.histories, split.test.history_timestamps)
        content = None
        if getattr(encoders.item, "adapter", None) is not None:
            # the stored item vectors include the trained adapter; content kNN is the frozen part alone
            from feature_gen.inference.encoders import embed_catalogue
            from feature_gen.model.item_llm import ItemFeatures

            with _elapsed_bar("   content vectors (Item LLM without its adapter)"):
                content = embed_catalogue(ItemFeatures(encoders.item), encoders.tokenizer, data.items, cfg.item_text,
                                          padding_side=cfg.item_llm.padding_side)
        with _elapsed_bar("   ranking the catalogue"):
            frame = rank_scorers(torch.from_numpy(users.vectors), table, split, data.num_users, data.num_items, cfg,
                                 content_table=content)
        run.facts.update(recall=frame, ks=cfg.eval.ks, eval_users=data.num_users, item_table=table, catalogue=data.items)
        print(frame[[c for c in frame.columns if c.endswith(("@10", "@50", "@200"))]].to_string(float_format=lambda v: f"{v:.4f}"))
        note.append(f"HLLM recall@10 {frame.loc['HLLM (trained User LLM)', 'recall@10']:.4f}, "
                    f"popularity {frame.loc['popularity', 'recall@10']:.4f}")


def step_report(run: DemoRun, started: float) -> Path:
    from hllm.demo_report import sanity_tables, write_report

    with _step(run, "report", "plots, sanity table, report.md") as note:
        sanity = sanity_tables(run, WELL_KNOWN)
        path = write_report(run, sanity, time.perf_counter() - started)
        note.append(str(path))
    return path


STATE = "demo_state.pkl"  # the finished steps and what they produced, for `hllm demo` to resume after


def _save_state(run: DemoRun, done: list[str]) -> bool:
    """Record the finished steps (atomically); False when a step's results cannot be saved, after which
    a rerun resumes from the last step that could."""
    import pickle

    try:
        blob = pickle.dumps({"config": run.cfg.model_dump(), "done": done, "steps": run.steps, "facts": run.facts})
    except Exception as exc:  # a fact that holds a live object (a session, a model): no resume past here
        print(f"   (cannot record this step for resuming: {type(exc).__name__}: {exc})", flush=True)
        return False
    tmp = run.out / (STATE + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(run.out / STATE)
    return True


def _load_state(run: DemoRun) -> list[str]:
    """The steps an earlier run with the same config finished (their facts restored into `run`)."""
    import pickle

    path = run.out / STATE
    if not path.is_file():
        return []
    try:  # our own file, written by _save_state above in this output folder
        state = pickle.loads(path.read_bytes())
    except Exception:
        return []
    if state.get("config") != run.cfg.model_dump():
        print(f"   ({path} is from another config: starting over)", flush=True)
        return []
    run.steps[:] = state["steps"]
    run.facts.update(state["facts"])
    return list(state["done"])


def run_demo_pipeline(output_dir: str = "outputs/demo", config_path: str | None = None, restart: bool = False,
                      stop_after: str | None = None) -> int:
    """Run the demo's steps in order. An interrupted demo resumes after its last finished step (same
    output folder and config); `restart` starts over. `stop_after`: end after that step (tests)."""
    started = time.perf_counter()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is not news
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    run = DemoRun(cfg=_demo_config(config_path, out), out=out)
    if restart:
        (out / STATE).unlink(missing_ok=True)
    done = _load_state(run)
    if done:
        print(f"resuming {out} after step '{done[-1]}' (finished: {', '.join(done)}); `hllm demo --restart` starts over",
              flush=True)
    saving = True
    for step in (step_data, step_train, step_export, step_spark, step_features, step_stream, step_ranker, step_evaluate):
        name = step.__name__.removeprefix("step_")
        if name in done:
            if name == stop_after:
                return 0
            continue
        step(run)
        done.append(name)
        saving = saving and _save_state(run, done)
        if name == stop_after:
            return 0
    report = step_report(run, started)
    from hllm.demo_report import print_summary

    print_summary(run, report, time.perf_counter() - started)
    return 0
