"""The item table every user-embedding path indexes: `[N+1, D]` float32, row 0 the padding index (zeros).

Internal item indices are 1..N (see feature_gen.evaluation.metrics); a padded history position holds 0,
so the User LLM's input there is a zero vector whatever the mask says. Every builder of such a table
(the stage-2 catalogue cache, the Spark user job, the streaming refresh, snapshots, evaluation) calls
`padded_item_table`, and every lookup by external item id goes through `ItemTable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch


def padded_item_table(vectors: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """Item vectors [N, D] (rows in internal-index order 1..N) -> the item table [N+1, D] float32 with a
    zero row 0. Raises ValueError for anything that is not N >= 1 rows of one width."""
    if isinstance(vectors, torch.Tensor):
        rows = vectors.detach().to(torch.float32).cpu()
    else:
        if not isinstance(vectors, np.ndarray):
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in vectors]) if len(vectors) else np.zeros((0, 0))
        rows = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    if rows.dim() != 2 or rows.size(0) == 0:
        raise ValueError(f"item vectors: expected [N, D] with N >= 1; got shape {tuple(rows.shape)}")
    return torch.cat([rows.new_zeros(1, rows.size(1)), rows], dim=0)


@dataclass
class ItemTable:
    """Item vectors keyed by external item id: `vectors` [N+1, D] (row 0 = padding) and `index`, the row
    of each id (1..N)."""

    vectors: torch.Tensor
    index: dict[str, int]

    @classmethod
    def of(cls, item_ids: Iterable, vectors: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> "ItemTable":
        """Rows in the order of `item_ids` (ids compared as strings; the first of a repeated id wins)."""
        ids = [str(i) for i in item_ids]
        table = padded_item_table(vectors)
        if len(ids) != table.size(0) - 1:
            raise ValueError(f"item table: {len(ids)} item ids for {table.size(0) - 1} vectors")
        index: dict[str, int] = {}
        for row, item_id in enumerate(ids, start=1):
            index.setdefault(item_id, row)
        return cls(table, index)

    def rows(self, item_ids: Iterable) -> np.ndarray:
        """[n] int64 internal indices of `item_ids`; KeyError naming the first id the table lacks."""
        out = []
        for i in item_ids:
            row = self.index.get(str(i))
            if row is None:
                raise KeyError(f"item_id {str(i)!r} has no vector in the item table ({len(self.index)} items)")
            out.append(row)
        return np.asarray(out, dtype=np.int64)
