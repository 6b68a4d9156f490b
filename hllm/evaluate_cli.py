"""`hllm evaluate`: a scorer through the leave-one-out, full-ranking protocol."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation.protocol import chance_recalls, evaluate_vectors


def content_item_table(cfg: HLLMConfig, items) -> torch.Tensor:
    from feature_gen.inference.encoders import embed_catalogue
    from feature_gen.model.hllm import build_item_llm

    item_llm, tokenizer, _ = build_item_llm(cfg)
    return embed_catalogue(item_llm, tokenizer, items, cfg.item_text, padding_side=cfg.item_llm.padding_side)


def run_evaluate(cfg: HLLMConfig, scorer: str, split: str, seed: int = 0, as_json: bool = False,
                 output: str | None = None) -> int:
    """Print the metrics table (or, `as_json`, one JSON object); `output`: also write the JSON there."""
    from feature_gen.evaluation import reference_scorers

    data = load_interaction_data(cfg.data, cfg.item_text)
    loo = leave_one_out(data)
    eval_set = loo.test if split == "test" else loo.valid
    similarity = "dot"  # reference scorers' vectors are built for inner products
    if scorer == "random":
        users, items = reference_scorers.random_vectors(data.num_users, data.num_items, seed=seed)
    elif scorer == "popularity":
        users, items = reference_scorers.popularity_vectors(loo.train, data.num_users, data.num_items)
    else:
        items = content_item_table(cfg, data.items)
        users = reference_scorers.content_user_vectors(items, eval_set.histories)
        similarity = "cosine"  # a text-embedding kNN compares directions
    start = time.perf_counter()
    metrics = evaluate_vectors(users, items, eval_set, cfg, similarity)
    seconds = time.perf_counter() - start
    chance = chance_recalls(eval_set, data.num_items, cfg.eval.ks)
    result = {"source": cfg.data.source, "split": split, "scorer": scorer, "seed": seed, "users": metrics.num_users,
              "items": data.num_items, "metrics": {k: float(v) for k, v in metrics.values.items()},
              "chance_recall": chance,
              "seconds": round(seconds, 3)}
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result))
        return 0
    print(f"{cfg.data.source} {split} split, scorer={scorer}: {metrics.num_users} users x {data.num_items} items "
          f"({seconds:.2f} s)")
    print(metrics.format_table())
    print("chance recall: " + "  ".join(f"@{k.split('@')[1]} {v:.4f}" for k, v in chance.items()))
    return 0
