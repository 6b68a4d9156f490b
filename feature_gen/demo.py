"""`make demo` / `hllm demo`: the pipeline as far as it exists, on embedded defaults.

Today: MovieLens-100K -> item text -> frozen SmolLM2 Item LLM -> catalogue embeddings -> User LLM ->
user-interest embeddings -> leave-one-out full-ranking evaluation of reference scorers, nearest
neighbours of well-known movies, and a Markdown report. Training (`hllm train`), the Spark jobs, the
feature store, the streaming refresh and the ranker join this run as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from feature_gen.config import HLLMConfig, load_config

WELL_KNOWN = ["Star Wars", "Toy Story", "Pulp Fiction", "Fargo", "Scream"]
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def nearest_neighbours(items: pd.DataFrame, table: torch.Tensor, titles: list[str], k: int = 5) -> dict[str, list[str]]:
    normed = torch.nn.functional.normalize(table[1:], dim=-1)
    names = items["title"].fillna("").tolist()
    out = {}
    for wanted in titles:
        matches = [i for i, n in enumerate(names) if n == wanted] or [i for i, n in enumerate(names) if n.startswith(wanted)]
        if not matches:
            continue
        i = matches[0]
        sims = normed @ normed[i]
        sims[i] = -2.0
        out[names[i]] = [names[j] for j in sims.topk(k).indices.tolist()]
    return out


def run_demo(output_dir: str = "outputs/demo", config_path: str | None = None) -> int:
    from feature_gen import reference_scorers
    from feature_gen.data.sequences import leave_one_out, load_interaction_data
    from feature_gen.evaluate_cli import evaluate_vectors
    from feature_gen.inference import embed_catalogue, embed_users
    from feature_gen.model import build_item_llm, build_user_llm

    torch.manual_seed(0)
    started = time.perf_counter()
    cfg: HLLMConfig = load_config(config_path or DEFAULT_CONFIG)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    t = _step(f"data: {cfg.data.source}")
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    print(f"{data.num_users} users, {data.num_items} items, {sum(map(len, data.sequences))} interactions, "
          f"{len(data.rejects)} items rejected; leave-one-out: last = test, second last = validation "
          f"({time.perf_counter() - t:.1f} s)")

    t = _step("Item LLM: catalogue embeddings")
    item_llm, tokenizer, item_desc = build_item_llm(cfg)
    print(f"Item LLM {item_desc}, pooling={cfg.item_llm.pooling}, hidden {item_llm.hidden_size}")
    table = embed_catalogue(item_llm, tokenizer, data.items, cfg.item_text, padding_side=cfg.item_llm.padding_side)
    item_path = out / "item_embeddings.parquet"
    pd.DataFrame({"item_id": data.items["item_id"].to_numpy(), "title": data.items["title"].to_numpy(),
                  "embedding": list(table[1:].numpy())}).to_parquet(item_path)
    print(f"{data.num_items} item embeddings -> {item_path} ({time.perf_counter() - t:.1f} s)")

    t = _step("User LLM: user-interest embeddings (untrained User LLM until `hllm train` lands)")
    user_llm, user_desc = build_user_llm(cfg, item_llm.hidden_size)
    users = embed_users(user_llm, table, split.test.histories, split.test.history_timestamps, cfg.data.max_seq_len)
    user_path = out / "user_embeddings.parquet"
    pd.DataFrame({"user_id": data.user_ids, "embedding": list(users.vectors), "seq_len": users.seq_len,
                  "last_event_ts": users.last_event_ts}).to_parquet(user_path)
    print(f"User LLM {user_desc}: {len(users.vectors)} user embeddings -> {user_path} ({time.perf_counter() - t:.1f} s)")

    t = _step("evaluation: test split, full ranking over the whole catalogue, seen items removed")
    scorers = {
        "random": reference_scorers.random_vectors(data.num_users, data.num_items),
        "popularity": reference_scorers.popularity_vectors(split.train, data.num_users, data.num_items),
        "content kNN (frozen Item LLM)": (reference_scorers.content_user_vectors(table, split.test.histories), table),
        "untrained User LLM": (torch.from_numpy(users.vectors), table),
    }
    results = {}
    for name, (u, i) in scorers.items():
        results[name] = evaluate_vectors(u, i, split.test, cfg).values
    frame = pd.DataFrame(results).T
    print(frame.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"({time.perf_counter() - t:.1f} s)")

    _step("nearest neighbours by item embedding (cosine)")
    neighbours = nearest_neighbours(data.items, table, WELL_KNOWN)
    for title, nbrs in neighbours.items():
        print(f"{title:28s} -> {'; '.join(nbrs)}")

    report = out / "report.md"
    lines = [
        "# hllm-features demo report", "",
        f"- data: {cfg.data.source}, {data.num_users} users, {data.num_items} items, leave-one-out test split",
        f"- Item LLM: {item_desc} (pooling {cfg.item_llm.pooling}); User LLM: {user_desc}",
        f"- outputs: `{item_path}`, `{user_path}`", "",
        "## Full-ranking metrics (test split)", "", frame.to_markdown(floatfmt=".4f"), "",
        "## Nearest neighbours by item embedding", "",
        *[f"- **{t}**: {', '.join(n)}" for t, n in neighbours.items()], "",
    ]
    report.write_text("\n".join(lines))
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"\nreport -> {report}; metrics -> {out / 'metrics.json'}; total {time.perf_counter() - started:.0f} s")
    return 0
