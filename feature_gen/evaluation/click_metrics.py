"""Ranking-quality metrics of a click model: AUC and GAUC (per-user AUC, weighted by the user's rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula, ties counted half; NaN with one class only."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: the mean of per-group AUCs weighted by the group's rows, over groups with both classes
    (a ranker orders one user's candidates, so this is the AUC that matters for it)."""
    frame = pd.DataFrame({"g": np.asarray(groups), "y": np.asarray(labels), "s": np.asarray(scores)})
    total, weight = 0.0, 0
    for _, g in frame.groupby("g", sort=False):
        value = auc(g["y"].to_numpy(), g["s"].to_numpy())
        if not np.isnan(value):
            total += value * len(g)
            weight += len(g)
    return total / weight if weight else float("nan")
