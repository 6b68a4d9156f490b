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

The user·item score is a request-time function (feature_gen.store.feature_store.cosine_scores, behind
`HLLMFeatureStore.request_features`), not an on-demand feature view: in Feast 0.67 an on-demand view
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

from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, USER_RECENT_ITEMS

ITEM_ID = "item_id"
USER_ID = "user_id"
EVENT_TIMESTAMP = "event_timestamp"  # when the row was written: what Feast orders online writes by

# Embeddings do not expire: a version stays valid until a new one replaces it.
NO_EXPIRY = timedelta(0)


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
    item = Entity(name="item", join_keys=[ITEM_ID], value_type=ValueType.STRING, description="a catalogue item")
    user = Entity(name="user", join_keys=[USER_ID], value_type=ValueType.STRING, description="a user")

    item_push = _sources(ITEM_EMBEDDING, offline_root)
    user_push = _sources(USER_EMBEDDING, offline_root)
    recent_push = _sources(USER_RECENT_ITEMS, offline_root)

    item_view = FeatureView(
        name=ITEM_EMBEDDING,
        entities=[item],
        ttl=NO_EXPIRY,
        schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="bundle_version", dtype=String)],
        source=item_push,
        description="Item LLM embedding of the item's text under one bundle version",
    )
    user_view = FeatureView(
        name=USER_EMBEDDING,
        entities=[user],
        ttl=NO_EXPIRY,
        schema=[
            Field(name="embedding", dtype=Array(Float32)),
            Field(name="seq_len", dtype=Int64),
            Field(name="last_event_ts", dtype=Int64),
            Field(name="bundle_version", dtype=String),
        ],
        source=user_push,
        description="User LLM interest embedding over the user's last max_seq_len items",
    )
    recent_view = FeatureView(
        name=USER_RECENT_ITEMS,
        entities=[user],
        ttl=NO_EXPIRY,
        schema=[
            Field(name="recent_item_ids", dtype=Array(String)),
            Field(name="recent_item_ts", dtype=Array(Int64)),
            Field(name="last_event_ts", dtype=Int64),
        ],
        source=recent_push,
        description="the user's most recent item ids, oldest first, with their event timestamps",
    )

    return [item, user, item_push, user_push, recent_push, item_view, user_view, recent_view]
