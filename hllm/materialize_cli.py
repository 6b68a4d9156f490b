"""`hllm materialize`: push one bundle version's offline features (written by the Spark jobs) online;
`hllm feature-repo`: create or update the Feast feature repo."""

from __future__ import annotations

import sys

from feature_gen.config import HLLMConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, list_versions

VIEWS = (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS)


def run_feature_repo(cfg: HLLMConfig, version: str | None) -> int:
    """Create or update the repo (feature_store.yaml: managed keys only, a user's other keys kept)."""
    from feature_gen.store.feature_store import write_feature_repo
    from feature_gen.store.offline_store import OfflineStoreError

    try:
        repo = write_feature_repo(cfg.store, active_version=version)
    except OfflineStoreError as exc:
        print(f"hllm feature-repo: --version: {exc}", file=sys.stderr)
        return 2
    changed = f"changed {', '.join(repo.changed_keys)}" if repo.changed_keys else "feature_store.yaml unchanged"
    print(f"{'created' if repo.created else 'updated'} {repo.path}: {changed}; serving views read version "
          f"{repo.active_version or 'none (set one with --version)'}; FeatureService per version: "
          f"{', '.join('hllm_' + v for v in repo.versions) or 'none'}")
    return 0


def run_materialize(cfg: HLLMConfig, version: str | None, bundle: str | None, views: list[str] | None,
                    engine: str = "driver", master: str | None = None) -> int:
    from feature_gen.model.bundle import read_manifest
    from feature_gen.store.feature_store import open_store, write_feature_repo

    if bool(version) == bool(bundle):
        print("hllm materialize: give exactly one of --version and --bundle", file=sys.stderr)
        return 2
    version = version or read_manifest(bundle)["version"]
    views = views or list(VIEWS)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        print(f"hllm materialize: unknown view(s) {', '.join(unknown)} (expected: {', '.join(VIEWS)})", file=sys.stderr)
        return 2
    if engine == "spark":
        written = _materialize_with_spark(cfg, version, views, master)
    else:
        # The serving views' batch sources follow the version published (plain `feast materialize` then
        # loads this version and no other).
        write_feature_repo(cfg.store, active_version=version)
        written = open_store(cfg.store).materialize_version(version, views=views)
    store = open_store(cfg.store, apply=False)
    if not any(written.values()):
        have = sorted({v for view in views for v in list_versions(store.offline_root, view)})
        print(
            f"hllm materialize: no offline rows of version {version} under {store.offline_root} "
            f"(versions there: {', '.join(have) if have else 'none'}); run the Spark jobs first",
            file=sys.stderr,
        )
        return 2
    for view, n in written.items():
        print(f"{view:18s} {n} rows of {version} -> {cfg.store.online_store} online store")
    return 0


def _materialize_with_spark(cfg: HLLMConfig, version: str, views: list[str], master: str | None) -> dict[str, int]:
    from spark_jobs.job_setup import spark_session
    from spark_jobs.online_write import materialize_online

    spark = spark_session(f"hllm materialize {version}", cfg, master)
    try:
        return materialize_online(spark, cfg.store, version, views, cfg.spark.materialize_batch_rows)
    finally:
        spark.stop()
