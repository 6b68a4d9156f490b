"""Facts of the MovieLens data sets that the quality notes lean on (BENCHMARKS.md, "Quality").

- rating gaps: seconds between a user's consecutive ratings (what the timestamps ablation feeds the
  User LLM, bucketed); MovieLens users rate many films in one sitting, so most gaps are ~0.
- item support: ratings per movie (how sparse the ID table's training signal is).

Reproduce: .venv/bin/python -m benchmarks.data_facts
"""

from __future__ import annotations

import numpy as np

from feature_gen.data.movielens import load_ml100k, load_ml_latest_small

COMMAND = ".venv/bin/python -m benchmarks.data_facts"
GAP_THRESHOLDS_S = {"0 s": 0, "< 1 min": 59, "< 1 h": 3599, "< 1 day": 86399}


def rating_gaps(interactions) -> np.ndarray:
    """Gaps (s) between each user's consecutive ratings, in time order (file order breaks ties)."""
    ordered = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    return ordered.groupby("user_id")["timestamp"].diff().dropna().to_numpy()


def facts(interactions) -> dict:
    """{"counts": ..., "fractions": ...} of one data set's interactions."""
    gaps = rating_gaps(interactions)
    per_item = interactions.groupby("item_id").size().to_numpy()
    counts = {"ratings": len(interactions), "gaps": len(gaps), "items rated": len(per_item),
              "ratings per item (median)": float(np.median(per_item))}
    fractions = {f"gaps {name}": float((gaps <= limit).mean()) for name, limit in GAP_THRESHOLDS_S.items()}
    fractions["items with 1-2 ratings"] = float((per_item <= 2).mean())
    return {"counts": counts, "fractions": fractions}


def run() -> dict:
    return {"ml-100k": facts(load_ml100k()[1]), "ml-latest-small": facts(load_ml_latest_small()[1])}


def markdown(result: dict) -> str:
    lines = ["| fact | " + " | ".join(result) + " |", "|---" * (len(result) + 1) + "|"]
    for part, fmt in (("counts", "{:,.0f}"), ("fractions", "{:.1%}")):
        for key in next(iter(result.values()))[part]:
            lines.append(f"| {key} | " + " | ".join(fmt.format(r[part][key]) for r in result.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    print(markdown(run()))
    print(f"\n{COMMAND}")


if __name__ == "__main__":
    main()
