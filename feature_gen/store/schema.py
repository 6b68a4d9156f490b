"""The feature contract's names and shapes, declared once: ids, entities, tables, columns, the Spark
schemas of the jobs' outputs and the offline event-time rule.

    entity item  (join key item_id)            entity user  (join key user_id)

    item_embedding     [item]  embedding vector, bundle_version
    user_embedding     [user]  embedding vector, seq_len, last_event_ts, bundle_version
    user_recent_items  [user]  recent_item_ids, recent_item_ts, last_event_ts

Every reader and writer (the Feast definitions, the store's frame checks, the Spark jobs, the streaming
state, the ranker's training set) names columns through this module, so renaming one is one edit.
Ids are strings in the store whatever their type in the input data. Imports nothing from the project:
Feast types are attached in feature_repo/definitions.py, Spark is imported only by the function that
builds a Spark column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn, DataFrame as SparkFrame

# ids and entities
ITEM_ID = "item_id"
USER_ID = "user_id"
ITEM_ENTITY = "item"
USER_ENTITY = "user"

# feature columns
EMBEDDING = "embedding"  # float32 vector [D]
BUNDLE_VERSION = "bundle_version"  # the bundle every embedding was computed with
SEQ_LEN = "seq_len"  # history items a user embedding reflects (after the max_seq_len cap)
LAST_EVENT_TS = "last_event_ts"  # int64 unix seconds of the newest event a user row reflects
RECENT_ITEM_IDS = "recent_item_ids"  # a user's recent item ids, oldest first
RECENT_ITEM_TS = "recent_item_ts"  # their event times, int64 unix seconds
EVENT_TIMESTAMP = "event_timestamp"  # the row's time as Feast orders it (offline: event_time_rule)

# tables: the three feature views, and what the jobs could not embed
ITEM_EMBEDDING = "item_embedding"
USER_EMBEDDING = "user_embedding"
USER_RECENT_ITEMS = "user_recent_items"
ITEM_REJECTS = "item_rejects"
USER_REJECTS = "user_rejects"

Kind = Literal["vector", "int64", "string", "string_list", "int64_list"]
SPARK_TYPES: dict[str, str] = {
    "vector": "array<float>", "int64": "long", "string": "string", "string_list": "array<string>",
    "int64_list": "array<long>",
}


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind


@dataclass(frozen=True)
class View:
    """One feature view: its entity, join key and features (in the order frames carry them)."""

    name: str
    entity: str
    key: str
    features: tuple[Feature, ...]
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a frame written to this view must hold: key first, then the features."""
        return (self.key, *(f.name for f in self.features))

    @property
    def spark_schema(self) -> str:
        """DDL of a Spark job's output rows for this view. The bundle version is left out: it lives in
        the partition folder (bundle_version=<v>), not in the files."""
        fields = [f"{self.key} string"] + [f"{f.name} {SPARK_TYPES[f.kind]}" for f in self.features if f.name != BUNDLE_VERSION]
        return ", ".join(fields)


VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View(ITEM_EMBEDDING, ITEM_ENTITY, ITEM_ID,
             (Feature(EMBEDDING, "vector"), Feature(BUNDLE_VERSION, "string")),
             "Item LLM embedding of the item's text under one bundle version"),
        View(USER_EMBEDDING, USER_ENTITY, USER_ID,
             (Feature(EMBEDDING, "vector"), Feature(SEQ_LEN, "int64"), Feature(LAST_EVENT_TS, "int64"),
              Feature(BUNDLE_VERSION, "string")),
             "User LLM interest embedding over the user's last max_seq_len items"),
        View(USER_RECENT_ITEMS, USER_ENTITY, USER_ID,
             (Feature(RECENT_ITEM_IDS, "string_list"), Feature(RECENT_ITEM_TS, "int64_list"),
              Feature(LAST_EVENT_TS, "int64")),
             "the user's most recent item ids, oldest first, with their event timestamps"),
    )
}
ENTITY_KEYS: dict[str, str] = {ITEM_ENTITY: ITEM_ID, USER_ENTITY: USER_ID}
ENTITY_DESCRIPTIONS: dict[str, str] = {ITEM_ENTITY: "a catalogue item", USER_ENTITY: "a user"}

ITEM_EMBEDDING_SPARK_SCHEMA = VIEWS[ITEM_EMBEDDING].spark_schema  # item_id string, embedding array<float>
USER_EMBEDDING_SPARK_SCHEMA = VIEWS[USER_EMBEDDING].spark_schema  # ... seq_len long, last_event_ts long


# ---------------------------------------------------------------------------------------------------
# The offline event-time rule: what point-in-time joins order rows by


def event_time_source(columns) -> str | None:
    """The column (unix seconds) an offline row is valid from: a user row from the last event it
    reflects (`last_event_ts`); an item row, a pure function of the item's text, from the start of time
    (None: epoch 0). The one definition both executions below follow."""
    return LAST_EVENT_TS if LAST_EVENT_TS in columns else None


def offline_event_timestamps(frame: pd.DataFrame) -> pd.Series:
    """The rule in pandas: UTC timestamps [n], one per row of `frame`."""
    source = event_time_source(frame.columns)
    if source is None:
        return pd.Series(pd.Timestamp(0, unit="s", tz="UTC"), index=frame.index)
    return pd.to_datetime(frame[source].astype("int64"), unit="s", utc=True)


def with_spark_event_timestamp(frame: "SparkFrame") -> "SparkFrame":
    """The rule in Spark: `frame` with its `event_timestamp` column added."""
    from pyspark.sql import functions as F

    source = event_time_source(frame.columns)
    seconds: SparkColumn = F.col(source) if source is not None else F.lit(0)
    return frame.withColumn(EVENT_TIMESTAMP, F.timestamp_seconds(seconds))
