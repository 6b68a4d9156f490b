"""The Feast feature repo as its users run it: written once (atomically, under a lock) by `hllm
feature-repo` or the first open, never rewritten by opening a store; a user's edit survives; plain
`feast materialize` over a table holding two bundle versions never mixes them; a FeatureService per
version; registry and Redis options; several processes starting at once leave a readable registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from feature_gen.config import StoreConfig
from feature_gen.store.feature_store import (
    CONFIG_FILE,
    open_store,
    repo_config,
    write_feature_repo,
)
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]
V1, V2 = "hllm-aaaaaaaaaaaa", "hllm-bbbbbbbbbbbb"


def _cfg(tmp_path, **fields) -> StoreConfig:
    return StoreConfig(repo_path=str(tmp_path / "repo"), offline_root=str(tmp_path / "offline"), **fields)


def _items(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(n)], "embedding": list(rng.standard_normal((n, 8)).astype(np.float32))})


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def test_opening_never_rewrites_the_repo_and_a_user_edit_survives(tmp_path):
    cfg = _cfg(tmp_path)
    open_store(cfg)  # the first open creates the repo
    config_file = Path(cfg.repo_path) / CONFIG_FILE
    edited = yaml.safe_load(config_file.read_text())
    edited["coerce_tz_aware"] = False  # a key this project does not manage
    config_file.write_text("# tuned by the platform team\n" + yaml.safe_dump(edited, sort_keys=False))
    before = config_file.read_bytes()
    registry = Path(cfg.repo_path) / "registry.db"
    registry_mtime = registry.stat().st_mtime_ns
    for _ in range(3):
        store = open_store(cfg)
        assert {v.name for v in store.feast.list_feature_views()} >= {ITEM_EMBEDDING}
    assert config_file.read_bytes() == before  # byte for byte: opening wrote nothing
    assert registry.stat().st_mtime_ns == registry_mtime  # and applied nothing
    # `hllm feature-repo` with a changed managed key: that key follows the config, the user's key stays
    moved = StoreConfig(**{**cfg.model_dump(), "sqlite_path": str(tmp_path / "elsewhere.db")})
    repo = write_feature_repo(moved)
    after = yaml.safe_load(config_file.read_text())
    assert repo.changed_keys == ["online_store"] and not repo.created
    assert after["online_store"]["path"] == str(tmp_path / "elsewhere.db")
    assert after["coerce_tz_aware"] is False


def test_the_hllm_command_creates_and_updates_the_repo(tmp_path):
    cfg = _cfg(tmp_path)
    args = ["--set", f"store.repo_path={cfg.repo_path}", "--set", f"store.offline_root={cfg.offline_root}"]
    run = lambda *extra: subprocess.run([str(VENV_BIN / "hllm"), "feature-repo", *args, *extra],  # noqa: E731
                                        capture_output=True, text=True, timeout=300, env=_env())
    out = run()
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"created {Path(cfg.repo_path).resolve()}")
    open_store(cfg, apply=False).write_offline(ITEM_EMBEDDING, V1, _items(3, 0))
    out = run("--version", V1)
    assert out.returncode == 0, out.stderr
    assert "feature_store.yaml unchanged" in out.stdout and f"serving views read version {V1}" in out.stdout
    assert f"hllm_{V1}" in out.stdout
    bad = run("--version", "../escape")
    assert bad.returncode == 2 and "--version: bundle version '../escape' is not a valid name" in bad.stderr


def test_plain_feast_materialize_over_two_versions_never_mixes(tmp_path):
    """The issue saw 198 items of one version and 2 of the other online after `feast materialize`."""
    cfg = _cfg(tmp_path)
    store = open_store(cfg)
    store.write_offline(ITEM_EMBEDDING, V1, _items(40, seed=1))
    store.write_offline(ITEM_EMBEDDING, V2, _items(30, seed=2))  # v2 dropped items i30..i39
    write_feature_repo(cfg, active_version=V2)
    out = subprocess.run([str(VENV_BIN / "feast"), "-c", cfg.repo_path, "materialize", "1970-01-01T00:00:00",
                          "2100-01-01T00:00:00", "--views", ITEM_EMBEDDING],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    online = open_store(cfg, apply=False).item_embeddings([f"i{k}" for k in range(40)])
    assert online.found[:30].all() and not online.found[30:].any()
    assert set(online.bundle_versions[:30]) == {V2}
    np.testing.assert_allclose(online.vectors[:30], np.stack(_items(30, seed=2).embedding), rtol=1e-6)


def test_a_feature_service_per_version_reads_only_its_version(tmp_path):
    """A ranker's training rows (user, item, time) through FeatureService hllm_<version>: every feature of
    exactly that version, from that version's own offline tables."""
    cfg = _cfg(tmp_path)
    store = open_store(cfg)
    for version, seed in ((V1, 1), (V2, 2)):
        store.write_offline(ITEM_EMBEDDING, version, _items(5, seed))
        store.write_offline(USER_EMBEDDING, version, _items(2, seed + 10).rename(columns={"item_id": "user_id"}).assign(
            seq_len=3, last_event_ts=1_700_000_000))
        store.write_offline(USER_RECENT_ITEMS, version, pd.DataFrame({
            "user_id": ["i0", "i1"], "recent_item_ids": [["i1"], ["i2"]], "recent_item_ts": [[1], [2]],
            "last_event_ts": 1_700_000_000}))
    write_feature_repo(cfg, active_version=V2)
    feast = open_store(cfg, apply=False).feast
    services = {s.name: s for s in feast.list_feature_services()}
    assert set(services) == {f"hllm_{V1}", f"hllm_{V2}"}
    rows = pd.DataFrame({"user_id": ["i0", "i1"], "item_id": ["i0", "i3"], "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC")})
    for version, seed in ((V1, 1), (V2, 2)):
        frame = feast.get_historical_features(entity_df=rows, features=services[f"hllm_{version}"],
                                              full_feature_names=True).to_df().sort_values("item_id")
        assert set(frame[f"{ITEM_EMBEDDING}__{version}__bundle_version"]) == {version}
        assert set(frame[f"{USER_EMBEDDING}__{version}__bundle_version"]) == {version}
        want = np.stack(_items(5, seed).embedding)[[0, 3]]
        np.testing.assert_allclose(np.stack(frame[f"{ITEM_EMBEDDING}__{version}__embedding"]), want, rtol=1e-6)


def test_registry_and_redis_options_reach_feature_store_yaml(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, registry="postgresql+psycopg://feast@db:5432/feast", online_store="redis",
               redis_connection="r1:6379,r2:6379", redis_type="redis_cluster", redis_password_env="HLLM_REDIS_PASSWORD",
               redis_ssl=True, redis_key_ttl_s=86400)
    written = repo_config(cfg)
    assert written["registry"] == {"registry_type": "sql", "path": "postgresql+psycopg://feast@db:5432/feast", "cache_ttl_seconds": 60}
    assert written["online_store"] == {"type": "redis", "redis_type": "redis_cluster", "key_ttl_seconds": 86400,
                                       "connection_string": "r1:6379,r2:6379,password=${HLLM_REDIS_PASSWORD},ssl=true"}
    # the secret never lands in the file; Feast reads it from the environment when it loads the file
    from feast.repo_config import load_repo_config

    path = tmp_path / CONFIG_FILE
    path.write_text(yaml.safe_dump(written))
    monkeypatch.setenv("HLLM_REDIS_PASSWORD", "s3cret")
    loaded = load_repo_config(tmp_path, path)
    assert loaded.online_store.connection_string.endswith("password=s3cret,ssl=true")
    assert loaded.online_store.redis_type == "redis_cluster" and loaded.online_store.key_ttl_seconds == 86400
    assert repo_config(_cfg(tmp_path, registry="s3://bucket/feast/registry.pb"))["registry"]["path"] == "s3://bucket/feast/registry.pb"


_WORKER = textwrap.dedent('''
    import json, sys, time
    from feature_gen.config import StoreConfig
    from feature_gen.store.feature_store import open_store, write_feature_repo
    from pathlib import Path
    cfg = StoreConfig(**json.loads(sys.argv[1]))
    go, seconds, updater = Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    print("ready", flush=True)  # feast imported: wait for the others, then start at the same instant
    while not go.exists():
        time.sleep(0.002)
    start = time.time()
    ok = failed = 0
    errors = []
    while time.time() < start + seconds:
        try:
            if updater and ok % 3 == 2:
                write_feature_repo(cfg)  # an operator re-applying while services start
            store = open_store(cfg)
            assert len(store.feast.list_feature_views()) >= 3
            store.item_embeddings(["i1"])
            ok += 1
        except Exception as exc:
            failed += 1
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:3]}))
''')


def test_concurrent_start_of_several_processes_leaves_a_readable_registry(tmp_path):
    """The issue: two processes opening the store in a loop failed 60-85 % of opens and left registry.db
    unreadable in 2 of 3 trials. Here 4 processes start on a repo that does not exist yet, all at the
    same instant; two of them also re-apply it while the others open it."""
    cfg = _cfg(tmp_path)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(cfg.model_dump()), str(go), "6", str(k % 2)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for k in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["failed"] == 0 for r in results), results
    assert all(r["ok"] > 0 for r in results), results
    out = subprocess.run([str(VENV_BIN / "feast"), "-c", cfg.repo_path, "feature-views", "list"],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0 and ITEM_EMBEDDING in out.stdout, out.stderr[-2000:]
