"""`hllm evaluate`: a scorer through the leave-one-out, full-ranking protocol."""

from __future__ import annotations

import time

import numpy as np
import torch

from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import EvalSet, leave_one_out, load_interaction_data
from feature_gen.evaluation import RankingMetrics, chance_recall, full_ranking_metrics


def seen_items(eval_set: EvalSet) -> list[np.ndarray]:
    """What is removed from each user's ranking: everything in the history before the target."""
    return [np.unique(h) for h in eval_set.histories]


def evaluate_vectors(
    user_vectors: torch.Tensor, item_vectors: torch.Tensor, eval_set: EvalSet, cfg: HLLMConfig
) -> RankingMetrics:
    return full_ranking_metrics(
        user_vectors, item_vectors, eval_set.targets, seen_items(eval_set),
        ks=cfg.eval.ks, user_batch_size=cfg.eval.user_batch_size,
    )


def content_item_table(cfg: HLLMConfig, items) -> torch.Tensor:
    from feature_gen.inference import embed_catalogue
    from feature_gen.model import build_item_llm

    item_llm, tokenizer, _ = build_item_llm(cfg)
    return embed_catalogue(item_llm, tokenizer, items, cfg.item_text, padding_side=cfg.item_llm.padding_side)


def run_evaluate(cfg: HLLMConfig, scorer: str, split: str, seed: int = 0) -> int:
    from feature_gen import reference_scorers

    data = load_interaction_data(cfg.data, cfg.item_text)
    loo = leave_one_out(data)
    eval_set = loo.test if split == "test" else loo.valid
    if scorer == "random":
        users, items = reference_scorers.random_vectors(data.num_users, data.num_items, seed=seed)
    elif scorer == "popularity":
        users, items = reference_scorers.popularity_vectors(loo.train, data.num_users, data.num_items)
    else:
        items = content_item_table(cfg, data.items)
        users = reference_scorers.content_user_vectors(items, eval_set.histories)
    start = time.perf_counter()
    metrics = evaluate_vectors(users, items, eval_set, cfg)
    seconds = time.perf_counter() - start
    print(f"{cfg.data.source} {split} split, scorer={scorer}: {metrics.num_users} users x {data.num_items} items "
          f"({seconds:.2f} s)")
    print(metrics.format_table())
    seen_sizes = [len(s) for s in seen_items(eval_set)]
    chance = {k: chance_recall(k, data.num_items, seen_sizes) for k in cfg.eval.ks}
    print("chance recall: " + "  ".join(f"@{k} {v:.4f}" for k, v in chance.items()))
    return 0
