"""The public Python API: load a bundle once, then encode items, encode users, score.

    from feature_gen.api import Encoder            # also `from hllm import Encoder`

    enc = Encoder.from_bundle("outputs/bundles/hllm-1a2b3c4d5e6f", runtime="torch", batch_size=64)
    items = enc.encode_items([{"item_id": "42", "title": "Heat", "tags": ["crime"]}])   # or a DataFrame
    users = enc.encode_users([["42", "7"]], timestamps=[[978300760, 978300900]], items=items)
    scores = enc.score(users.vectors[0], items.vectors)                                 # cosine, [n]

This module is a thin layer: texts are built by feature_gen.model.item_text and embedded by
feature_gen.inference.encoders (embed_texts / embed_users), the functions the Spark jobs and the
streaming refresh call, so the API gives the same vectors they write to the store. It only adds what
those functions leave to the caller: records or DataFrames instead of texts, external item ids
instead of internal indices, and the model's similarity (cosine, the one the losses train).

It sits at the top of feature_gen (it may import every room but the store and streaming; the store is
reached through any object with an `item_embeddings(ids)` method, see `ItemVectorSource`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

import numpy as np
import pandas as pd
import torch

from feature_gen.data.contract import (
    BAD_TIMESTAMP, DUPLICATE_ID, NULL_ITEM_ID, NULL_USER_ID, REPLACEMENT_CHAR, TIMESTAMP_OUT_OF_RANGE, TIMESTAMP_UNITS,
    UNKNOWN_ITEM, DataError, read_timestamps, whole_number,
)
from feature_gen.evaluation.protocol import in_scoring_space
from feature_gen.inference.encoders import Encoders, Runtime, UserEmbeddings, load_encoders
from feature_gen.inference.item_table import padded_item_table
from feature_gen.model.bundle import read_manifest
from feature_gen.model.item_text import REJECT_BAD_ENCODING, build_item_text, check_prompt_budget, item_text_or_reject

Errors = Literal["raise", "skip"]
# The similarity every consumer scores in: the model's losses score L2-normalised vectors.
SIMILARITY: Literal["cosine"] = "cosine"


class EncodeError(DataError):
    """An input the bundle cannot encode, named by row (position in the input), id and reason
    (a DataError: `hllm` reports it in one line, exit 2)."""


@dataclass
class ItemVectors:
    """Item embeddings of the accepted records, in input order.

    item_ids: [n] str (the store's id type); vectors: [n, D] float32, D = `Encoder.dim`;
    rejects: one row per refused record (columns `row` (input position), `item_id`, `reason`:
    null_id | no_text | oversize_text), empty with errors="raise"."""

    item_ids: list[str]
    vectors: np.ndarray
    rejects: pd.DataFrame

    def as_mapping(self) -> dict[str, np.ndarray]:
        return dict(zip(self.item_ids, self.vectors))


@dataclass
class UserVectors:
    """User-interest embeddings, one per history, in input order (sorted user ids for event frames).

    user_ids: [U] str (positions "0", "1", ... for plain lists); vectors: [U, D] float32;
    seq_len: [U] int64 history items the embedding reflects (at most the bundle's max_seq_len);
    last_event_ts: [U] int64 timestamp of the newest event it reflects (0 without timestamps);
    rejects: refused events (`user_id`, `item_id`, `reason`: unknown_item | null_id), empty with errors="raise"."""

    user_ids: list[str]
    vectors: np.ndarray
    seq_len: np.ndarray
    last_event_ts: np.ndarray
    rejects: pd.DataFrame


@runtime_checkable
class ItemVectorSource(Protocol):
    """Anything that looks item embeddings up by external id, like the online feature store
    (`feature_gen.store.feature_store.HLLMFeatureStore.item_embeddings`): the result has `item_ids`,
    `vectors` [n, D], `found` [n] bool and `bundle_versions` [n]."""

    def item_embeddings(self, item_ids: Iterable) -> Any: ...


ItemTable = Union[ItemVectors, Mapping[str, np.ndarray], pd.DataFrame, ItemVectorSource]
Records = Union[pd.DataFrame, Sequence[Mapping[str, Any]]]


def _records(items: Records) -> list[dict[str, Any]]:
    if isinstance(items, pd.DataFrame):
        return items.to_dict("records")
    if isinstance(items, Mapping):
        raise TypeError("encode_items: pass a list of item records (dicts) or a DataFrame, not one dict")
    return [dict(r) for r in items]


def _str_id(value: Any) -> str:
    # integer ids read through pandas may arrive as numpy ints or floats (7.0): the store keys by "7"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _rejects(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def _contract_events(events: pd.DataFrame, timestamp_unit: str, errors: Errors) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The rows of an event DataFrame the input contract accepts, timestamps as int64 Unix seconds and
    an `_order` column (file order), and the refused ones with the Spark user job's reason, checked in
    its order (spark_jobs/user_frames.check_interactions): null ids, undecodable bytes in an id, a
    timestamp that is not a whole number, one outside the plausible window. errors="raise": EncodeError
    naming the first refused row (1-based, as a person counts data lines)."""
    def text(v):
        return None if pd.isna(v) else _str_id(v)

    read = read_timestamps(events["timestamp"], timestamp_unit, source="encode_users")
    # a datetime column (Parquet) holds times, never malformed ones: a refused value is out of range
    datetimes = pd.api.types.is_datetime64_any_dtype(events["timestamp"])
    reasons: list[str | None] = []
    for u, i, t, why in zip(events["user_id"], events["item_id"], events["timestamp"], read.reasons):
        if pd.isna(u):
            reasons.append(NULL_USER_ID)
        elif pd.isna(i):
            reasons.append(NULL_ITEM_ID)
        elif REPLACEMENT_CHAR in _str_id(u) or REPLACEMENT_CHAR in _str_id(i):
            reasons.append(REJECT_BAD_ENCODING)
        elif why is not None:
            is_time = (datetimes and not pd.isna(t)) or (not datetimes and whole_number(t) is not None)
            reasons.append(TIMESTAMP_OUT_OF_RANGE if is_time else BAD_TIMESTAMP)
        else:
            reasons.append(None)
    bad = [row for row, r in enumerate(reasons) if r is not None]
    if bad and errors == "raise":
        row = bad[0]
        detail = read.reasons[row] if reasons[row] in (BAD_TIMESTAMP, TIMESTAMP_OUT_OF_RANGE) else ""
        raise EncodeError(f"encode_users: event row {row + 1} (user {text(events['user_id'].iloc[row])!r}): "
                          f"{reasons[row]}{': ' + detail if detail else ''} ({len(bad)} such rows)")
    rejects = [{"user_id": text(events["user_id"].iloc[row]), "item_id": text(events["item_id"].iloc[row]),
                "reason": reasons[row]} for row in bad]
    ok = np.array([r is None for r in reasons], dtype=bool)
    kept = events.assign(timestamp=read.seconds, _order=np.arange(len(events)))[ok]
    return kept, rejects


class Encoder:
    """A frozen bundle's item and user encoders behind one object (load once, call many times): a thin
    layer over feature_gen.inference.encoders.Encoders, the type every producer uses.

    Not thread-safe for torch on one object; make one per worker thread or process."""

    def __init__(self, encoders: Encoders, manifest: dict[str, Any], device: str = "cpu", batch_size: int = 64,
                 user_batch_size: int = 256):
        if batch_size < 1 or user_batch_size < 1:
            raise ValueError(f"batch_size and user_batch_size must be >= 1; got {batch_size}, {user_batch_size}")
        if encoders.runtime == "torch" and device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if encoders.runtime == "torch" and device != "cpu":
            encoders = replace(encoders, item=_TorchOnDevice(encoders.item, device), user=_TorchOnDevice(encoders.user, device))
        self.encoders = encoders
        self.manifest = manifest
        self.device = device
        self.batch_size = batch_size
        self.user_batch_size = user_batch_size
        check_prompt_budget(encoders.tokenizer, encoders.text_cfg)

    @classmethod
    def from_bundle(cls, path: str | Path, runtime: Runtime = "torch", device: str = "cpu", batch_size: int = 64,
                    user_batch_size: int = 256, threads: int | None = None) -> "Encoder":
        """Verify and load the bundle folder `path` (`<root>/<version>/`).

        runtime: "torch" (the eager modules) or "onnx" (ONNX Runtime; needs `hllm export` first; loads
        no PyTorch weights). device: "cpu", "cuda" / "cuda:N" (torch), or "auto" | "cpu" | "cuda" (ONNX
        providers). batch_size: texts per Item LLM call; user_batch_size: histories per User LLM call.
        threads: ONNX Runtime intra-op threads (torch: use torch.set_num_threads).
        Raises BundleError for a missing, partial or tampered bundle; ValueError for a bad runtime."""
        encoders = load_encoders(path, runtime=runtime, device=device if runtime == "onnx" else "auto", threads=threads)
        return cls(encoders, read_manifest(path), device, batch_size, user_batch_size)

    # -- what the bundle is -------------------------------------------------------------------------

    @property
    def runtime(self) -> str:
        return self.encoders.runtime

    @property
    def version(self) -> str:
        """The bundle version every embedding it makes belongs to (e.g. "hllm-1a2b3c4d5e6f")."""
        return self.encoders.version

    @property
    def dim(self) -> int:
        """D, the embedding dimension of items and users (the Item LLM's hidden size)."""
        return int(self.manifest["item_dim"])

    @property
    def similarity(self) -> str:
        return SIMILARITY

    @property
    def text_keys(self) -> list[str]:
        """The record keys the bundle's text template reads (others are ignored)."""
        return list(self.encoders.text_cfg.text_keys)

    @property
    def max_seq_len(self) -> int:
        """The most recent history items a user embedding reads."""
        return int(self.encoders.max_seq_len)

    # -- items ------------------------------------------------------------------------------------

    def item_text(self, record: Mapping[str, Any]) -> str | None:
        """The exact text the Item LLM reads for `record` (None when no text key has a value)."""
        return build_item_text(record, self.encoders.text_cfg)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Item embeddings [n, D] float32 of ready-built item texts (see `item_text`), input order."""
        return self.encoders.embed_texts(list(texts), batch_size=self.batch_size)

    def encode_items(self, items: Records, errors: Errors = "raise") -> ItemVectors:
        """Embed item records: dicts or DataFrame rows with `item_id` and any of `text_keys`
        (strings; tags as a list or a string). A record without `item_id` gets its position as id.

        Returns ItemVectors (vectors [n, D] float32, input order). errors="raise": a record with no
        text, an oversize text, a null id or an id already embedded from an earlier row raises
        EncodeError naming its row; "skip": it goes to `.rejects` with the reason the Spark item job
        gives it (null_id, no_text, oversize_text, bad_encoding, duplicate_id: the first embeddable row
        of an id wins) and the others are embedded."""
        records = _records(items)
        ids: list[str] = []
        texts: list[str] = []
        rejects: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row, record in enumerate(records):
            if "item_id" not in record:
                record = {**record, "item_id": row}
            result = item_text_or_reject(record, self.encoders.text_cfg)
            item_id = None if result.reject_reason == "null_id" else _str_id(record["item_id"])
            if not result.reject_reason and item_id in seen:  # only embeddable rows compete for an id
                result = replace(result, text=None, reject_reason=DUPLICATE_ID)
            if result.reject_reason or item_id is None or result.text is None:
                if errors == "raise":
                    raise EncodeError(f"encode_items: row {row} (item_id {item_id!r}): {result.reject_reason} "
                                      f"(text keys {self.text_keys}, max_text_chars {self.encoders.text_cfg.max_text_chars})")
                rejects.append({"row": row, "item_id": item_id, "reason": result.reject_reason})
                continue
            ids.append(item_id)
            seen.add(item_id)
            texts.append(result.text)
        vectors = self.encode_texts(texts) if texts else np.zeros((0, self.dim), np.float32)
        return ItemVectors(ids, vectors, _rejects(rejects, ("row", "item_id", "reason")))

    # -- users ------------------------------------------------------------------------------------

    def _lookup(self, items: ItemTable, wanted: list[str]) -> dict[str, np.ndarray]:
        """Vectors of the wanted item ids that `items` holds (absent ids are left out)."""
        if isinstance(items, ItemVectors):
            table = items.as_mapping()
        elif isinstance(items, pd.DataFrame):
            if not {"item_id", "embedding"} <= set(items.columns):
                raise EncodeError(f"items: a DataFrame needs columns item_id, embedding; got {list(items.columns)}")
            if "bundle_version" in items.columns:
                self._check_versions(items["bundle_version"].dropna().unique(), "items DataFrame")
            table = dict(zip(map(_str_id, items["item_id"]), items["embedding"]))
        elif isinstance(items, Mapping):
            table = {_str_id(k): v for k, v in items.items()}
        elif isinstance(items, ItemVectorSource):
            got = items.item_embeddings(wanted)
            found = np.asarray(got.found, dtype=bool)
            self._check_versions({v for v, f in zip(got.bundle_versions, found) if f}, "the feature store")
            return {i: np.asarray(v, np.float32) for i, v, f in zip(got.item_ids, got.vectors, found) if f}
        else:
            raise TypeError(f"items: expected ItemVectors, a mapping id -> vector, a DataFrame or a store; got {type(items).__name__}")
        return {i: np.asarray(table[i], np.float32) for i in wanted if i in table}

    def _check_versions(self, versions: Iterable, where: str) -> None:
        other = sorted(set(versions) - {self.version})
        if other:
            raise EncodeError(f"{where} holds item embeddings of {other}, this encoder is {self.version}: "
                              "scores across versions are meaningless")

    def encode_users(
        self,
        histories: Union[pd.DataFrame, Sequence[Sequence[Any]]],
        timestamps: Sequence[Sequence[int]] | None = None,
        items: ItemTable | None = None,
        errors: Errors = "raise",
        timestamp_unit: str = "seconds",
    ) -> UserVectors:
        """User-interest embeddings from histories of external item ids, oldest first.

        histories: a list of per-user item-id lists (with `timestamps`, per-user int Unix-second
        lists aligned with them), or an event DataFrame with `user_id`, `item_id`, `timestamp`
        (sorted per user by timestamp, file order breaking ties, as the Spark job does).
        items: where item vectors come from: ItemVectors from `encode_items`, a mapping id -> [D]
        vector, a DataFrame with item_id/embedding (the offline store's table), or the feature store
        (anything with `item_embeddings(ids)`); its vectors must be of this bundle's version.
        Only the newest `max_seq_len` items of each history are read.

        An event DataFrame is read under the input contract, as the Spark user job reads its files
        (feature_gen.data.contract): timestamps are integers in `timestamp_unit` ("seconds",
        "milliseconds" or "auto") inside the plausible window, ids hold no undecodable bytes.

        Returns UserVectors (vectors [U, D] float32). errors="raise": an item id with no vector, an
        empty history or an event the contract refuses raises EncodeError naming user, item or row;
        "skip": such events go to `.rejects` with the Spark job's reasons (null_user_id, null_item_id,
        bad_encoding, bad_timestamp, timestamp_out_of_range, unknown_item; a user left with no events
        is dropped)."""
        if items is None:
            raise EncodeError("encode_users: pass items= (encode_items' result, a mapping, a DataFrame or the store)")
        if timestamp_unit not in TIMESTAMP_UNITS:
            raise EncodeError(f"encode_users: timestamp_unit: expected one of {', '.join(TIMESTAMP_UNITS)}; got {timestamp_unit!r}")
        user_ids, hist, ts, rejects = self._histories(histories, timestamps, timestamp_unit, errors)
        wanted = list(dict.fromkeys(i for h in hist for i in h))
        table = self._lookup(items, wanted)
        keep_users, internal, kept_ts = [], [], []
        index = {item_id: row + 1 for row, item_id in enumerate(table)}  # row 0 = padding
        from_log = isinstance(histories, pd.DataFrame)
        for user, h, t in zip(user_ids, hist, ts):
            known = [k for k, i in enumerate(h) if i in index]
            unknown = sorted(set(range(len(h))) - set(known))
            if from_log:
                # an exact repeat (same user, item and timestamp: a replayed log) counts once, at its first
                # position, as in the Spark job (spark_jobs/user_frames.recent_events) and the stream;
                # rows are in (timestamp, file order), so the first kept is the first in the file
                seen: set = set()
                known = [k for k in known if not ((h[k], t[k]) in seen or seen.add((h[k], t[k])))]
            for k in unknown:
                if errors == "raise":
                    raise EncodeError(f"encode_users: user {user!r}: item {h[k]!r} has no embedding of {self.version} in items")
                rejects.append({"user_id": user, "item_id": h[k], "reason": UNKNOWN_ITEM})
            if not known:
                if errors == "raise":
                    raise EncodeError(f"encode_users: user {user!r} has an empty history")
                continue
            keep_users.append(user)
            internal.append(np.array([index[h[k]] for k in known], dtype=np.int64))
            kept_ts.append(np.array([t[k] for k in known], dtype=np.int64))
        rejects_frame = _rejects(rejects, ("user_id", "item_id", "reason"))
        if not keep_users:
            empty = np.zeros(0, np.int64)
            return UserVectors([], np.zeros((0, self.dim), np.float32), empty, empty.copy(), rejects_frame)
        item_table = padded_item_table(np.stack(list(table.values())))  # [N+1, D], rows in `index` order
        result: UserEmbeddings = self.encoders.embed_users(item_table, internal, kept_ts, batch_size=self.user_batch_size)
        return UserVectors(keep_users, result.vectors, result.seq_len, result.last_event_ts, rejects_frame)

    def _histories(self, histories, timestamps, timestamp_unit: str = "seconds", errors: Errors = "raise"):
        rejects: list[dict[str, Any]] = []
        if isinstance(histories, pd.DataFrame):
            if timestamps is not None:
                raise EncodeError("encode_users: an event DataFrame carries its own timestamp column; drop timestamps=")
            missing = {"user_id", "item_id", "timestamp"} - set(histories.columns)
            if missing:
                raise EncodeError(f"encode_users: the event DataFrame lacks columns {sorted(missing)}")
            events, rejects = _contract_events(histories.reset_index(drop=True), timestamp_unit, errors)
            # (an exact repeat, a replayed log, is dropped once its item is known to have a vector, in
            # encode_users: the Spark job rejects every row of an unknown item, repeats included)
            events = events.sort_values(["timestamp", "_order"], kind="stable")
            users, hist, ts = [], [], []
            for user, group in events.groupby(events["user_id"].map(_str_id), sort=True):
                users.append(user)
                hist.append([_str_id(i) for i in group["item_id"]])
                ts.append(group["timestamp"].astype("int64").tolist())
            return users, hist, ts, rejects
        if timestamp_unit != "seconds":
            raise EncodeError(f"encode_users: timestamp_unit {timestamp_unit!r} applies to an event DataFrame; "
                              "timestamps= lists are taken as Unix seconds")
        hist = [[_str_id(i) for i in h] for h in histories]
        if timestamps is None:
            if self.manifest.get("use_timestamps"):
                raise EncodeError(f"encode_users: bundle {self.version} reads timestamps (user_llm.use_timestamps); pass timestamps=")
            ts = [[0] * len(h) for h in hist]
        else:
            ts = [list(t) for t in timestamps]
            bad = [u for u, (h, t) in enumerate(zip(hist, ts)) if len(h) != len(t)]
            if len(ts) != len(hist) or bad:
                where = f"user {bad[0]}" if bad else f"{len(ts)} timestamp lists for {len(hist)} histories"
                raise EncodeError(f"encode_users: timestamps do not align with histories ({where})")
        return [str(u) for u in range(len(hist))], hist, ts, rejects

    # -- scoring ----------------------------------------------------------------------------------

    def score(self, user: Any, items: Any) -> np.ndarray:
        """Scores in the model's similarity (cosine): `user` [D] -> [n], or [U, D] -> [U, n], against
        `items` [n, D] (an array or ItemVectors). float32; higher ranks first."""
        item_vectors = items.vectors if isinstance(items, ItemVectors) else items
        u = in_scoring_space(np.atleast_2d(np.asarray(user, np.float32)), SIMILARITY)
        v = in_scoring_space(np.atleast_2d(np.asarray(item_vectors, np.float32)), SIMILARITY)
        if u.shape[1] != v.shape[1]:
            raise EncodeError(f"score: user dimension {u.shape[1]} != item dimension {v.shape[1]}")
        scores = (u @ v.T).numpy()
        return scores[0] if np.ndim(user) == 1 else scores


class _TorchOnDevice:
    """An eager encoder on an accelerator, called like the CPU one: inputs move to the device, outputs
    come back to the CPU (embed_texts / embed_users build their batches on the CPU)."""

    def __init__(self, module: Any, device: str):  # an ItemLLM / UserLLM (torch runtime only)
        self.module = module.to(device).eval()
        self.device = torch.device(device)

    def __getattr__(self, name: str) -> Any:  # hidden_size, item_dim ...
        return getattr(self.module, name)

    def __call__(self, *tensors):
        moved = [t.to(self.device) if isinstance(t, torch.Tensor) else t for t in tensors]
        out = self.module(*moved)
        if isinstance(out, torch.Tensor):
            return out.cpu()
        out.user_embedding = out.user_embedding.cpu()
        return out
