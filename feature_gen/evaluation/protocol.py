"""The one evaluation protocol: leave-one-out, full ranking against the whole catalogue, the user's
seen items removed, in one similarity space.

Every caller (the trainer's model selection, `hllm evaluate`, the demo, the benchmarks) ranks through
`evaluate_vectors`, so two callers can never rank the same vectors differently. The similarity is the
one the model is trained on: `cosine` for HLLM and the ID baseline (their losses score normalised
vectors); `dot` only for reference scorers whose vectors are built to be compared by inner product
(popularity counts, random vectors).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import EvalSet
from feature_gen.evaluation.metrics import RankingMetrics, chance_recall, chance_seen_sizes, full_ranking_metrics

Similarity = Literal["cosine", "dot"]


def seen_items(eval_set: EvalSet) -> list[np.ndarray]:
    """What is removed from each user's ranking: every item in the history before the target."""
    return [np.unique(h) for h in eval_set.histories]


def in_scoring_space(vectors, similarity: Similarity) -> torch.Tensor:
    """`vectors` [n, D] as float32, L2-normalised for cosine (zero rows stay zero), unchanged for dot."""
    x = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors).float()
    if similarity == "cosine":
        return torch.nn.functional.normalize(x, dim=-1)
    if similarity == "dot":
        return x
    raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")


def evaluate_vectors(
    user_vectors, item_vectors, eval_set: EvalSet, cfg: HLLMConfig, similarity: Similarity = "cosine"
) -> RankingMetrics:
    """Recall/NDCG@K of `user_vectors` [U, D] against the item table `item_vectors` [N+1, D] (row 0 =
    padding) for `eval_set`'s targets, seen items removed, scored by `similarity`."""
    return full_ranking_metrics(
        in_scoring_space(user_vectors, similarity), in_scoring_space(item_vectors, similarity),
        eval_set.targets, seen_items(eval_set), ks=cfg.eval.ks, user_batch_size=cfg.eval.user_batch_size,
    )


def chance_recalls(eval_set: EvalSet, num_items: int, ks) -> dict[str, float]:
    """Expected Recall@K of a uniformly random ranking under this protocol, averaged over `eval_set`'s
    users: {"recall@K": float in [0, 1]} for each K in `ks`. Each user ranks the `num_items` items less
    the seen ones that `seen_items` removes (the target stays rankable even when the history holds it);
    the floor a model's recall is read against, e.g. on a cold-item split whose test users differ by seed.

    Raises ValueError (from `chance_recall`) for an empty eval set or a K below 1."""
    sizes = chance_seen_sizes(seen_items(eval_set), eval_set.targets)
    return {f"recall@{k}": chance_recall(k, num_items, sizes) for k in ks}
