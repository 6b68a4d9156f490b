"""The generic input contract (feature_gen/data/contract.py): reading, checking, rejects, fingerprint.

Every error must name the file, the (1-based data) row and the field, so the tests check the message
text, not just the exception type.
"""

import re

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import ItemTextConfig
from feature_gen.data.contract import (
    DataError,
    ItemRejects,
    check_known_items,
    fingerprint,
    load_files,
    read_table,
    split_rejects,
    validate_interactions,
    validate_items,
)
from feature_gen.model.item_text import REJECT_NO_TEXT, REJECT_OVERSIZE_TEXT

TEXT_CFG = ItemTextConfig()  # text keys: title, tags, description


def _items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["Heat", "Alien", "Fargo"],
            "tags": ["Crime|Drama", "Sci-Fi", None],
            "year": ["1995", "1979", "1996"],
        }
    )


def _interactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "item_id": [10, 20, 20, 30],
            "timestamp": [1_700_000_000, 1_700_000_100, 1_700_000_050, 1_700_000_060],
            "rating": [4.0, 3.5, 5.0, 1.0],
        }
    )


def _has_token(message: str, token) -> bool:
    """`token` appears in `message` as a whole word/number (so 5 does not match inside 15)."""
    return re.search(rf"(?<![\w.]){re.escape(str(token))}(?![\w])", message) is not None


# ---------------------------------------------------------------- read_table


def test_read_table_csv(tmp_path):
    path = tmp_path / "items.csv"
    _items().to_csv(path, index=False)
    got = read_table(path)
    assert list(got.columns) == ["item_id", "title", "tags", "year"]
    assert got["item_id"].tolist() == ["10", "20", "30"]  # ids are strings (the entity contract)
    assert got["title"].tolist() == ["Heat", "Alien", "Fargo"]
    assert pd.isna(got["tags"].iloc[2])


def test_read_table_tsv_uses_tabs(tmp_path):
    path = tmp_path / "inter.tsv"
    # commas inside a field must not split it in a TSV
    path.write_text("user_id\titem_id\ttimestamp\tnote\n1\t10\t100\ta, b\n2\t20\t200\tc\n")
    got = read_table(path)
    assert list(got.columns) == ["user_id", "item_id", "timestamp", "note"]
    assert got["note"].tolist() == ["a, b", "c"]
    assert got["timestamp"].tolist() == ["100", "200"]  # text until validate_interactions reads it


def test_read_table_parquet_keeps_list_columns(tmp_path):
    df = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "tags": [["x", "y"], ["z"]]})
    for name in ("items.parquet", "items.pq"):
        path = tmp_path / name
        df.to_parquet(path)
        got = read_table(path)
        assert got["item_id"].tolist() == ["1", "2"]
        assert [list(t) for t in got["tags"]] == [["x", "y"], ["z"]]


def test_read_table_parquet_directory(tmp_path):
    folder = tmp_path / "items_dir"
    folder.mkdir()
    pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"]}).to_parquet(folder / "part-0.parquet")
    got = read_table(folder)
    assert sorted(got["item_id"].tolist()) == ["1", "2"]


def test_read_table_suffix_is_case_insensitive(tmp_path):
    path = tmp_path / "ITEMS.CSV"
    _items().to_csv(path, index=False)
    assert read_table(path)["item_id"].tolist() == ["10", "20", "30"]


def test_read_table_unsupported_suffix(tmp_path):
    path = tmp_path / "items.json"
    path.write_text('[{"item_id": 1}]')
    with pytest.raises(DataError) as err:
        read_table(path)
    msg = str(err.value)
    assert str(path) in msg
    assert ".json" in msg
    assert "unsupported" in msg


def test_read_table_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "items.parquet"
    with pytest.raises(DataError) as err:
        read_table(path)
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)


# ---------------------------------------------------------------- items


def test_validate_items_accepts_good_table_and_resets_index():
    items = _items()
    items.index = [7, 8, 9]
    got = validate_items(items, "items.csv", TEXT_CFG)
    assert list(got.index) == [0, 1, 2]
    assert got["item_id"].tolist() == [10, 20, 30]
    assert list(got.columns) == ["item_id", "title", "tags", "year"]  # extra columns kept


def test_missing_item_id_column():
    items = _items().rename(columns={"item_id": "id"})
    with pytest.raises(DataError) as err:
        validate_items(items, "items.csv", TEXT_CFG)
    msg = str(err.value)
    assert msg.startswith("items.csv:")
    assert "'item_id'" in msg
    assert "id, title" in msg  # lists the columns it has


def test_no_text_column_present():
    items = pd.DataFrame({"item_id": [1, 2], "year": ["1990", "1991"]})
    with pytest.raises(DataError) as err:
        validate_items(items, "items.csv", TEXT_CFG)
    msg = str(err.value)
    assert msg.startswith("items.csv:")
    assert "none of the text columns" in msg
    assert "title" in msg and "year" in msg


def test_any_one_configured_text_column_is_enough():
    items = pd.DataFrame({"item_id": [1, 2], "description": ["d1", "d2"]})
    assert len(validate_items(items, "items.csv", TEXT_CFG)) == 2
    # and a custom key counts as a text column when configured
    cfg = ItemTextConfig(text_keys=["year"])
    assert len(validate_items(pd.DataFrame({"item_id": [1], "year": ["1990"]}), "x", cfg)) == 1


def test_null_item_id_names_one_based_data_row(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n1,a\n2,b\n,c\n4,d\n,e\n")
    with pytest.raises(DataError) as err:
        validate_items(read_table(path), str(path), TEXT_CFG)
    msg = str(err.value)
    assert msg.startswith(f"{path}:")
    assert "row 3:" in msg  # third data line (the header is not counted)
    assert "item_id is null" in msg
    assert "2 such rows" in msg


def test_duplicate_item_id_names_row_id_and_first_occurrence():
    items = pd.DataFrame({"item_id": [5, 15, 7, 5, 15], "title": list("abcde")})
    with pytest.raises(DataError) as err:
        validate_items(items, "items.csv", TEXT_CFG)
    msg = str(err.value)
    assert msg.startswith("items.csv:")
    assert "row 4:" in msg  # the first duplicate row
    assert "duplicate item_id" in msg
    assert _has_token(msg, 5)
    assert "first seen at row 1" in msg
    assert "2 duplicates" in msg


def test_duplicate_string_ids_are_named():
    items = pd.DataFrame({"item_id": ["a", "b", "b"], "title": list("xyz")})
    with pytest.raises(DataError) as err:
        validate_items(items, "items.csv", TEXT_CFG)
    msg = str(err.value)
    assert "row 3:" in msg and "'b'" in msg and "first seen at row 2" in msg


# ---------------------------------------------------------------- interactions


def test_interactions_missing_columns_are_named():
    df = pd.DataFrame({"user": [1], "item_id": [1]})
    with pytest.raises(DataError) as err:
        validate_interactions(df, "inter.csv")
    msg = str(err.value)
    assert msg.startswith("inter.csv:")
    assert "'user_id'" in msg and "'timestamp'" in msg
    assert "missing column(s) 'user_id', 'timestamp'" in msg
    assert "(have: user, item_id)" in msg


def test_null_user_id_names_row(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\n1,10,100\n1,20,200\n,30,300\n")
    with pytest.raises(DataError) as err:
        validate_interactions(read_table(path), str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:")
    assert "row 3:" in msg and "user_id is null" in msg


def test_null_timestamp_names_row():
    df = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [100.0, np.nan]})
    with pytest.raises(DataError) as err:
        validate_interactions(df, "inter.csv")
    assert "row 2:" in str(err.value) and "timestamp is null" in str(err.value)


def test_non_numeric_timestamp_names_row(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\n1,10,1700000100\n1,20,abc\n1,30,1700000300\n")
    with pytest.raises(DataError) as err:
        validate_interactions(read_table(path), str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:")
    assert "row 2:" in msg
    assert "'abc'" in msg
    assert "expected an integer number of seconds" in msg


def test_fractional_timestamp_names_row(tmp_path):
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\n1,10,1700000100\n1,20,1700000200\n1,30,1700000300.5\n")
    with pytest.raises(DataError) as err:
        validate_interactions(read_table(path), str(path))
    msg = str(err.value)
    assert "row 3:" in msg
    assert "1700000300.5" in msg
    assert "expected an integer number of seconds" in msg


def test_whole_float_timestamps_become_exact_int64(tmp_path):
    values = [1_700_000_000.0, 1_700_000_063.0, 1_700_000_001.0, 1_764_444_799.0]
    # the check is only meaningful if float32 would have changed these values
    assert any(float(np.float32(v)) != v for v in values)
    path = tmp_path / "inter.csv"
    pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [1, 2, 3, 4], "timestamp": values}).to_csv(path, index=False)
    raw = read_table(path)
    assert raw["timestamp"].tolist()[0] == "1700000000.0"  # the CSV really carried floats
    got = validate_interactions(raw, str(path))
    assert got["timestamp"].dtype == np.int64
    assert got["timestamp"].tolist() == [1_700_000_000, 1_700_000_063, 1_700_000_001, 1_764_444_799]


def test_integer_timestamps_pass_through_unchanged():
    df = _interactions()
    got = validate_interactions(df, "inter.csv")
    assert got["timestamp"].dtype == np.int64
    assert got["timestamp"].tolist() == df["timestamp"].tolist()
    assert got["rating"].tolist() == df["rating"].tolist()  # extra columns kept
    assert got["user_id"].tolist() == [1, 1, 2, 2]  # file order kept


def test_numeric_string_timestamps_are_accepted():
    df = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": ["1700000000", "1700000063"]})
    got = validate_interactions(df, "inter.csv")
    assert got["timestamp"].dtype == np.int64
    assert got["timestamp"].tolist() == [1_700_000_000, 1_700_000_063]


def test_validate_interactions_does_not_modify_input():
    df = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1_700_000_000.0]})
    validate_interactions(df, "inter.csv")
    assert df["timestamp"].dtype == np.float64


def test_datetime_timestamps_become_unix_seconds_in_memory():
    when = pd.to_datetime(["2023-11-14 22:13:20", "2023-11-14 22:13:21"])  # datetime64[ns]
    df = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": when})
    got = validate_interactions(df, "inter.parquet")
    assert got["timestamp"].dtype == np.int64
    assert got["timestamp"].tolist() == [1_700_000_000, 1_700_000_001]


def test_tz_aware_datetime_timestamps_become_unix_seconds():
    when = pd.to_datetime(["2023-11-14 23:13:20"]).tz_localize("Europe/Berlin")  # UTC+1: = 22:13:20 UTC
    df = pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": when})
    assert validate_interactions(df, "x")["timestamp"].tolist() == [1_700_000_000]


@pytest.mark.parametrize("unit", ["ns", "us", "ms", "s"])
def test_datetime_timestamps_from_parquet_become_unix_seconds(tmp_path, unit):
    # Parquet keeps the stored unit (Spark writes microseconds): every unit must give unix seconds.
    when = pd.to_datetime(["2023-11-14 22:13:20", "2023-11-14 22:13:21"]).astype(f"datetime64[{unit}]")
    path = tmp_path / "inter.parquet"
    pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": when}).to_parquet(path)
    got = validate_interactions(read_table(path), str(path))
    assert got["timestamp"].dtype == np.int64
    assert got["timestamp"].tolist() == [1_700_000_000, 1_700_000_001]


def test_unknown_items_name_row_id_and_count():
    inter = pd.DataFrame(
        {"user_id": [1, 1, 2, 2, 3], "item_id": [10, 99, 20, 77, 99], "timestamp": [1, 2, 3, 4, 5]}
    )
    with pytest.raises(DataError) as err:
        check_known_items(inter, _items()["item_id"], "inter.csv")
    msg = str(err.value)
    assert msg.startswith("inter.csv:")
    assert "row 2:" in msg
    assert _has_token(msg, 99)
    assert "not in the item table" in msg
    assert "3 interactions name unknown items" in msg


def test_known_items_pass():
    check_known_items(_interactions(), _items()["item_id"], "inter.csv")  # must not raise


# ---------------------------------------------------------------- rejects


def test_split_rejects_reasons():
    cfg = ItemTextConfig(max_text_chars=50)
    items = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4, 5, 6],
            "title": ["Heat", None, "x" * 51, None, "  ", "ok"],
            "tags": [None, None, None, ["Drama", "War"], None, "A|B"],
            "description": [None, None, None, None, np.nan, "y" * 50],  # exactly the limit is fine
            "year": ["1995", "1996", None, None, "1990", None],  # not a text key: does not rescue 2 or 5
        }
    )
    accepted, rejects = split_rejects(items, cfg)
    assert isinstance(rejects, ItemRejects)
    assert accepted["item_id"].tolist() == [1, 4, 6]  # 4 has only tags and is still accepted
    assert list(accepted.index) == [0, 1, 2]
    assert list(accepted.columns) == list(items.columns)
    assert len(rejects) == 3
    got = dict(zip(rejects.rows["item_id"].tolist(), rejects.rows["reason"].tolist()))
    assert got == {2: REJECT_NO_TEXT, 3: REJECT_OVERSIZE_TEXT, 5: REJECT_NO_TEXT}
    assert rejects.rows["item_id"].tolist() == [2, 3, 5]  # item-table order


def test_split_rejects_oversize_in_any_configured_key():
    cfg = ItemTextConfig(max_text_chars=10)
    items = pd.DataFrame({"item_id": [1, 2], "title": ["short", "short"], "description": [None, "z" * 11]})
    accepted, rejects = split_rejects(items, cfg)
    assert accepted["item_id"].tolist() == [1]
    assert rejects.rows.to_dict("records") == [{"item_id": 2, "reason": REJECT_OVERSIZE_TEXT}]


def test_split_rejects_nothing_rejected():
    accepted, rejects = split_rejects(_items(), TEXT_CFG)
    assert len(rejects) == 0
    assert list(rejects.rows.columns) == ["item_id", "reason"]
    assert accepted["item_id"].tolist() == [10, 20, 30]


def test_split_rejects_respects_configured_keys():
    # only `year` configured: an item with a title but no year has no text
    cfg = ItemTextConfig(text_keys=["year"])
    accepted, rejects = split_rejects(_items().assign(year=["1995", None, "1996"]), cfg)
    assert accepted["item_id"].tolist() == [10, 30]
    assert rejects.rows.to_dict("records") == [{"item_id": 20, "reason": REJECT_NO_TEXT}]


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_content_based():
    a = fingerprint(_items(), _interactions())
    assert a == fingerprint(_items(), _interactions())
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    # the index does not matter, only the content
    shifted = _interactions()
    shifted.index = shifted.index + 100
    assert fingerprint(_items(), shifted) == a


def test_fingerprint_changes_when_one_value_changes():
    base = fingerprint(_items(), _interactions())
    items = _items()
    items.loc[1, "title"] = "Aliens"
    assert fingerprint(items, _interactions()) != base
    inter = _interactions()
    inter.loc[3, "timestamp"] += 1
    assert fingerprint(_items(), inter) != base
    inter = _interactions()
    inter.loc[0, "rating"] = 4.5
    assert fingerprint(_items(), inter) != base
    # a renamed column and a reordered table are different data too
    assert fingerprint(_items().rename(columns={"year": "released"}), _interactions()) != base
    assert fingerprint(_items(), _interactions().iloc[::-1]) != base


# ---------------------------------------------------------------- load_files


def test_load_files_end_to_end(tmp_path):
    items_path = tmp_path / "items.csv"
    inter_path = tmp_path / "inter.parquet"
    _items().to_csv(items_path, index=False)
    inter = _interactions()
    inter["timestamp"] = inter["timestamp"].astype("float64")
    inter.to_parquet(inter_path)
    items, interactions = load_files(items_path, inter_path, TEXT_CFG)
    assert items["item_id"].tolist() == ["10", "20", "30"]
    assert items["tags"].tolist()[:2] == ["Crime|Drama", "Sci-Fi"]
    assert interactions["timestamp"].dtype == np.int64
    assert interactions["timestamp"].tolist() == _interactions()["timestamp"].tolist()
    assert interactions["user_id"].tolist() == ["1", "1", "2", "2"]
    assert interactions["rating"].tolist() == [4.0, 3.5, 5.0, 1.0]


def test_load_files_reports_unknown_items_against_interactions_path(tmp_path):
    items_path = tmp_path / "items.parquet"
    inter_path = tmp_path / "inter.csv"
    _items().to_parquet(items_path)
    inter_path.write_text("user_id,item_id,timestamp\n1,10,1700000001\n1,11,1700000002\n")
    with pytest.raises(DataError) as err:
        load_files(items_path, inter_path, TEXT_CFG)
    msg = str(err.value)
    assert msg.startswith(f"{inter_path}:")
    assert "row 2:" in msg and _has_token(msg, 11)


def test_load_files_reports_item_errors_against_items_path(tmp_path):
    items_path = tmp_path / "items.csv"
    inter_path = tmp_path / "inter.csv"
    items_path.write_text("item_id,title\n1,a\n1,b\n")
    _interactions().to_csv(inter_path, index=False)
    with pytest.raises(DataError) as err:
        load_files(items_path, inter_path, TEXT_CFG)
    assert str(err.value).startswith(f"{items_path}:")
    assert "row 2:" in str(err.value)
