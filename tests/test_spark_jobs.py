"""The Spark jobs through the real `spark-submit` (local[2]) on a small catalogue with the tiny bundle.

One module-scoped run of item_embed.py and user_embed.py (both with --materialize into SQLite) serves
most assertions; a re-run checks idempotence; `hllm materialize` publishes the same version into Redis.
Expected values come from feature_gen.inference.encoders run in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from feature_gen.model.bundle import load_bundle, read_manifest
from feature_gen.config import StoreConfig
from feature_gen.store.feature_store import open_store
from feature_gen.inference.encoders import embed_texts, embed_users
from feature_gen.inference.item_table import padded_item_table
from feature_gen.store.schema import EVENT_TIMESTAMP, offline_event_timestamps
from feature_gen.model.item_text import item_text_or_reject
from feature_gen.store.offline_store import (
    ITEM_EMBEDDING,
    ITEM_REJECTS,
    USER_EMBEDDING,
    USER_RECENT_ITEMS,
    USER_REJECTS,
    list_versions,
    read_version,
)
from ranker_integration.serving import read_online_features

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
N_ITEMS, N_USERS, N_EVENTS = 30, 8, 160


def _catalogue() -> pd.DataFrame:
    items = pd.DataFrame({
        # integer ids with a null, as MovieLens-like tables arrive (pandas' nullable Int64 -> Parquet int64)
        "item_id": pd.array(range(N_ITEMS), dtype="Int64"),
        "title": [f"Film {k} " + "word " * (k % 9) for k in range(N_ITEMS)],  # varied lengths for bucketing
        "tags": ["drama|comedy" if k % 2 else "action" for k in range(N_ITEMS)],
        "description": [None if k % 3 else f"about {k}" for k in range(N_ITEMS)],
    })
    items.loc[2, "item_id"] = None                       # null_id
    items.loc[4, ["title", "tags", "description"]] = None  # no_text
    items.loc[6, "title"] = "z" * 100_001                # oversize_text (bundle max_text_chars 100000)
    items.loc[8, "item_id"] = 7                          # duplicate_id (item 7 comes first)
    return items


def _interactions() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    events = pd.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, N_USERS, N_EVENTS)],
        "item_id": rng.integers(0, N_ITEMS, N_EVENTS).astype("int64"),
        # a narrow range: many timestamp ties, so the file-order tie-break matters
        "timestamp": rng.integers(1_700_000_000, 1_700_000_040, N_EVENTS).astype("int64"),
    })
    events.loc[0, "user_id"] = None       # null_user_id
    events.loc[1, "item_id"] = 999        # unknown_item (never in the catalogue)
    return events


def _env() -> dict:
    env = dict(os.environ)
    # spark-submit from the virtualenv needs its bin first on PATH (STACK.md); workers use this python.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def _submit(script: str, *args: str, spark_args: tuple = ()) -> str:
    cmd = [str(VENV_BIN / "spark-submit"), "--master", "local[2]", *spark_args, str(REPO / "spark_jobs" / script), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1500, cwd=REPO)  # a loaded shared machine
    assert out.returncode == 0, f"{script} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out.stdout + out.stderr  # stderr: the progress lines (logging)


@pytest.fixture(scope="module")
def spark_bundle(tmp_path_factory):
    """A tiny random bundle like conftest's, with its own generous token budget: the byte-level tiny
    tokenizer spends ~49 tokens on the prompt, and a budget the prompt fills would give every item the
    same embedding and make the equality checks vacuous (test_item_embeddings_... checks they differ)."""
    from feature_gen.model.bundle import save_bundle
    from feature_gen.model.hllm import build_hllm
    from tests.conftest import tiny_config

    cfg = tiny_config(user_llm={"use_timestamps": True}, data={"max_seq_len": 20}, item_text={"max_item_tokens": 128})
    model, tok = build_hllm(cfg)
    torch.manual_seed(7)
    with torch.no_grad():
        model.item_llm.item_token.normal_()
        model.user_llm.time_embedding.weight.normal_(std=0.1)
    return save_bundle(model.eval(), tok, cfg, tmp_path_factory.mktemp("spark-bundle"), data_fingerprint="tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory, spark_bundle):
    root = tmp_path_factory.mktemp("spark")
    items, events = _catalogue(), _interactions()
    items.to_parquet(root / "items.parquet", index=False)
    events.to_parquet(root / "events.parquet", index=False)
    store = {"repo_path": str(root / "repo"), "offline_root": str(root / "offline"), "online_store": "sqlite"}
    (root / "sqlite.yaml").write_text(yaml.safe_dump({"store": store}))
    common = ["--bundle", str(spark_bundle), "--config", str(root / "sqlite.yaml"), "--partitions", "4", "--batch-size", "8"]
    item_out = _submit("item_embed.py", "--items", str(root / "items.parquet"), "--materialize", *common)
    user_out = _submit("user_embed.py", "--interactions", str(root / "events.parquet"), "--materialize", *common)
    return {
        "root": root, "items": items, "events": events, "store": StoreConfig(**store), "common": common,
        "item_out": item_out, "user_out": user_out, "version": read_manifest(spark_bundle)["version"],
    }


@pytest.fixture(scope="module")
def bundle(spark_bundle):
    return load_bundle(spark_bundle)


def _expected_items(bundle, items: pd.DataFrame) -> dict:
    """item_id -> embedding computed in this process for the rows the job should accept."""
    accepted, seen = {}, set()
    for row in items.to_dict("records"):
        row["item_id"] = None if pd.isna(row["item_id"]) else str(row["item_id"])  # the store's id type
        result = item_text_or_reject(row, bundle.cfg.item_text)
        if result.reject_reason or row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        accepted[row["item_id"]] = result.text
    vectors = embed_texts(bundle.model.item_llm, bundle.tokenizer, list(accepted.values()),
                          bundle.cfg.item_text.max_item_tokens, batch_size=64)
    return dict(zip(accepted, vectors))


def test_item_embeddings_equal_the_library_in_process(run, bundle):
    got = read_version(run["root"] / "offline", ITEM_EMBEDDING, run["version"])
    expected = _expected_items(bundle, run["items"])
    assert sorted(got.item_id) == sorted(expected)
    assert set(got.bundle_version) == {run["version"]}
    for item_id, vector in zip(got.item_id, got.embedding):
        np.testing.assert_allclose(np.asarray(vector), expected[item_id], atol=1e-4, rtol=1e-4)
    assert len(got) == N_ITEMS - 4
    # Items get distinct embeddings (their text reaches the model), so a mix-up of ids would show.
    vectors = np.stack(got.embedding.to_numpy())
    assert len(np.unique(vectors.round(5), axis=0)) == len(vectors)


def test_item_rejects_hold_the_bad_rows_with_reasons(run):
    rejects = read_version(run["root"] / "offline", ITEM_REJECTS, run["version"])
    by_reason = {r: g for r, g in rejects.groupby("reason")}
    assert sorted(by_reason) == ["duplicate_id", "no_text", "null_id", "oversize_text"]
    assert by_reason["null_id"].item_id.isna().all()
    assert json.loads(by_reason["null_id"].row_json.iloc[0])["title"].startswith("Film 2")
    assert by_reason["no_text"].item_id.tolist() == ["4"]
    assert by_reason["oversize_text"].item_id.tolist() == ["6"]
    assert len(json.loads(by_reason["oversize_text"].row_json.iloc[0])["title"]) == 100_001
    assert by_reason["duplicate_id"].item_id.tolist() == ["7"]
    assert "Film 8" in by_reason["duplicate_id"].row_json.iloc[0]
    assert re.search(r"26 items embedded, 4 rejected \{'duplicate_id': 1, 'no_text': 1, 'null_id': 1, 'oversize_text': 1\}",
                     run["item_out"]), run["item_out"]


def test_the_model_is_loaded_once_per_python_worker(run):
    # 4 inference tasks on local[2]: reuse means at most one load per worker (2), not one per task.
    loads = int(re.search(r"model loads (\d+)", run["item_out"]).group(1))
    assert loads in (1, 2), run["item_out"]


def _expected_users(bundle, events: pd.DataFrame, item_vectors: dict):
    max_seq_len = bundle.cfg.data.max_seq_len
    events = events.assign(item_id=events.item_id.astype(str))  # ids are strings in the store
    ok = events[events.user_id.notna() & events.item_id.isin(list(item_vectors))].copy()
    ok["order"] = ok.index
    ok = ok.drop_duplicates(["user_id", "item_id", "timestamp"])  # a repeat counts once (the stream's rule)
    ok = ok.sort_values(["timestamp", "order"], kind="stable")
    ids = list(item_vectors)
    table = padded_item_table([item_vectors[i] for i in ids])
    index = {item: k + 1 for k, item in enumerate(ids)}
    users, hist, ts = [], [], []
    for user, g in ok.groupby("user_id", sort=True):
        users.append(user)
        hist.append(np.array([index[i] for i in g.item_id], dtype=np.int64))
        ts.append(g.timestamp.to_numpy())
    result = embed_users(bundle.model.user_llm, table, hist, ts, max_seq_len)
    return users, result, ok


def test_user_embeddings_equal_the_library_in_process(run, bundle):
    offline = run["root"] / "offline"
    items = read_version(offline, ITEM_EMBEDDING, run["version"])
    item_vectors = {i: np.asarray(v, dtype=np.float32) for i, v in zip(items.item_id, items.embedding)}
    users, expected, _ = _expected_users(bundle, run["events"], item_vectors)
    got = read_version(offline, USER_EMBEDDING, run["version"]).set_index("user_id").loc[users]
    assert set(got.bundle_version) == {run["version"]}
    np.testing.assert_allclose(np.stack(got.embedding.to_numpy()), expected.vectors, atol=1e-4, rtol=1e-4)
    assert got.seq_len.tolist() == expected.seq_len.tolist()
    assert got.last_event_ts.tolist() == expected.last_event_ts.tolist()
    assert max(got.seq_len) == bundle.cfg.data.max_seq_len  # some users are longer than the window


def test_recent_items_and_interaction_rejects(run, bundle):
    offline = run["root"] / "offline"
    items = read_version(offline, ITEM_EMBEDDING, run["version"])
    _, _, ok = _expected_users(bundle, run["events"], dict.fromkeys(items.item_id, np.zeros(64, np.float32)))
    recent = read_version(offline, USER_RECENT_ITEMS, run["version"]).set_index("user_id")
    for user, g in ok.groupby("user_id"):
        assert list(recent.loc[user, "recent_item_ids"]) == g.item_id.tolist()[-50:]
        assert list(recent.loc[user, "recent_item_ts"]) == g.timestamp.tolist()[-50:]
    rejects = read_version(offline, USER_REJECTS, run["version"])
    reasons = rejects.groupby("reason").size().to_dict()
    events = run["events"]
    n_unknown = int((events.user_id.notna() & ~events.item_id.astype(str).isin(set(items.item_id))).sum())
    assert reasons == {"null_user_id": 1, "unknown_item": n_unknown}
    assert "999" in set(rejects.item_id)


def test_spark_and_pandas_apply_one_event_time_rule(run):
    # The jobs stamp event_timestamp in Spark; the store's offline writes stamp it in pandas: one rule.
    offline = run["root"] / "offline"
    for table in (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS):
        frame = read_version(offline, table, run["version"])
        got = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)
        expected = offline_event_timestamps(frame.drop(columns=[EVENT_TIMESTAMP]))
        assert (got == expected).all(), table
    users = read_version(offline, USER_EMBEDDING, run["version"])
    assert (users[EVENT_TIMESTAMP] > pd.Timestamp(0, tz="UTC")).all()  # users: not the epoch, their last event


def test_sqlite_online_store_serves_the_new_version(run):
    store = open_store(run["store"])
    users = read_version(run["root"] / "offline", USER_EMBEDDING, run["version"])
    user = users.user_id.iloc[0]
    rows = read_online_features(store, user, [0, 1, 7], run["version"], len(users.embedding.iloc[0]), now_ts=0)
    assert rows.user_found.all() and rows.item_found.all()
    np.testing.assert_allclose(rows.user_vectors[0], users.embedding.iloc[0], rtol=1e-6)
    assert store.recent_items([user]).found.all()
    assert f"materialized {N_ITEMS - 4} item embeddings of {run['version']} into the sqlite online store (from the executors)" in run["item_out"]


def test_redis_online_store_via_hllm_materialize_and_version_mismatch_refused(run, redis_server):
    # A feature repo has one online store: Redis gets its own repo (opening never rewrites a repo).
    cfg = {**run["store"].model_dump(), "online_store": "redis", "redis_connection": redis_server,
           "repo_path": str(run["root"] / "repo-redis")}
    config_path = run["root"] / "redis.yaml"
    config_path.write_text(yaml.safe_dump({"store": cfg}))
    out = subprocess.run([str(VENV_BIN / "hllm"), "materialize", "--config", str(config_path), "--version", run["version"]],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"item_embedding     {N_ITEMS - 4} rows" in out.stdout
    store = open_store(StoreConfig(**cfg))
    assert store.feast.config.online_store.type == "redis"
    user = read_version(run["root"] / "offline", USER_EMBEDDING, run["version"]).user_id.iloc[0]
    dim = store.item_embeddings([0]).vectors.shape[1]
    rows = read_online_features(store, user, [0, 1], run["version"], dim, now_ts=0)
    assert rows.user_found.all() and rows.item_found.all()
    # an item re-embedded by another bundle version: missing for this version's request, never mixed in
    other = store.item_embeddings([1])
    store.push_item_embeddings(pd.DataFrame({"item_id": [1], "embedding": [other.vectors[0]], "bundle_version": ["hllm-other"]}))
    rows = read_online_features(store, user, [0, 1], run["version"], dim, now_ts=0)
    assert rows.item_found.tolist() == [True, False] and np.isnan(rows.item_vectors[1]).all()


def test_rerun_for_the_same_version_replaces_it_whole(run):
    offline = run["root"] / "offline"
    before = read_version(offline, ITEM_EMBEDDING, run["version"]).sort_values("item_id").reset_index(drop=True)
    files_before = sorted(p.name for p in (offline / ITEM_EMBEDDING / f"bundle_version={run['version']}").iterdir())
    _submit("item_embed.py", "--items", str(run["root"] / "items.parquet"), *run["common"])
    after = read_version(offline, ITEM_EMBEDDING, run["version"]).sort_values("item_id").reset_index(drop=True)
    assert list_versions(offline, ITEM_EMBEDDING) == [run["version"]]
    assert after.item_id.tolist() == before.item_id.tolist()  # no duplicated rows from two runs
    np.testing.assert_allclose(np.stack(after.embedding), np.stack(before.embedding), atol=1e-6)
    files_after = sorted(p.name for p in (offline / ITEM_EMBEDDING / f"bundle_version={run['version']}").iterdir())
    assert files_before and files_after != files_before  # a new run's files (Spark names parts by job id)
    leftovers = [p.name for p in (offline / ITEM_EMBEDDING).iterdir() if not p.name.startswith("bundle_version=")]
    assert leftovers == []


def test_item_job_refuses_a_bundle_whose_prompt_fills_the_token_budget(tmp_path, capsys):
    """Checked on the driver before Spark starts: otherwise every item would get the same embedding."""
    from feature_gen.model.bundle import save_bundle
    from feature_gen.model.hllm import build_hllm
    from spark_jobs.item_embed import main
    from tests.conftest import tiny_config

    model, tok = build_hllm(tiny_config(item_text={"max_item_tokens": 48}))
    bundle = save_bundle(model.eval(), tok, tiny_config(item_text={"max_item_tokens": 48}), tmp_path / "b")
    _catalogue().to_parquet(tmp_path / "items.parquet", index=False)
    code = main(["--bundle", str(bundle), "--items", str(tmp_path / "items.parquet"), "--output", str(tmp_path / "off")])
    assert code == 2
    assert "item_text.max_item_tokens: 48 leaves no room" in capsys.readouterr().err
    assert not (tmp_path / "off").exists()


USER_CONF = {"spark.ui.enabled": "true", "spark.sql.shuffle.partitions": "7", "spark.sql.session.timeZone": "America/New_York"}


@pytest.fixture(scope="module")
def uri_run(tmp_path_factory, spark_bundle):
    """item_embed.py as on a cluster: bundle, input and offline root as URIs (file://, Hadoop's local file
    system), the bundle shipped to the executors by Spark (SparkContext.addFile: the path hdfs:// and
    s3a:// bundles take), the user's --conf, and distributed materialization into its own repo."""
    root = tmp_path_factory.mktemp("uri")
    _catalogue().to_parquet(root / "items.parquet", index=False)
    spark_args = tuple(a for k, v in USER_CONF.items() for a in ("--conf", f"{k}={v}"))
    out = _submit(
        "item_embed.py", "--bundle", Path(spark_bundle).as_uri(), "--ship-bundle",
        "--items", (root / "items.parquet").as_uri(), "--output", (root / "offline").as_uri(),
        "--set", f"store.repo_path={root / 'repo'}", "--partitions", "3", "--batch-size", "8", "--materialize",
        spark_args=spark_args,
    )
    return {"root": root, "out": out, "store": StoreConfig(repo_path=str(root / "repo"), offline_root=str(root / "offline")),
            "version": read_manifest(spark_bundle)["version"]}


def test_user_spark_conf_wins_over_the_job_defaults(uri_run):
    """The effective values, read back from the running session, are the user's --conf (the issue saw
    false, 4 and UTC); keys the user left alone keep the job's defaults."""
    line = next(l for l in uri_run["out"].splitlines() if "spark settings:" in l)
    for key, value in USER_CONF.items():
        assert f"{key}={value} (user)" in line, line
    assert "spark.python.worker.reuse=true," in line and "spark.executorEnv.HF_HUB_OFFLINE=1," in line


def test_bundle_input_and_output_given_as_file_uris(uri_run, bundle):
    version = uri_run["version"]
    got = read_version(uri_run["root"] / "offline", ITEM_EMBEDDING, version).sort_values("item_id")
    want = _expected_items(bundle, _catalogue())
    assert sorted(got.item_id) == sorted(want)
    for item_id, vector in zip(got.item_id, got.embedding):
        np.testing.assert_allclose(np.asarray(vector), want[item_id], atol=1e-4, rtol=1e-4)
    assert re.search(r"model loads [12] ", uri_run["out"]), uri_run["out"]  # shipped copy, loaded once per worker
    # executors wrote the version into the online store of the URI run's own repo
    store = open_store(uri_run["store"], apply=False)
    online = store.item_embeddings(sorted(want))
    assert online.found.all() and set(online.bundle_versions) == {version}


def test_a_bundle_uri_that_does_not_exist_is_one_clear_line(tmp_path, capsys):
    import pandas as pd

    from spark_jobs.item_embed import main

    pd.DataFrame({"item_id": ["1"], "title": ["Heat"]}).to_parquet(tmp_path / "items.parquet")  # only the bundle is wrong
    uri = (tmp_path / "missing").as_uri()
    code = main(["--bundle", uri, "--items", str(tmp_path / "items.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"item_embed: {uri}: ") and "bundle folder not found" in err, err
    # a bad --set names the field, not the (good or bad) bundle
    code = main(["--bundle", uri, "--items", str(tmp_path / "items.parquet"), "--set", "spark.batch_size=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("item_embed: ConfigError: ") and "spark.batch_size" in err and uri not in err, err


def test_shipped_bundle_is_resolved_by_name_on_a_worker(tmp_path, monkeypatch, spark_bundle):
    """The name lookup an executor does for a hdfs:// bundle shipped by SparkContext.addFile: SparkFiles
    holds a folder named like the bundle. A unit test of that lookup only (SparkFiles.get is faked); the
    shipping itself runs for real in `uri_run` (--ship-bundle, a local[2] spark-submit)."""
    import shutil

    from pyspark import SparkFiles

    from spark_jobs.worker_model import bundle_name, local_path, resolve_bundle_path

    shutil.copytree(spark_bundle, tmp_path / Path(spark_bundle).name)
    monkeypatch.setattr(SparkFiles, "get", classmethod(lambda cls, name: str(tmp_path / name)))
    uri = f"hdfs://namenode:8020/models/{Path(spark_bundle).name}"
    assert bundle_name(uri) == Path(spark_bundle).name and local_path(uri) is None
    assert resolve_bundle_path(uri) == str(tmp_path / Path(spark_bundle).name)
    assert local_path("file:///data/b%20x") == "/data/b x" and local_path("rel/path") == "rel/path"


def test_the_public_api_round_trip_equals_the_spark_jobs_embeddings(run, spark_bundle):
    """feature_gen.api from the same input files gives the vectors the two Spark jobs wrote: items from
    the catalogue (bad rows skipped, as the job rejects them), users from the raw event log with
    external item ids, looked up in the item job's own output table."""
    from feature_gen.api import Encoder

    enc = Encoder.from_bundle(spark_bundle, batch_size=8)
    offline = run["root"] / "offline"
    items = pd.read_parquet(run["root"] / "items.parquet")
    encoded = enc.encode_items(items.drop_duplicates("item_id"), errors="skip")
    written = read_version(offline, ITEM_EMBEDDING, run["version"]).set_index("item_id")
    assert sorted(encoded.item_ids) == sorted(written.index)
    np.testing.assert_allclose(encoded.vectors, np.stack(written.loc[encoded.item_ids, "embedding"]), atol=1e-4, rtol=1e-4)

    events = pd.read_parquet(run["root"] / "events.parquet")
    users = enc.encode_users(events, items=read_version(offline, ITEM_EMBEDDING, run["version"]), errors="skip")
    got = read_version(offline, USER_EMBEDDING, run["version"]).set_index("user_id").loc[users.user_ids]
    np.testing.assert_allclose(users.vectors, np.stack(got.embedding.to_numpy()), atol=1e-4, rtol=1e-4)
    assert users.seq_len.tolist() == got.seq_len.tolist()
    assert users.last_event_ts.tolist() == got.last_event_ts.tolist()
    # the same rows refused for the same reasons as the Spark user job's user_rejects
    spark_rejects = read_version(offline, USER_REJECTS, run["version"])
    assert users.rejects.groupby("reason").size().to_dict() == spark_rejects.groupby("reason").size().to_dict()
    assert sorted(users.rejects.reason.unique()) == ["null_user_id", "unknown_item"]
    # the jobs reported their progress from Spark's status tracker (tasks done of the stages seen; a
    # stage Spark skips, e.g. a reused shuffle of the distributed materialization, leaves the total),
    # ending N/N
    for job, out in (("item_embed", run["item_out"]), ("user_embed", run["user_out"])):
        counts = [(int(a), int(b)) for a, b in re.findall(rf"{job}: (\d+)/(\d+) tasks", out)]
        assert counts and counts[-1][0] > 0 and all(a <= b for a, b in counts), out[-2000:]
        assert counts[-1][0] == counts[-1][1], (job, counts[-3:])
    # and through the online store the item job materialized (SQLite): same users, same vectors
    through_store = enc.encode_users(events.dropna(), items=open_store(run["store"]), errors="skip")
    np.testing.assert_allclose(through_store.vectors, users.vectors, atol=1e-5)
