"""One reading of the input contract in every reader: the same files through the pandas reader
(feature_gen.data, what training and evaluation read) and the Spark reader (spark_jobs, real local
Spark, the functions the jobs run), compared row by row: ids, texts, order, timestamps, rejects.

The files carry what issue 19 found users bring: zero-padded string ids, literal N/A / NA / None / NaN
/ null as text, empty cells, timestamp ties, quoted commas and newlines, a latin-1 file, and a row with
bytes that are not valid UTF-8."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from feature_gen.config import ItemTextConfig
from feature_gen.data.contract import DataError, load_files, read_table, validate_interactions
from feature_gen.data.sequences import build_interaction_data
from feature_gen.model.item_text import REJECT_BAD_ENCODING, REJECT_NO_TEXT, build_item_text

pytestmark = pytest.mark.integration
TEXT_CFG = ItemTextConfig()
T0 = 1_700_000_000

ITEMS_CSV = (
    "item_id,title,tags,description\n"
    "007,N/A,NA,\n"                              # literal N/A and NA are text; the empty description is missing
    "010,None,,null\n"                           # None and null are text too
    "1,NaN,,\n"
    "2,,,\n"                                     # no text at all: no_text in both
    '3,"Heat, the film","Crime|Drama","a long\nstory"\n'  # quoted comma and newline stay in their cell
).encode() + b"4,Caf\xe9 society,,\n"           # latin-1 bytes in a UTF-8 file: bad_encoding, never U+FFFD text

INTERACTIONS_CSV = (
    "user_id,item_id,timestamp\n"
    f"0042,007,{T0 + 5}\n"
    f"0042,010,{T0 + 5}\n"   # a tie: file order decides
    f"0042,3,{T0 + 1}\n"
    f"42,1,{T0 + 2}\n"       # user 42 is not user 0042
    f"42,007,{T0 + 2}\n"
    f"42,3,{T0 + 2}\n"
    f"0042,1,{T0 + 5}\n"
    f"42,010,{T0 + 9}\n"
)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[1]").appName("input-contract")
               .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _files(folder, items: bytes = ITEMS_CSV, interactions: str = INTERACTIONS_CSV, encoding: str = "utf-8"):
    (folder / "items.csv").write_bytes(items)
    (folder / "interactions.csv").write_bytes(interactions.encode(encoding))
    return folder / "items.csv", folder / "interactions.csv"


def _pandas_items(path, encoding="utf-8"):
    """(accepted [(id, text)], rejects [(id, reason)]) as training reads them."""
    from feature_gen.data.contract import split_rejects, validate_items

    items = validate_items(read_table(path, encoding, TEXT_CFG.text_keys), str(path), TEXT_CFG)
    accepted, rejects = split_rejects(items, TEXT_CFG)
    texts = [(r["item_id"], build_item_text(r, TEXT_CFG)) for r in accepted.to_dict("records")]
    return texts, list(zip(rejects.rows["item_id"], rejects.rows["reason"]))


def _spark_items(spark, path, encoding="utf-8"):
    from pyspark.sql import functions as F

    from spark_jobs.item_frames import prepare_items
    from spark_jobs.job_setup import read_input

    prepared = prepare_items(read_input(spark, str(path), encoding), TEXT_CFG).orderBy("_order").collect()
    accepted = [(r["item_id"], r["text"]) for r in prepared if r["reason"] is None]
    rejects = [(r["item_id"], r["reason"]) for r in prepared if r["reason"] is not None]
    return accepted, rejects, F


def _spark_sequences(spark, items_path, inter_path, encoding="utf-8", timestamp_unit="seconds"):
    """user -> (item ids oldest first, timestamps), and the interaction rejects, as user_embed builds them."""
    from pyspark.sql import functions as F

    from spark_jobs.item_frames import prepare_items
    from spark_jobs.job_setup import read_input
    from spark_jobs.user_frames import check_interactions, mark_unknown_items, recent_events, recent_items

    known = prepare_items(read_input(spark, str(items_path), encoding), TEXT_CFG).filter(F.col("reason").isNull())
    checked = mark_unknown_items(check_interactions(read_input(spark, str(inter_path), encoding), timestamp_unit), known)
    valid = checked.filter(F.col("reason").isNull())
    rows = recent_items(recent_events(valid, 1000)).collect()
    rejects = sorted(((r["user_id"], r["item_id"], r["reason"]) for r in checked.filter(F.col("reason").isNotNull()).collect()),
                     key=str)
    return {r["user_id"]: (list(r["recent_item_ids"]), list(r["recent_item_ts"])) for r in rows}, rejects


def _pandas_sequences(items_path, inter_path, encoding="utf-8", timestamp_unit="seconds"):
    items, interactions = load_files(items_path, inter_path, TEXT_CFG, encoding, timestamp_unit)
    data = build_interaction_data(items, interactions, TEXT_CFG, min_user_interactions=3)
    ids = data.items["item_id"].tolist()
    return {u: ([ids[i - 1] for i in seq], ts.tolist()) for u, seq, ts in zip(data.user_ids, data.sequences, data.timestamps)}


# ---------------------------------------------------------------- items: cases 2, 3, 4


EXPECTED_ITEMS = [
    ("007", "Compress the following sentence into embedding: title: N/A. tags: NA."),
    ("010", "Compress the following sentence into embedding: title: None. description: null."),
    ("1", "Compress the following sentence into embedding: title: NaN."),
    ("3", "Compress the following sentence into embedding: title: Heat, the film. tags: Crime, Drama. "
          "description: a long\nstory."),
]
EXPECTED_ITEM_REJECTS = [("2", REJECT_NO_TEXT), ("4", REJECT_BAD_ENCODING)]


def test_pandas_and_spark_read_the_same_items_row_by_row(tmp_path, spark):
    items_path, _ = _files(tmp_path)
    pandas_texts, pandas_rejects = _pandas_items(items_path)
    spark_texts, spark_rejects, _ = _spark_items(spark, items_path)
    assert pandas_texts == EXPECTED_ITEMS  # string ids, literal N/A etc. embedded as text, file order
    assert spark_texts == EXPECTED_ITEMS
    assert pandas_rejects == spark_rejects == EXPECTED_ITEM_REJECTS
    assert not any("\ufffd" in text for _, text in pandas_texts + spark_texts)


def test_a_latin1_file_reads_the_same_in_both_with_the_encoding_option(tmp_path, spark):
    items = "item_id,title\n007,Café society\n8,Amélie\n".encode("latin-1")
    items_path, _ = _files(tmp_path, items=items)
    want = [("007", "Compress the following sentence into embedding: title: Café society."),
            ("8", "Compress the following sentence into embedding: title: Amélie.")]
    assert _pandas_items(items_path, "latin-1") == (want, [])
    assert _spark_items(spark, items_path, "latin-1")[:2] == (want, [])
    # read as UTF-8 (the default), both refuse both rows instead of embedding "Caf\ufffd society"
    refused = [("007", REJECT_BAD_ENCODING), ("8", REJECT_BAD_ENCODING)]
    assert _pandas_items(items_path) == ([], refused)
    assert _spark_items(spark, items_path)[:2] == ([], refused)


def test_parquet_integer_ids_with_a_null_become_the_same_strings(tmp_path, spark):
    path = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": pd.array([7, None, 10], dtype="Int64"), "title": ["a", "b", "c"]}).to_parquet(path)
    assert read_table(path)["item_id"].tolist()[::2] == ["7", "10"]  # never "7.0"
    spark_texts, spark_rejects, _ = _spark_items(spark, path)
    assert [i for i, _ in spark_texts] == ["7", "10"] and spark_rejects == [(None, "null_id")]


# ---------------------------------------------------------------- interactions: ties, string ids, case 1


def test_pandas_and_spark_build_the_same_sequences(tmp_path, spark):
    items_path, inter_path = _files(tmp_path)
    want = {
        "0042": (["3", "007", "010", "1"], [T0 + 1, T0 + 5, T0 + 5, T0 + 5]),  # ties in file order
        "42": (["1", "007", "3", "010"], [T0 + 2, T0 + 2, T0 + 2, T0 + 9]),
    }
    assert _pandas_sequences(items_path, inter_path) == want
    spark_seqs, spark_rejects = _spark_sequences(spark, items_path, inter_path)
    assert spark_seqs == want
    assert spark_rejects == []


def test_millisecond_interactions_are_refused_in_both_readers_and_read_with_the_unit_option(tmp_path, spark):
    ms = INTERACTIONS_CSV.replace(f"42,010,{T0 + 9}", f"42,010,{(T0 + 9) * 1000}")
    items_path, inter_path = _files(tmp_path, interactions=ms)
    with pytest.raises(DataError) as err:
        _pandas_sequences(items_path, inter_path)
    msg = str(err.value)
    assert msg.startswith(f"{inter_path}: row 8: timestamp {(T0 + 9) * 1000} as seconds") and "\n" not in msg
    assert "timestamp_unit: milliseconds or auto" in msg
    spark_seqs, spark_rejects = _spark_sequences(spark, items_path, inter_path)
    assert spark_rejects == [("42", "010", "timestamp_out_of_range")]  # a whole number outside the window
    assert spark_seqs["42"] == (["1", "007", "3"], [T0 + 2] * 3)  # nothing else lost
    # auto: both read the one millisecond value as T0 + 9 and agree with the all-seconds file
    want = {"0042": (["3", "007", "010", "1"], [T0 + 1, T0 + 5, T0 + 5, T0 + 5]),
            "42": (["1", "007", "3", "010"], [T0 + 2, T0 + 2, T0 + 2, T0 + 9])}
    assert _pandas_sequences(items_path, inter_path, timestamp_unit="auto") == want
    assert _spark_sequences(spark, items_path, inter_path, timestamp_unit="auto") == (want, [])


def test_bad_rows_of_interactions_are_named_by_pandas_and_rejected_by_spark(tmp_path, spark):
    bad = INTERACTIONS_CSV + f",3,{T0}\n" + "0042,3,yesterday\n" + f"0042,1,{T0 + 10 ** 9}\n"
    items_path, inter_path = _files(tmp_path)
    inter_path.write_bytes(bad.encode() + f"4\xe9,3,{T0}\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{inter_path}: row 9: user_id is null"):
        _pandas_sequences(items_path, inter_path)
    seqs, rejects = _spark_sequences(spark, items_path, inter_path)
    assert sorted(rejects, key=str) == sorted([(None, "3", "null_user_id"), ("0042", "3", "bad_timestamp"),
                                               ("0042", "1", "timestamp_out_of_range"), ("4\ufffd", "3", "bad_encoding")], key=str)
    assert seqs["0042"][0] == ["3", "007", "010", "1"]  # the good rows are all there
    # each bad row alone: pandas names file, row and field in one line
    for line, fragment in ((f"0042,3,yesterday", "row 1: timestamp expected an integer number of seconds; got 'yesterday'"),
                           (f"0042,1,{T0 + 10 ** 9}", "row 1: timestamp 2700000000 as seconds")):
        (tmp_path / "one.csv").write_text("user_id,item_id,timestamp\n" + line + "\n")
        with pytest.raises(DataError) as err:
            validate_interactions(read_table(tmp_path / "one.csv"), "one.csv")
        assert str(err.value).startswith(f"one.csv: {fragment}") and "\n" not in str(err.value)
    (tmp_path / "one.csv").write_bytes(b"user_id,item_id,timestamp\n4\xe9,3,1700000000\n")
    with pytest.raises(DataError, match=r"^one.csv: row 1: user_id '4\ufffd' holds bytes that are not valid"):
        validate_interactions(read_table(tmp_path / "one.csv"), "one.csv")
