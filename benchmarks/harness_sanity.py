"""Harness sanity check on real data: reference scorers on ML-100K (leave-one-out test, full ranking).

A random scorer must land at chance (Recall@10 ~ 10/1682); popularity is the classic floor.
Reproduce: .venv/bin/hllm evaluate --scorer random   (and --scorer popularity)
"""

from __future__ import annotations

from feature_gen.evaluation import reference_scorers
from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation.protocol import chance_recalls, evaluate_vectors

COMMAND = ".venv/bin/python -m benchmarks.harness_sanity"


def run(seeds=(0, 1, 2)) -> dict:
    cfg = HLLMConfig()
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    rows = {}
    for seed in seeds:
        u, i = reference_scorers.random_vectors(data.num_users, data.num_items, seed=seed)
        rows[f"random (seed {seed})"] = evaluate_vectors(u, i, split.test, cfg, "dot").values
    u, i = reference_scorers.popularity_vectors(split.train, data.num_users, data.num_items)
    rows["popularity"] = evaluate_vectors(u, i, split.test, cfg, "dot").values
    rows["chance (expected)"] = chance_recalls(split.test, data.num_items, cfg.eval.ks)
    return {"data": "ml-100k", "split": "leave-one-out test", "users": data.num_users, "items": data.num_items, "rows": rows}


def markdown(r: dict) -> str:
    cols = ["recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200"]
    lines = ["| scorer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, vals in r["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[c]:.4f}" if c in vals else "" for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
