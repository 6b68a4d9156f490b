"""The demo's sanity table: nearest neighbours by item embedding (cosine, the movie itself excluded)."""

import numpy as np
import pandas as pd

from hllm.demo_report import nearest_neighbours


def test_nearest_neighbours_by_cosine_excluding_the_movie():
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": ["Star Wars", "Return of the Jedi", "Fargo", "Babe"]})
    vectors = np.array([[1, 0], [10, 1], [0, 1], [-1, 0]], dtype=np.float32)  # scale must not matter
    out = nearest_neighbours(items, vectors, ["Star Wars (1977)", "Fargo (1996)", "Casablanca (1942)"], k=2)
    assert out == {"Star Wars": ["Return of the Jedi", "Fargo"], "Fargo": ["Return of the Jedi", "Star Wars"]}


def test_retrieval_verdict_states_the_goal_and_points_at_the_quality_suite_when_missed():
    from hllm.demo_report import retrieval_verdict

    def frame(hllm):
        return pd.DataFrame({"recall@10": [hllm, 0.05, 0.08]},
                            index=["HLLM (trained User LLM)", "content kNN (frozen Item LLM)", "popularity"])

    met = retrieval_verdict(frame(0.13), "full softmax, cosine")
    assert "1.62 x popularity" in met and met.endswith("met.")
    missed = retrieval_verdict(frame(0.09), "full softmax, cosine")
    assert "**not met**" in missed and "BENCHMARKS.md" in missed and "content kNN 0.0500" in missed
