"""Request-time scoring: read the HLLM features online, assemble them by the feature config, score.

    scorer = RequestScorer(load_ranker("outputs/ranker/saved_model"), open_store(cfg.store), fc,
                           click_head=click_head_for(fc, bundle_dir))   # None unless fc has click_score
    scored = scorer.score("42", ["1", "50", "181"])          # now = the request time
    scored.scores, scored.user_found, scored.items_found, scored.read_ms, scored.score_ms

The one request-time scoring path (the feature store only reads rows; it does not score). The same
`assemble_features` and `model_inputs` as training, so a cold-start user (no online row, or a
row older than max_staleness) gets exactly the defaults the ranker was trained with. Rows of another
bundle version than the ranker's count as missing: a user embedding is never scored against an item
embedding of another version, and a ranker never reads embeddings of a bundle it was not trained on.

Missing data never fails a request: reads ask the store for `[n, D]` rows with D the ranker's embedding
width (from its saved feature schema), so a request none of whose candidates is online still gets
NaN rows, then every missing user and item its cold-start default. A None id is refused with a
ValueError naming it (as a string it would read the row of a user called "None").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from feature_gen.store.online_io import OnlineIO
from feature_gen.store.schema import ITEM_ID, USER_ID
from ranker_integration.click_head import check_click_head
from ranker_integration.feature_config import ANY_VERSION, FeatureConfig
from ranker_integration.feature_values import FeatureRows, assemble_features
from ranker_integration.ranker import SavedRanker, model_inputs

if TYPE_CHECKING:
    from feature_gen.store.feature_store import HLLMFeatureStore


@dataclass
class ScoredRequest:
    user_id: str
    item_ids: list[str]
    scores: np.ndarray  # [n] click probability
    user_found: bool  # an online user row of the ranker's bundle version
    items_found: np.ndarray  # [n] bool
    read_ms: float  # online feature reads
    score_ms: float  # assembly + model
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [n, dim], what the ranker read


def read_online_features(store: HLLMFeatureStore, user_id, item_ids: Sequence, bundle_version: str, item_dim: int,
                         now_ts: int, online: OnlineIO | None = None) -> FeatureRows:
    """One request's online feature rows [n = len(item_ids)]: the user's embedding repeated per candidate
    and each candidate's embedding, as of `now_ts` (unix seconds). A row of another bundle version than
    `bundle_version` counts as missing (found False, NaN vector), exactly like no row: the ranker then
    uses the defaults it was trained with, and a user is never scored against another version's items."""
    _refuse_missing_ids(user_id, item_ids)
    ids = [str(i) for i in item_ids]
    n = len(ids)
    # 1 user + n items in one round trip per store, vectors decoded with numpy (the same rows as the
    # store's get_online_features reads; tests/test_online_io.py); a scorer passes its OnlineIO so the
    # views are resolved once, not per request
    user, items = (online or OnlineIO(store)).request_rows(str(user_id), ids)
    # D comes from the ranker's schema (item_dim), never from what was found: a read that finds no
    # candidate has vectors [n, 0], and a row of another width belongs to another bundle: both missing
    user_ok = bool(user.found[0] and user.bundle_versions[0] == bundle_version and user.vectors.shape[1] == item_dim)
    items_ok = (items.found & (np.asarray(items.bundle_versions, dtype=object) == bundle_version)
                & (items.vectors.shape[1] == item_dim))
    user_vec = user.vectors[0] if user_ok else np.full(item_dim, np.nan, np.float32)
    item_vectors = np.full((n, item_dim), np.nan, dtype=np.float32)
    if items_ok.any():
        item_vectors[items_ok] = items.vectors[items_ok]
    return FeatureRows(
        at_ts=np.full(n, now_ts, dtype=np.int64),
        user_vectors=np.repeat(user_vec[None, :], n, axis=0),
        user_found=np.full(n, user_ok),
        user_seq_len=np.full(n, user.seq_len[0] if user_ok else -1, dtype=np.int64),
        user_last_event_ts=np.full(n, user.last_event_ts[0] if user_ok else -1, dtype=np.int64),
        item_vectors=item_vectors,
        item_found=items_ok,
    )


class RequestScorer:
    """The one request-time scoring path: online reads (read_online_features) -> assemble_features ->
    the ranker. `click_head`: the bundle's late-fusion head (ranker_integration/click_head.py) when the
    config has a late_fusion feature (click_score), the same one the training set was built with."""

    def __init__(self, ranker: SavedRanker, store: HLLMFeatureStore, fc: FeatureConfig, click_head=None):
        if fc.bundle_version not in (ANY_VERSION, ranker.bundle_version):
            raise ValueError(f"feature config is pinned to {fc.bundle_version}, the ranker was trained on "
                             f"{ranker.bundle_version}")
        if ranker.use_hllm:
            check_click_head(fc, click_head, ranker.bundle_version, "RequestScorer")
        self.ranker, self.store, self.fc, self.click_head = ranker, store, fc, click_head
        self.item_dim = int(ranker.meta["dense_dims"].get("item_embedding", 0))
        self.online = OnlineIO(store)

    def score(self, user_id, item_ids: Sequence, now_ts: int | None = None) -> ScoredRequest:
        now = int(time.time()) if now_ts is None else int(now_ts)
        _refuse_missing_ids(user_id, item_ids)
        ids = [str(i) for i in item_ids]
        n = len(ids)
        started = time.perf_counter()
        features: dict[str, np.ndarray] = {}
        user_ok, items_ok = False, np.zeros(n, dtype=bool)
        read_ms = 0.0
        if self.ranker.use_hllm:
            rows = read_online_features(self.store, user_id, ids, self.ranker.bundle_version, self.item_dim, now,
                                        self.online)
            read_ms = (time.perf_counter() - started) * 1e3
            user_ok, items_ok = bool(n and rows.user_found[0]), rows.item_found
            features = assemble_features(self.fc, self.item_dim, rows, self.click_head)
        t = time.perf_counter()
        frame = pd.DataFrame({USER_ID: [str(user_id)] * n, ITEM_ID: ids, "timestamp": np.full(n, now, dtype=np.int64)})
        scores = self.ranker.score(model_inputs(frame, features, self.fc, self.ranker.use_hllm))
        return ScoredRequest(str(user_id), ids, scores, user_ok, items_ok, read_ms, (time.perf_counter() - t) * 1e3,
                             features)


def _refuse_missing_ids(user_id, item_ids: Sequence) -> None:
    if _is_missing(user_id):
        raise ValueError(f"user_id is {user_id!r}; expected an id (a cold-start user still has one)")
    bad = [k for k, i in enumerate(item_ids) if _is_missing(i)]
    if bad:
        raise ValueError(f"item_ids: {len(bad)} missing id(s), first at position {bad[0]} ({item_ids[bad[0]]!r})")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)
