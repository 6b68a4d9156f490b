"""Toy catalogues whose answer is known, and the tiny-model configs the trainer tests run on.

Every user walks the item cycle 1 -> 2 -> ... -> N -> 1 from a random start, so the next item is a
function of the current one (a sequence model that learns reaches recall@1 near 1). `rated=True` adds
what the discriminative tests need: a rating per event (even items liked, 5.0; odd disliked, 1.0),
timestamps jittered within the minute, and a user whose every event falls in the labelled period.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from feature_gen.config import HLLMConfig, config_from_dict

# One tiny random Llama (hidden 32, one layer) for both LLMs; the User LLM gets another seed.
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def cycle_walks(folder: Path, num_items: int = 30, num_users: int = 60, length: int = 12, rated: bool = False,
                ratings: bool = True) -> tuple[Path, Path]:
    """Write items.parquet (item_id, title, tags) and the interactions (user_id, item_id, timestamp
    in seconds; + rating when `rated` and `ratings`) to `folder`; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = pd.DataFrame({"item_id": np.arange(1, num_items + 1),
                          "title": [f"item number {i}" for i in range(1, num_items + 1)],
                          "tags": [["even" if i % 2 == 0 else "odd"] for i in range(1, num_items + 1)]})
    rows = []
    for u in range(num_users):
        start = int(rng.integers(num_items))
        for t in range(length):
            item = (start + t) % num_items + 1
            row = {"user_id": f"u{u}", "item_id": item, "timestamp": 1_700_000_000 + 60 * t}
            if rated:
                row["timestamp"] += int(rng.integers(30))
                if ratings:
                    row["rating"] = 5.0 if item % 2 == 0 else 1.0
            rows.append(row)
    if rated:  # every event of this user is in the labelled period: the first has no history (cold start)
        rows += [{"user_id": "cold", "item_id": i, "timestamp": 1_700_000_600 + i, **({"rating": 5.0} if ratings else {})}
                 for i in (2, 4, 6)]
    items_path = folder / "items.parquet"
    inter_path = folder / ("inter.parquet" if rated else "interactions.parquet")
    items.to_parquet(items_path)
    pd.DataFrame(rows).to_parquet(inter_path)
    return items_path, inter_path


def toy_config(tmp_path: Path, **train) -> HLLMConfig:
    """Tiny HLLM (stage 1 unless `stage=` is passed) on the cycle catalogue; `train` overrides train.*."""
    items, inter = cycle_walks(tmp_path)
    raw = {
        "seed": 3,
        "data": {"source": "files", "items_path": str(items), "interactions_path": str(inter), "max_seq_len": 8},
        "item_text": {"prompt": "", "max_item_tokens": 32},
        "item_llm": {"source": "tiny_random", "tiny": TINY},
        "user_llm": {"source": "tiny_random", "tiny": {**TINY, "seed": 1}},
        # random tiny Llamas give near-identical item embeddings at init: the 0.99 mask would drop every negative
        "loss": {"temperature_init": 0.1, "nce_threshold": 1.0},
        "eval": {"ks": [1, 5, 10]},
        "train": {"output_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16, "lr": 3e-3,
                  "warmup_steps": 2, "stage1_max_seq_len": 8, "checkpoint_every_steps": 2, **train},
    }
    return config_from_dict(raw)


def agree_with_bundle(cfg: HLLMConfig, bundle_path) -> HLLMConfig:
    """`cfg` starting from the bundle at `bundle_path`, with the fields a run must share with its
    init_bundle (trainer/init_bundle.MUST_AGREE: item text, pooling, centering, timestamps; and its item adapter)
    taken from it."""
    from feature_gen.model.bundle import bundle_config
    from trainer.init_bundle import ADAPTER, MUST_AGREE

    raw, theirs = cfg.model_dump(), bundle_config(bundle_path).model_dump()
    raw["train"]["init_bundle"] = str(bundle_path)
    for dotted in (*MUST_AGREE, ADAPTER):
        *path, last = dotted.split(".")
        mine, src = raw, theirs
        for part in path:
            mine, src = mine[part], src[part]
        mine[last] = src[last]
    return config_from_dict(raw)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl (a step logged twice is an error)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            assert rec["step"] not in out, f"step {rec['step']} logged twice"
            out[rec["step"]] = rec["loss"]
    return out
