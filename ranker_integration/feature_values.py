"""Feature rows -> the ranker's input columns, by the feature config: one function for training and serving.

The training-set builder (offline rows joined point in time) and the request-time scorer (online rows)
both call `assemble_features`, so a cold-start default, a staleness cut-off or the user·item score is
computed the same way on both sides (no training/serving skew).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_gen.store.schema import EMBEDDING, ITEM_EMBEDDING, LAST_EVENT_TS, SEQ_LEN, USER_EMBEDDING
from ranker_integration.feature_config import FeatureConfig, FeatureSpec, dimension_of


@dataclass
class FeatureRows:
    """Raw feature-store values for n (user, item, time) rows; NaN / -1 and found=False where missing."""

    at_ts: np.ndarray  # [n] int64 unix seconds: the label's or the request's time
    user_vectors: np.ndarray  # [n, D] float32
    user_found: np.ndarray  # [n] bool
    user_seq_len: np.ndarray  # [n] int64
    user_last_event_ts: np.ndarray  # [n] int64
    item_vectors: np.ndarray  # [n, D] float32
    item_found: np.ndarray  # [n] bool


def _fresh(spec: FeatureSpec, rows: FeatureRows, found: np.ndarray, row_ts: np.ndarray | None) -> np.ndarray:
    """found and not older than the feature's max_staleness at the row's time."""
    if spec.staleness is None or row_ts is None:
        return found
    return found & (rows.at_ts - row_ts <= int(spec.staleness.total_seconds()))


def _default(spec: FeatureSpec, n: int, dim: int) -> np.ndarray:
    value = np.asarray(spec.default, dtype=np.float32)
    return np.broadcast_to(value, (n, dim)).astype(np.float32).copy()


def assemble_features(fc: FeatureConfig, item_dim: int, rows: FeatureRows) -> dict[str, np.ndarray]:
    """name -> float32 [n, dim] for every feature of `fc`; a missing or stale value takes its default."""
    n = len(rows.at_ts)
    user_ts = rows.user_last_event_ts
    view_values = {
        (USER_EMBEDDING, EMBEDDING): (rows.user_vectors, rows.user_found, user_ts),
        (USER_EMBEDDING, SEQ_LEN): (rows.user_seq_len[:, None], rows.user_found, user_ts),
        (USER_EMBEDDING, LAST_EVENT_TS): (user_ts[:, None], rows.user_found, user_ts),
        (ITEM_EMBEDDING, EMBEDDING): (rows.item_vectors, rows.item_found, None),
    }
    out: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for spec in fc.features:  # views first, so request functions can use them
        if spec.source != "view":
            continue
        key = (spec.view, spec.field)
        if key not in view_values:
            raise KeyError(f"{spec.name}: the ranker does not read {spec.view}.{spec.field}")
        values, found, row_ts = view_values[key]
        ok = _fresh(spec, rows, found, row_ts)
        col = _default(spec, n, dimension_of(spec, item_dim))
        col[ok] = values[ok].astype(np.float32)
        out[spec.name], present[spec.name] = col, ok
    for spec in fc.features:
        if spec.source != "request":
            continue
        col = _default(spec, n, 1)
        if spec.function == "cosine":
            a, b = spec.inputs
            ok = present[a] & present[b]
            col[ok, 0] = row_cosine(out[a][ok], out[b][ok])
        elif spec.function == "age_seconds":
            view, _, field = spec.inputs[0].partition(":")
            values, found, row_ts = view_values[(view, field)]
            ok = _fresh(spec, rows, found, row_ts)
            col[ok, 0] = (rows.at_ts[ok] - values[ok, 0]).astype(np.float32)
        out[spec.name], present[spec.name] = col, ok
    return {f.name: out[f.name] for f in fc.features}


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine (0 where a norm is 0) over rows that each pair a user and an item: the request-time
    user·item score, in the space the model is trained on (the one definition, training and serving)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.divide((a64 * b64).sum(axis=1), norms, out=np.zeros(len(a64)), where=norms > 0).astype(np.float32)
