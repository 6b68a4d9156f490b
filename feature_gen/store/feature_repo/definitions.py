"""The Feast feature repo: every entity, source and feature view of hllm-features, declared in one place.

    entity item  (join key item_id, string)        entity user  (join key user_id, string)

    item_embedding     [item]  embedding Array(Float32), bundle_version String
    user_embedding     [user]  embedding Array(Float32), seq_len Int64, last_event_ts Int64,
                               bundle_version String
    user_recent_items  [user]  recent_item_ids Array(String), recent_item_ts Array(Int64),
                               last_event_ts Int64   (the state the streaming refresh resumes from)

Each view's batch source is its offline Parquet table (`<offline_root>/<view>/bundle_version=<v>/`),
and each has a push source (`<view>_push`) through which jobs and the streaming refresh write online.
Ids are strings in the store whatever their type in the input data (one key type for every source).

The user·item score is a request-time function (ranker_integration.feature_values, behind
ranker_integration.serving), not an on-demand feature view: in Feast 0.67 an on-demand view
over two views that share feature names (both have `embedding` and `bundle_version`) receives the
second view's values under the first view's names at online-read time, so it would score an item
against itself. The function also refuses mixed versions instead of returning NaN.

Versions never mix (what plain `feast materialize` reads):
  - the three serving views' batch sources read one folder, the *active* version's
    (`<offline_root>/<view>/bundle_version=<active>`), never the whole table: `feast materialize` can only
    load that version. `hllm feature-repo --version V` / `hllm materialize` set the active version.
  - every version present offline also gets offline-only views `<view>__<version>` (its own source,
    online=False: `feast materialize` skips them) and a FeatureService `hllm_<version>` over them: a
    training set of one version, point-in-time correct, through Feast's standard API
    (get_historical_features(..., full_feature_names=True): the views share feature names).
Files carry the `bundle_version` column themselves (a version folder is a complete source on its own).

`feature_definitions(offline_root, active_version, versions)` builds the objects;
feature_gen.store.feature_store.write_feature_repo writes a generated `features.py` calling it into the
repo folder (so the `feast` CLI sees the same repo) and applies them under a lock.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

from feature_gen.store.offline_store import PARTITION_PREFIX, check_version
from feature_gen.store.schema import ENTITY_DESCRIPTIONS, ENTITY_KEYS, EVENT_TIMESTAMP, VIEWS

# Embeddings do not expire: a version stays valid until a new one replaces it.
NO_EXPIRY = timedelta(0)
FEAST_TYPES = {"vector": Array(Float32), "int64": Int64, "string": String, "string_list": Array(String),
               "int64_list": Array(Int64)}


def push_source_name(view: str) -> str:
    return f"{view}_push"


NO_ACTIVE_VERSION = "none"  # the serving views' source before any version is active: an empty folder name


def offline_view_name(view: str, version: str) -> str:
    return f"{view}__{version}"


def feature_service_name(version: str) -> str:
    return f"hllm_{version}"


def version_folder(offline_root: str | Path, view: str, version: str) -> str:
    """`<offline_root>/<view>/bundle_version=<version>`; a URI root (s3://, gs://, hdfs://) stays a URI."""
    root = str(offline_root)
    base = root.rstrip("/") if "://" in root else str(Path(root).resolve())
    return f"{base}/{view}/{PARTITION_PREFIX}{version}"


def _file_source(name: str, path: str) -> FileSource:
    return FileSource(name=name, path=path, timestamp_field=EVENT_TIMESTAMP)


def feature_definitions(offline_root: str | Path, active_version: str | None = None, versions=()) -> list:
    """Entities, push sources, the serving views from the schema (batch source: the active version's
    folder) and, per version in `versions`, offline-only views and a FeatureService (module docstring)."""
    entities = {
        name: Entity(name=name, join_keys=[key], value_type=ValueType.STRING, description=ENTITY_DESCRIPTIONS[name])
        for name, key in ENTITY_KEYS.items()
    }
    active = check_version(active_version) if active_version else NO_ACTIVE_VERSION

    def schema(view):
        return [Field(name=f.name, dtype=FEAST_TYPES[f.kind]) for f in view.features]

    objects: list = list(entities.values())
    for view in VIEWS.values():
        batch = _file_source(f"{view.name}_parquet", version_folder(offline_root, view.name, active))
        push = PushSource(name=push_source_name(view.name), batch_source=batch)
        objects += [push, FeatureView(
            name=view.name, entities=[entities[view.entity]], ttl=NO_EXPIRY, schema=schema(view), source=push,
            description=f"{view.description} (served online; batch source: the active version {active})",
            tags={"active_bundle_version": active},
        )]
    for version in sorted(set(versions)):
        check_version(version)
        views = [
            FeatureView(
                name=offline_view_name(view.name, version), entities=[entities[view.entity]], ttl=NO_EXPIRY,
                schema=schema(view), online=False, tags={"bundle_version": version},
                source=_file_source(f"{view.name}__{version}_parquet", version_folder(offline_root, view.name, version)),
                description=f"{view.description}: bundle {version} only (offline)",
            )
            for view in VIEWS.values()
        ]
        objects += views + [FeatureService(
            name=feature_service_name(version), features=views, tags={"bundle_version": version},
            description=f"every HLLM feature of bundle {version}, from that version's offline tables only",
        )]
    return objects
