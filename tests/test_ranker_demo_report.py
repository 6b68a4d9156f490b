"""The demo's sanity table: nearest neighbours by item embedding (cosine, the movie itself excluded)."""

import numpy as np
import pandas as pd

from hllm.demo_report import nearest_neighbours


def test_nearest_neighbours_by_cosine_excluding_the_movie():
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "title": ["Star Wars", "Return of the Jedi", "Fargo", "Babe"]})
    vectors = np.array([[1, 0], [10, 1], [0, 1], [-1, 0]], dtype=np.float32)  # scale must not matter
    out = nearest_neighbours(items, vectors, ["Star Wars (1977)", "Fargo (1996)", "Casablanca (1942)"], k=2)
    assert out == {"Star Wars": ["Return of the Jedi", "Fargo"], "Fargo": ["Return of the Jedi", "Star Wars"]}
