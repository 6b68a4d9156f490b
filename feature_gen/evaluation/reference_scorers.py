"""Training-free scorers in the (user vectors, item vectors) form the evaluation harness takes.

- random: Gaussian vectors; its metrics must sit at chance (the harness's sanity check).
- popularity: every user gets the same ranking, by training-set count.
- content: item embeddings from a frozen Item LLM; a user is the mean of their most recent history
  items' normalised embeddings (item-to-item content similarity, the floor any trained model must beat).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def random_vectors(num_users: int, num_items: int, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_users, dim, generator=g), torch.randn(num_items + 1, dim, generator=g)


def popularity_vectors(train_sequences: Sequence[np.ndarray], num_users: int, num_items: int):
    counts = np.bincount(np.concatenate(train_sequences), minlength=num_items + 1).astype(np.float32)
    counts[0] = 0.0
    # Tiny deterministic jitter breaks exact ties by item id, so the pessimistic tie rule of the
    # harness does not punish popularity for the many items with equal counts.
    counts += np.linspace(0, 1e-3, num_items + 1, dtype=np.float32)
    return torch.ones(num_users, 1), torch.from_numpy(counts).view(-1, 1)


def content_user_vectors(item_table: torch.Tensor, histories: Sequence[np.ndarray], recent: int = 20) -> torch.Tensor:
    """[U, D] mean of the normalised embeddings of each user's `recent` latest items, normalised."""
    normed = torch.nn.functional.normalize(item_table, dim=-1)
    users = torch.stack([normed[torch.as_tensor(h[-recent:], dtype=torch.long)].mean(dim=0) for h in histories])
    return torch.nn.functional.normalize(users, dim=-1)
