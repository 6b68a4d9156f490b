"""Inputs as teams have them (feature_gen/data/formats.py): column mapping, timestamp formats, JSON
lines, declared tag separators, configs/byod.yaml, paths relative to the config file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from feature_gen.config import DataConfig, ItemTextConfig, config_from_dict, load_config
from feature_gen.data.contract import DataError
from feature_gen.data.formats import read_mapped
from feature_gen.data.sequences import load_interaction_data
from feature_gen.model.item_text import build_item_text

ITEMS = pd.DataFrame({"item_id": [1, 2, 3], "title": ["Heat", "Up", "Se7en"], "tags": ["crime|drama", "family", "crime"]})
EVENTS = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 3, "item_id": [1, 2, 3, 1, 3, 2, 1],
                       "timestamp": [1_700_000_000, 1_700_000_060, 1_700_000_060, 1_700_000_200, 1_600_000_000,
                                     1_600_000_001, 1_600_000_500]})


def _contract_run(tmp_path):
    ITEMS.to_parquet(tmp_path / "items.parquet")
    EVENTS.to_parquet(tmp_path / "events.parquet")
    cfg = DataConfig(source="files", items_path=str(tmp_path / "items.parquet"), interactions_path=str(tmp_path / "events.parquet"))
    return load_interaction_data(cfg, ItemTextConfig())


def test_mapped_jsonl_with_iso_and_millisecond_times_read_as_the_contract_files(tmp_path):
    expected = _contract_run(tmp_path)
    theirs_items = ITEMS.rename(columns={"item_id": "productId", "title": "name"})
    with (tmp_path / "catalogue.jsonl").open("w") as f:
        for row in theirs_items.to_dict("records"):
            f.write(json.dumps(row) + "\n")
    iso = EVENTS.rename(columns={"user_id": "userId", "item_id": "productId", "timestamp": "ts"})
    iso["ts"] = pd.to_datetime(EVENTS.timestamp, unit="s", utc=True).dt.tz_convert("Europe/Paris").map(lambda t: t.isoformat())
    iso.to_csv(tmp_path / "events.tsv", sep="\t", index=False)
    millis = iso.assign(ts=EVENTS.timestamp * 1000 + 999)  # sub-second parts are floored
    millis.to_csv(tmp_path / "events_ms.csv", index=False)
    columns = {"user_id": "userId", "item_id": "productId", "timestamp": "ts", "title": "name"}
    # milliseconds are the contract's unit (data.timestamp_unit), whatever the file format; the old
    # spelling `timestamp_format: milliseconds` reads the same
    for path, how in (("events.tsv", {"timestamp_format": "iso8601"}), ("events_ms.csv", {"timestamp_unit": "milliseconds"}),
                      ("events_ms.csv", {"timestamp_format": "milliseconds"})):
        cfg = DataConfig(source="files", items_path=str(tmp_path / "catalogue.jsonl"), interactions_path=str(tmp_path / path),
                         columns=columns, **how)
        got = load_interaction_data(cfg, ItemTextConfig())
        assert [s.tolist() for s in got.sequences] == [s.tolist() for s in expected.sequences]
        assert [t.tolist() for t in got.timestamps] == [t.tolist() for t in expected.timestamps]
        assert got.num_items == expected.num_items == 3


def test_timestamp_unit_lives_in_one_field():
    from pydantic import ValidationError

    assert DataConfig(timestamp_format="milliseconds").timestamp_unit == "milliseconds"
    with pytest.raises(ValidationError, match="timestamp_format: milliseconds names a unit, and timestamp_unit says seconds"):
        DataConfig(timestamp_format="milliseconds", timestamp_unit="seconds")
    with pytest.raises(ValidationError, match="ISO-8601 text carries its own time"):
        DataConfig(timestamp_format="iso8601", timestamp_unit="milliseconds")


def test_bad_inputs_name_file_row_and_column(tmp_path):
    pd.DataFrame({"user_id": ["a", "a"], "item_id": [1, 2], "timestamp": ["2024-01-01T00:00:00Z", "yesterday"]}).to_csv(
        tmp_path / "e.csv", index=False)
    with pytest.raises(DataError, match=r"e.csv: row 2: timestamp 'yesterday' is not an ISO-8601 time"):
        read_mapped(tmp_path / "e.csv", DataConfig(timestamp_format="iso8601"))
    pd.DataFrame({"user_id": ["a"], "item_id": [1], "timestamp": ["2999-01-01T00:00:00"]}).to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(DataError, match=r"f.csv: row 1: timestamp '2999-01-01T00:00:00' is a time outside the contract's "
                                        r"plausible window"):  # a valid time pandas cannot hold, not a malformed one
        read_mapped(tmp_path / "f.csv", DataConfig(timestamp_format="iso8601"))
    renamed = read_mapped(tmp_path / "e.csv", DataConfig(columns={"user_id": "uid"}))  # a column of the other file
    assert list(renamed.columns) == ["user_id", "item_id", "timestamp"]
    pd.DataFrame({"user_id": ["a"], "productId": [1], "item_id": [2], "timestamp": [5]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match=r"column\(s\) \['item_id'\] exist and are also mapped to"):
        read_mapped(tmp_path / "p.csv", DataConfig(columns={"item_id": "productId"}))
    (tmp_path / "e.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported format '.xlsx'"):
        read_mapped(tmp_path / "e.xlsx", DataConfig())


def test_tag_separator_is_declared_and_only_list_keys_split():
    default = ItemTextConfig(prompt="")
    assert build_item_text({"title": "Rock|Paper", "tags": "R&B|Soul"}, default) == "title: Rock|Paper. tags: R&B, Soul."
    semicolon = ItemTextConfig(prompt="", tag_separator=";")
    assert build_item_text({"tags": "R&B|Soul;Jazz"}, semicolon) == "tags: R&B|Soul, Jazz."
    whole = ItemTextConfig(prompt="", tag_separator=None)
    assert build_item_text({"tags": "R&B|Soul"}, whole) == "tags: R&B|Soul."
    assert build_item_text({"tags": ["a|b", "c"]}, whole) == "tags: a|b, c."  # lists are never split


def test_byod_template_validates_and_its_paths_are_relative_to_it(tmp_path):
    from pathlib import Path

    from feature_gen.model.losses import check_run_objective

    template = Path(__file__).resolve().parents[1] / "configs" / "byod.yaml"
    cfg = load_config(template)
    assert cfg.data.items_path == str(template.parent / "data" / "items.jsonl")
    assert cfg.data.columns["item_id"] == "productId" and cfg.data.timestamp_format == "iso8601"
    assert cfg.item_llm.source != "tiny_random" and cfg.loss.nce_threshold == 0.99  # no masked-negatives warning
    assert check_run_objective(cfg) == "in_batch"  # the trainer accepts its objective (it refused num_negatives once)
    # a copy beside the data reads it from any working directory
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "items.jsonl").write_text("")
    raw = yaml.safe_load(template.read_text())
    (tmp_path / "byod.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "byod.yaml").data.items_path == str(tmp_path / "data" / "items.jsonl")
    assert config_from_dict(raw).data.items_path == "data/items.jsonl"  # a dict has no folder: kept as given


@pytest.mark.parametrize("name, body, encoding, says", [
    ("empty.csv", b"", "utf-8", "empty file (no header row)"),
    ("extra.csv", b"user_id,item_id,timestamp\nu,1,1700000000\nu,2,1700000001,9\n", "utf-8",
     "not well-formed CSV (Error tokenizing data. C error: Expected 3 fields in line 3, saw 4)"),
    ("quote.tsv", b'user_id\titem_id\ttimestamp\nu\t"1\t1700000000\n', "utf-8", "not well-formed TSV"),
    ("fake.parquet", b"hello", "utf-8", "not a readable Parquet file or dataset"),
    ("bom.csv", b"user_id,item_id,timestamp\nu,1,1700000000\n", "utf-16", "cannot be read as utf-16"),
])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, name, body, encoding, says):
    """Each of these was a pandas / pyarrow traceback from every pandas-side reader (data-summary,
    training, hllm encode); now a DataError naming the file (exit 2 from the CLI)."""
    from feature_gen.data.contract import DataError, read_table

    (tmp_path / name).write_bytes(body)
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / name, encoding)
    assert str(exc.value).startswith(f"{tmp_path / name}: ") and says in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_folder_without_data_files_is_named_and_any_part_name_reads(tmp_path):
    from feature_gen.data.contract import DataError, read_table

    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match="a folder with no data files"):
        read_table(tmp_path / "events")
    # Hive names its parts without a suffix; Spark reads such a folder, so the pandas side must too
    pd.DataFrame({"user_id": [7], "item_id": [3], "timestamp": [1_700_000_000]}).to_parquet(tmp_path / "events" / "part-00000")
    got = read_table(tmp_path / "events")
    assert got.to_dict("records") == [{"user_id": "7", "item_id": "3", "timestamp": 1_700_000_000}]
    (tmp_path / "events" / "notes.txt").write_text("x")  # not Parquet: one line, not pyarrow's traceback
    with pytest.raises(DataError, match="not a readable Parquet file or dataset"):
        read_table(tmp_path / "events")


def test_data_where_no_user_has_enough_interactions_is_one_line(tmp_path):
    """data-summary showed 0 users, evaluate and train failed later on empty arrays."""
    from feature_gen.config import DataConfig, ItemTextConfig
    from feature_gen.data.contract import DataError
    from feature_gen.data.sequences import load_interaction_data

    (tmp_path / "items.csv").write_text("item_id,title\n1,Heat\n2,Up\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\na,1,1700000000\na,2,1700000001\nb,1,1700000002\n")
    cfg = DataConfig(source="files", items_path=str(tmp_path / "items.csv"), interactions_path=str(tmp_path / "events.csv"))
    with pytest.raises(DataError, match=r"events.csv: no user has data.min_user_interactions \(3\) interactions on "
                                        r"embeddable items \(3 interactions of 2 users read, 0 items rejected\)"):
        load_interaction_data(cfg, ItemTextConfig(text_keys=["title"]))
    assert len(load_interaction_data(cfg.model_copy(update={"min_user_interactions": 2}),
                                     ItemTextConfig(text_keys=["title"])).user_ids) == 1
