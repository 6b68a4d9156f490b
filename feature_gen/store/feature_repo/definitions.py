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

`feature_definitions(offline_root)` builds the objects; feature_gen.store.feature_store applies them and
writes a generated `features.py` into the repo folder so the `feast` CLI (`feast -c <repo> ...`) sees
the same repo.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

from feature_gen.store.schema import ENTITY_DESCRIPTIONS, ENTITY_KEYS, EVENT_TIMESTAMP, VIEWS

# Embeddings do not expire: a version stays valid until a new one replaces it.
NO_EXPIRY = timedelta(0)
FEAST_TYPES = {"vector": Array(Float32), "int64": Int64, "string": String, "string_list": Array(String),
               "int64_list": Array(Int64)}


def push_source_name(view: str) -> str:
    return f"{view}_push"


def _sources(view: str, offline_root: str | Path) -> PushSource:
    batch = FileSource(
        name=f"{view}_parquet",
        path=str(Path(offline_root).resolve() / view),
        timestamp_field=EVENT_TIMESTAMP,
    )
    return PushSource(name=push_source_name(view), batch_source=batch)


def feature_definitions(offline_root: str | Path) -> list:
    """Entities, push sources (each over its offline Parquet table) and feature views, from the schema."""
    entities = {
        name: Entity(name=name, join_keys=[key], value_type=ValueType.STRING, description=ENTITY_DESCRIPTIONS[name])
        for name, key in ENTITY_KEYS.items()
    }
    pushes = {name: _sources(name, offline_root) for name in VIEWS}
    views = [
        FeatureView(
            name=view.name,
            entities=[entities[view.entity]],
            ttl=NO_EXPIRY,
            schema=[Field(name=f.name, dtype=FEAST_TYPES[f.kind]) for f in view.features],
            source=pushes[view.name],
            description=view.description,
        )
        for view in VIEWS.values()
    ]
    return [*entities.values(), *pushes.values(), *views]
