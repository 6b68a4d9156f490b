"""Full-catalogue ranking metrics for next-item retrieval (Recall@K / HR@K and NDCG@K).

Conventions (shared with the rest of the project):

* Internal item indices are 1..N; index 0 is padding. Item vectors have shape [N+1, D] and row 0 is
  never ranked, for anyone.
* Each user has exactly one target item. Recall@K therefore equals HR@K.
* Items in a user's input history (`seen`) are removed from that user's ranking, except the user's own
  target, which always stays rankable even if it also appears in the history.
* Score = dot product user . item. Normalise the vectors first if you want cosine.

Ranks are pessimistic: the rank of the target is the number of *other* rankable items whose score is
greater than **or equal to** the target's score. A tie therefore always counts against the model, so a
scorer that gives every item the same score ranks the target last and gets 0, not a perfect score.
Scores that come out NaN (only possible through float overflow; inputs must be finite) are treated as
-inf, which is again pessimistic when the target's own score is NaN.

The computation is batched over users: one [user_batch_size, N+1] float32 score matrix (and a boolean
matrix of the same shape) exists at a time, computed with a CPU torch matmul.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["RankingMetrics", "full_ranking_metrics", "chance_recall", "chance_seen_sizes"]


@dataclass
class RankingMetrics:
    """Result of `full_ranking_metrics`.

    values: {"recall@10": ..., "ndcg@10": ..., ...}, means over users, in the order of `ks`.
    num_users: how many users were evaluated.
    ranks: int64 [U], the pessimistic 0-based rank of each user's target (0 = ranked first).
    """

    values: dict[str, float]
    num_users: int
    ranks: np.ndarray = field(repr=False)

    def ks(self) -> list[int]:
        """The cut-offs present in `values`, in order."""
        out: list[int] = []
        for key in self.values:
            k = int(key.split("@", 1)[1])
            if k not in out:
                out.append(k)
        return out

    def format_table(self, precision: int = 4) -> str:
        """A short aligned text table: one row per metric, one column per K."""
        ks = self.ks()
        names = []
        for key in self.values:
            name = key.split("@", 1)[0]
            if name not in names:
                names.append(name)
        header = ["metric"] + [f"@{k}" for k in ks]
        rows = [header]
        for name in names:
            rows.append([name] + [f"{self.values[f'{name}@{k}']:.{precision}f}" for k in ks])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(cells))
        lines.append(f"users: {self.num_users}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, float | int]:
        """JSON-friendly summary: the metric values plus num_users (ranks left out)."""
        out: dict[str, float | int] = dict(self.values)
        out["num_users"] = self.num_users
        return out

    def __str__(self) -> str:
        return self.format_table()


# ----------------------------------------------------------------------------------------------------
# input validation

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_float_matrix(x, name: str, shape_hint: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: expected a float array of shape {shape_hint}; got {type(x).__name__}") from exc
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise ValueError(f"{name}: expected a float array of shape {shape_hint}; got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape {shape_hint}; got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return t


def _as_targets(x, num_users: int, num_items: int) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    else:
        arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"targets: expected integer item indices of shape [U]=[{num_users}]; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"targets: expected a 1-D array of shape [U]=[{num_users}]; got shape {arr.shape}")
    if arr.shape[0] != num_users:
        raise ValueError(
            f"targets: expected shape [U]=[{num_users}] (one per row of user_vectors); got [{arr.shape[0]}]"
        )
    if arr.size and (arr.min() < 1 or arr.max() > num_items):
        bad = arr[(arr < 1) | (arr > num_items)]
        raise ValueError(
            f"targets: item indices must be in 1..N=1..{num_items} (0 is padding); "
            f"got {bad.size} out of range, e.g. {int(bad[0])}"
        )
    return torch.from_numpy(arr.astype(np.int64, copy=False))


def _flatten_seen(seen, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """All users' seen items as one flat int64 array plus offsets [U+1] into it.

    Accepts a sequence of U 1-D int arrays/lists/tensors, or a 2-D int array [U, L] (padded histories;
    0 entries are padding, which is excluded anyway). Values must be in 0..N.
    """
    if isinstance(seen, torch.Tensor):
        seen = seen.detach().cpu().numpy()
    if isinstance(seen, np.ndarray) and seen.ndim == 2:
        if seen.shape[0] != num_users:
            raise ValueError(f"seen: expected {num_users} rows (one per user); got shape {seen.shape}")
        if seen.size and not np.issubdtype(seen.dtype, np.integer):
            raise ValueError(f"seen: expected integer item indices; got dtype {seen.dtype}")
        flat = seen.astype(np.int64, copy=False).reshape(-1)
        offsets = np.arange(num_users + 1, dtype=np.int64) * seen.shape[1]
    else:
        try:
            n = len(seen)
        except TypeError as exc:
            raise ValueError(f"seen: expected a sequence of {num_users} int arrays; got {type(seen).__name__}") from exc
        if n != num_users:
            raise ValueError(f"seen: expected a sequence of length U={num_users} (one per user); got length {n}")
        parts = []
        lengths = np.empty(num_users, dtype=np.int64)
        for i, s in enumerate(seen):
            a = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
            if a.ndim != 1:
                if a.ndim != 0 and a.size != 0:
                    raise ValueError(f"seen[{i}]: expected a 1-D int array; got shape {a.shape}")
                a = a.reshape(-1)  # a scalar or an empty array of any shape
            if a.size and (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"seen[{i}]: expected integer item indices; got dtype {a.dtype}")
            parts.append(a.astype(np.int64, copy=False))
            lengths[i] = a.size
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    if flat.size and (flat.min() < 0 or flat.max() > num_items):
        bad = flat[(flat < 0) | (flat > num_items)]
        raise ValueError(f"seen: item indices must be in 0..N=0..{num_items}; got e.g. {int(bad[0])}")
    return flat, offsets


def _normalise_ks(ks) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks: expected positive integers; got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks: expected at least one cut-off")
    return out


# ----------------------------------------------------------------------------------------------------
# metrics


def full_ranking_metrics(
    user_vectors,
    item_vectors,
    targets,
    seen: Sequence,
    ks: Iterable[int] = (10, 50, 200),
    user_batch_size: int = 1024,
) -> RankingMetrics:
    """Recall@K (= HR@K, one target per user) and NDCG@K over the full item catalogue.

    Args:
        user_vectors: float [U, D] (torch or numpy).
        item_vectors: float [N+1, D]; row 0 is padding and is never ranked.
        targets: int [U], each user's target item index in 1..N.
        seen: length-U sequence of int arrays (or a padded int array [U, L]): items in each user's
            input history. They are removed from that user's ranking, except the user's own target,
            which always stays rankable. Values in 0..N; 0 (padding) is ignored.
        ks: cut-offs K.
        user_batch_size: users per chunk; only one [user_batch_size, N+1] score matrix is alive at once.

    Ranking rule (pessimistic ties, on purpose): the rank of the target is the number of rankable
    items - not padding, not seen, not the target itself - whose score is >= the target's score.
    A tie always counts against the target, so a constant scorer gets rank = (number of other rankable
    items) and scores 0 instead of perfect.

    Recall@K = mean(rank < K); NDCG@K = mean(1 / log2(rank + 2) if rank < K else 0).

    Computed on CPU in float32 with torch matmul. Raises ValueError naming the argument when shapes,
    dtypes or index ranges are wrong.
    """
    users = _as_float_matrix(user_vectors, "user_vectors", "[U, D]")
    items = _as_float_matrix(item_vectors, "item_vectors", "[N+1, D] (row 0 = padding)")
    num_users, dim = users.shape
    if num_users == 0:
        raise ValueError("user_vectors: expected at least one user; got shape [0, D]")
    if items.shape[0] < 2:
        raise ValueError(
            f"item_vectors: expected shape [N+1, D] with N >= 1 (row 0 = padding); got {tuple(items.shape)}"
        )
    if items.shape[1] != dim:
        raise ValueError(
            f"item_vectors: expected D={dim} columns to match user_vectors [U, D]={tuple(users.shape)}; "
            f"got shape {tuple(items.shape)}"
        )
    num_items = items.shape[0] - 1
    tgt = _as_targets(targets, num_users, num_items)
    seen_flat, seen_offsets = _flatten_seen(seen, num_users, num_items)
    ks_list = _normalise_ks(ks)
    if isinstance(user_batch_size, bool) or not isinstance(user_batch_size, (int, np.integer)) or user_batch_size < 1:
        raise ValueError(f"user_batch_size: expected a positive integer; got {user_batch_size!r}")
    batch = int(user_batch_size)

    items_t = items.t().contiguous()  # [D, N+1]
    seen_rows_all = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(seen_offsets))
    ranks = torch.empty(num_users, dtype=torch.int64)
    neg_inf = float("-inf")

    with torch.no_grad():
        for start in range(0, num_users, batch):
            stop = min(start + batch, num_users)
            b = stop - start
            scores = users[start:stop] @ items_t  # [b, N+1] float32
            torch.nan_to_num_(scores, nan=neg_inf, posinf=float("inf"), neginf=neg_inf)
            rows = torch.arange(b)
            chunk_tgt = tgt[start:stop]
            target_scores = scores[rows, chunk_tgt]  # gathered before any masking
            counted = scores >= target_scores.unsqueeze(1)  # [b, N+1] bool
            del scores
            counted[:, 0] = False  # padding
            lo, hi = seen_offsets[start], seen_offsets[stop]
            if hi > lo:
                s_rows = torch.from_numpy(seen_rows_all[lo:hi] - start)
                s_cols = torch.from_numpy(seen_flat[lo:hi])
                counted[s_rows, s_cols] = False  # seen items
            counted[rows, chunk_tgt] = False  # the target is not ranked against itself
            ranks[start:stop] = counted.sum(dim=1, dtype=torch.int32)  # int32: ~2x faster than int64, N < 2**31
            del counted

    ranks_np = ranks.numpy().astype(np.int64, copy=False)
    ranks_f = ranks_np.astype(np.float64)
    gains = 1.0 / np.log2(ranks_f + 2.0)
    values: dict[str, float] = {}
    for k in ks_list:
        values[f"recall@{k}"] = float(np.mean(ranks_np < k))
    for k in ks_list:
        values[f"ndcg@{k}"] = float(np.mean(np.where(ranks_np < k, gains, 0.0)))
    return RankingMetrics(values=values, num_users=int(num_users), ranks=ranks_np)


def chance_seen_sizes(seen, targets) -> np.ndarray:
    """Per user, s for `chance_recall`: the distinct seen items that are removed from the ranking,
    i.e. neither padding (0) nor the user's own target, which stays rankable even when the history
    holds it (repeat consumption: u1 = 1, 2, 3, 1, 2 has target 2 and s = 2, not 3).

    Args:
        seen: length-U sequence of int arrays (the histories, as for full_ranking_metrics).
        targets: int [U], each user's target in 1..N.
    Returns: int64 [U]."""
    targets = np.asarray(targets)
    if len(seen) != len(targets):
        raise ValueError(f"seen: expected one history per target ({len(targets)}); got {len(seen)}")
    out = np.empty(len(targets), dtype=np.int64)
    for u, (history, target) in enumerate(zip(seen, targets)):
        distinct = np.unique(np.asarray(history, dtype=np.int64))
        out[u] = int(((distinct != 0) & (distinct != int(target))).sum())
    return out


def chance_recall(k: int, num_items: int, seen_sizes) -> float:
    """Expected Recall@K of a uniformly random ranking.

    With M other rankable items, a random target rank is uniform on 0..M, so P(rank < k) =
    min(1, k / (M + 1)) = min(1, k / (num_items - s)), where s is the number of distinct seen items that
    are neither the target nor padding. Returns the mean over users.

    Args:
        k: the cut-off.
        num_items: N, the catalogue size (padding not included).
        seen_sizes: per-user s (array-like [U], or a scalar for every user); `chance_seen_sizes`
            computes it from histories and targets.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive integer; got {k!r}")
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 1:
        raise ValueError(f"num_items: expected a positive integer; got {num_items!r}")
    s = np.atleast_1d(np.asarray(seen_sizes, dtype=np.float64))
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"seen_sizes: expected a non-empty 1-D array [U]; got shape {s.shape}")
    if (s < 0).any() or (s > num_items - 1).any():
        raise ValueError(f"seen_sizes: each must be in 0..num_items-1={num_items - 1} (the target stays rankable)")
    return float(np.mean(np.minimum(1.0, k / (num_items - s))))
