"""`hllm materialize`: push one bundle version's offline features (written by the Spark jobs) online."""

from __future__ import annotations

import sys

from feature_gen.config import HLLMConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS, list_versions

VIEWS = (ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS)


def run_materialize(cfg: HLLMConfig, version: str | None, bundle: str | None, views: list[str] | None) -> int:
    from feature_gen.model.bundle import read_manifest
    from feature_gen.store.feature_store import open_store

    if bool(version) == bool(bundle):
        print("hllm materialize: give exactly one of --version and --bundle", file=sys.stderr)
        return 2
    version = version or read_manifest(bundle)["version"]
    views = views or list(VIEWS)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        print(f"hllm materialize: unknown view(s) {', '.join(unknown)} (expected: {', '.join(VIEWS)})", file=sys.stderr)
        return 2
    store = open_store(cfg.store)
    written = store.materialize_version(version, views=views)
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
