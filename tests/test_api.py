"""The public API (feature_gen/api.py) on the tiny bundle: what a ranking team calls from Python.

Expected values come from the one inference path (feature_gen.inference.encoders) called directly;
the round trip against the Spark job's output is in tests/test_spark_jobs.py (it reuses that run).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.api import Encoder, EncodeError, ItemVectors
from feature_gen.inference.encoders import embed_texts, embed_users
from feature_gen.model.bundle import load_bundle
from feature_gen.model.item_text import build_item_text

T0 = 1_700_000_000  # a plausible Unix time (the input contract refuses times before 1995)

ITEMS = [
    {"item_id": 10, "title": "Heat", "tags": ["crime", "thriller"], "description": "LA heist"},
    {"item_id": "11", "title": "Up", "tags": "animation|family"},
    {"item_id": 12, "title": "Se7en", "description": None},
]


@pytest.fixture(scope="module")
def enc(tiny_bundle) -> Encoder:
    return Encoder.from_bundle(tiny_bundle, batch_size=2)


def test_encode_items_equals_the_inference_path_for_records_and_frames(enc, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    texts = [build_item_text(r, bundle.cfg.item_text) for r in ITEMS]
    expected = embed_texts(bundle.model.item_llm, bundle.tokenizer, texts, bundle.cfg.item_text.max_item_tokens)
    got = enc.encode_items(ITEMS)
    assert got.item_ids == ["10", "11", "12"]
    assert got.vectors.dtype == np.float32 and got.vectors.shape == (3, enc.dim)
    np.testing.assert_allclose(got.vectors, expected, atol=1e-5)
    frame = enc.encode_items(pd.DataFrame(ITEMS))
    np.testing.assert_allclose(frame.vectors, expected, atol=1e-5)
    assert len(np.unique(got.vectors.round(5), axis=0)) == 3


def test_a_record_without_text_raises_naming_its_row_or_is_skipped(enc):
    bad = [*ITEMS, {"item_id": 13, "title": None, "tags": None}]
    with pytest.raises(EncodeError, match=r"row 3 \(item_id '13'\): no_text"):
        enc.encode_items(bad)
    got = enc.encode_items(bad, errors="skip")
    assert got.item_ids == ["10", "11", "12"]
    assert got.rejects.to_dict("records") == [{"row": 3, "item_id": "13", "reason": "no_text"}]


def test_encode_users_from_external_ids_equals_embed_users(enc, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    items = enc.encode_items(ITEMS)
    histories = [["10", "11", "12"], [12, 10]]
    stamps = [[100, 200, 300], [50, 60]]
    got = enc.encode_users(histories, timestamps=stamps, items=items)
    table = torch.from_numpy(np.concatenate([np.zeros((1, enc.dim), np.float32), items.vectors]))
    expected = embed_users(bundle.model.user_llm, table, [np.array([1, 2, 3]), np.array([3, 1])],
                           [np.array(s) for s in stamps], bundle.cfg.data.max_seq_len)
    np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-5)
    assert got.seq_len.tolist() == [3, 2] and got.last_event_ts.tolist() == [300, 60]
    # the same through a mapping and through an event frame (time-sorted per user)
    by_map = enc.encode_users(histories, timestamps=stamps, items=items.as_mapping())
    np.testing.assert_allclose(by_map.vectors, expected.vectors, atol=1e-6)
    # (an event log is read under the input contract: Unix seconds inside the plausible window; this
    # bundle reads no timestamps, so only the order they give matters)
    events = pd.DataFrame({"user_id": ["b", "a", "a", "b", "a"], "item_id": [10, 12, 11, 12, 10],
                           "timestamp": [T0 + 60, T0 + 300, T0 + 200, T0 + 50, T0 + 100]})
    frame = enc.encode_users(events, items=items)
    assert frame.user_ids == ["a", "b"] and frame.last_event_ts.tolist() == [T0 + 300, T0 + 60]
    np.testing.assert_allclose(frame.vectors, expected.vectors, atol=1e-5)


def test_an_event_frame_is_read_as_the_spark_user_job_reads_it(enc):
    """The same rows refused for the same reasons as spark_jobs/user_frames.check_interactions (and
    tests/test_input_contract_readers.py's Spark side): every reader of an event log reads it alike."""
    items = enc.encode_items(ITEMS)
    events = pd.DataFrame({"user_id": ["a", None, "a", "a", "a", "a", "a\ufffd"],
                           "item_id": ["10", "11", None, "11", "12", "99", "10"],
                           "timestamp": [T0 + 1, T0 + 2, T0 + 3, "soon", 60, T0 + 4, T0 + 5]})
    got = enc.encode_users(events, items=items, errors="skip")
    assert got.user_ids == ["a"] and got.seq_len.tolist() == [1] and got.last_event_ts.tolist() == [T0 + 1]
    assert got.rejects.reason.tolist() == ["null_user_id", "null_item_id", "bad_timestamp", "timestamp_out_of_range",
                                           "bad_encoding", "unknown_item"]
    with pytest.raises(EncodeError, match=r"event row 2 \(user None\): null_user_id \(5 such rows\)"):
        enc.encode_users(events, items=items)
    when = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["10", "11"],  # a Parquet datetime column
                         "timestamp": pd.to_datetime([T0 + 1, 600_000_000], unit="s")})
    dated = enc.encode_users(when, items=items, errors="skip")
    assert dated.rejects.reason.tolist() == ["timestamp_out_of_range"]  # as Spark says of a 1989 datetime
    with pytest.raises(EncodeError, match="timestamp_unit 'milliseconds' applies to an event DataFrame"):
        enc.encode_users([["10"]], timestamps=[[(T0 + 7) * 1000]], items=items, timestamp_unit="milliseconds")
    millis = pd.DataFrame({"user_id": ["a"], "item_id": ["10"], "timestamp": [(T0 + 7) * 1000]})
    with pytest.raises(EncodeError, match="it reads as milliseconds"):
        enc.encode_users(millis, items=items)
    assert enc.encode_users(millis, items=items, timestamp_unit="milliseconds").last_event_ts.tolist() == [T0 + 7]


def test_a_repeated_item_id_is_embedded_once_the_first_row_winning(enc):
    rows = [{"item_id": "10", "title": "Heat"}, {"item_id": "10", "title": "Heat (again)"},
            {"item_id": "11", "title": ""}, {"item_id": "11", "title": "Up"}]
    got = enc.encode_items(rows, errors="skip")
    # a rejected row never shadows a good one (as in the Spark item job): 11's second row is embedded
    assert got.item_ids == ["10", "11"]
    assert got.rejects.to_dict("records") == [{"row": 1, "item_id": "10", "reason": "duplicate_id"},
                                              {"row": 2, "item_id": "11", "reason": "no_text"}]
    np.testing.assert_allclose(got.vectors[0], enc.encode_texts([enc.item_text(rows[0])])[0], atol=1e-6)
    with pytest.raises(EncodeError, match="row 1 \\(item_id '10'\\): duplicate_id"):
        enc.encode_items(rows[:2])


def test_unknown_items_and_missing_timestamps_are_named(enc):
    items = enc.encode_items(ITEMS)
    with pytest.raises(EncodeError, match="user '0': item '99' has no embedding"):
        enc.encode_users([["10", "99"]], timestamps=[[1, 2]], items=items)
    skipped = enc.encode_users([["10", "99"], ["99"]], timestamps=[[1, 2], [3]], items=items, errors="skip")
    assert skipped.user_ids == ["0"] and skipped.seq_len.tolist() == [1]
    assert skipped.rejects.reason.tolist() == ["unknown_item", "unknown_item"]
    with pytest.raises(EncodeError, match="use_timestamps"):
        enc.encode_users([["10"]], items=items)


class _Store:
    """The online store's lookup interface (item_embeddings -> ids, vectors, found, versions)."""

    def __init__(self, vectors: dict, version: str):
        self.vectors, self.version = vectors, version

    def item_embeddings(self, ids):
        ids = list(ids)
        found = np.array([i in self.vectors for i in ids])
        vectors = np.stack([self.vectors.get(i, np.full(4, np.nan)) for i in ids])
        return type("Rows", (), {"item_ids": ids, "vectors": vectors, "found": found,
                                 "bundle_versions": [self.version if f else None for f in found]})


def test_encode_users_through_a_store_refuses_another_version(enc):
    items = enc.encode_items(ITEMS)
    got = enc.encode_users([["10", "11"]], timestamps=[[1, 2]], items=_Store(items.as_mapping(), enc.version))
    ref = enc.encode_users([["10", "11"]], timestamps=[[1, 2]], items=items)
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-6)
    with pytest.raises(EncodeError, match="hllm-other"):
        enc.encode_users([["10"]], timestamps=[[1]], items=_Store(items.as_mapping(), "hllm-other"))


def test_score_is_cosine_for_one_user_and_many(enc):
    items = enc.encode_items(ITEMS)
    users = enc.encode_users([["10", "11"], ["12"]], timestamps=[[1, 2], [3]], items=items)
    one = enc.score(users.vectors[0], items)
    u, v = users.vectors[0], items.vectors
    direct = v @ u / (np.linalg.norm(v, axis=1) * np.linalg.norm(u))
    np.testing.assert_allclose(one, direct, atol=1e-5)
    assert enc.score(users.vectors, items.vectors).shape == (2, 3)
    assert enc.score(users.vectors * 7.0, items)[0] == pytest.approx(one, abs=1e-5)  # scale-free: cosine
    assert enc.similarity == "cosine"


def test_onnx_runtime_gives_the_torch_vectors(tiny_bundle, tmp_path):
    from export import export_bundle

    path = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, path)
    export_bundle(path)
    torch_enc, onnx_enc = Encoder.from_bundle(path), Encoder.from_bundle(path, runtime="onnx", threads=1)
    a, b = torch_enc.encode_items(ITEMS), onnx_enc.encode_items(ITEMS)
    np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-4)
    ua = torch_enc.encode_users([["10", "12"]], timestamps=[[5, 9]], items=a)
    ub = onnx_enc.encode_users([["10", "12"]], timestamps=[[5, 9]], items=b)
    np.testing.assert_allclose(ub.vectors, ua.vectors, atol=1e-4)
    assert isinstance(a, ItemVectors) and onnx_enc.version == torch_enc.version


def test_hllm_encode_items_then_users_from_files(tiny_bundle, tmp_path, capsys):
    import json

    from hllm.cli import main

    with (tmp_path / "items.jsonl").open("w") as f:
        for row in ITEMS:
            theirs = {("productId" if k == "item_id" else k): v for k, v in row.items()}
            f.write(json.dumps(theirs) + "\n")
    pd.DataFrame({"uid": ["a", "a", "b"], "productId": ["10", "11", "12"],
                  "when": ["2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "2024-01-02T00:00:00+02:00"]}).to_csv(
        tmp_path / "events.csv", index=False)
    cfg = tmp_path / "cols.yaml"
    cfg.write_text("data:\n  columns: {item_id: productId, user_id: uid, timestamp: when}\n  timestamp_format: iso8601\n")
    common = ["--bundle", str(tiny_bundle), "--config", str(cfg)]
    assert main(["encode", "items", "--input", str(tmp_path / "items.jsonl"), "--output", str(tmp_path / "i.parquet"), *common]) == 0
    assert main(["encode", "users", "--input", str(tmp_path / "events.csv"), "--items", str(tmp_path / "i.parquet"),
                 "--output", str(tmp_path / "u.parquet"), *common]) == 0
    assert "3 items embedded" in capsys.readouterr().out
    items, users = pd.read_parquet(tmp_path / "i.parquet"), pd.read_parquet(tmp_path / "u.parquet")
    enc = Encoder.from_bundle(tiny_bundle)
    np.testing.assert_allclose(np.stack(items.embedding), enc.encode_items(ITEMS).vectors, atol=1e-5)
    assert users.user_id.tolist() == ["a", "b"] and users.last_event_ts.tolist() == [1704067260, 1704146400]


def test_hllm_encode_refuses_what_the_contract_refuses_before_any_work(tiny_bundle, tmp_path, capsys):
    """`hllm encode` reads files as every other reader does: an item file needs an item_id column (row
    numbers were taken as ids), a repeated id and bad event rows go to the rejects with the Spark jobs'
    reasons, and a bad --output, --device or --batch-size is one line (exit 2) before anything is embedded."""
    from hllm.cli import main

    pd.DataFrame({"pid": ["10", "11"], "title": ["Heat", "Up"]}).to_csv(tmp_path / "no_id.csv", index=False)
    pd.DataFrame({"item_id": ["10", "10", "11"], "title": ["Heat", "Heat 2", "Up"]}).to_csv(tmp_path / "dup.csv", index=False)
    pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["10", "11", "11"],
                  "timestamp": [T0, 99_999_999_999_999, "abc"]}).to_csv(tmp_path / "events.csv", index=False)
    bundle = ["--bundle", str(tiny_bundle)]

    def run(*argv):
        code = main(["encode", *argv, *bundle])
        return code, capsys.readouterr()

    code, out = run("items", "--input", str(tmp_path / "no_id.csv"), "--output", str(tmp_path / "x.parquet"))
    assert code == 2 and f"{tmp_path / 'no_id.csv'}: missing column 'item_id' (have: pid, title)" in out.err
    code, out = run("items", "--input", str(tmp_path / "dup.csv"), "--output", str(tmp_path / "i.parquet"))
    assert code == 0 and "2 items embedded" in out.out and "'duplicate_id': 1" in out.out
    code, out = run("users", "--input", str(tmp_path / "events.csv"), "--items", str(tmp_path / "i.parquet"),
                    "--output", str(tmp_path / "u.parquet"))
    assert code == 0 and "1 users embedded" in out.out
    assert "'timestamp_out_of_range': 1" in out.out and "'bad_timestamp': 1" in out.out
    for argv, named in ((("--output", str(tmp_path / "nowhere" / "x.parquet")), "--output: the folder"),
                        (("--output", str(tmp_path)), "is a folder"),
                        (("--output", str(tmp_path / "y.parquet"), "--device", "cuda:0"), "--device:"),
                        (("--output", str(tmp_path / "y.parquet"), "--device", "gpu0"), "--device:")):
        code, out = run("items", "--input", str(tmp_path / "dup.csv"), *argv)
        assert code == 2 and named in out.err and out.err.count("\n") == 1, out.err
    code, out = run("users", "--input", str(tmp_path / "events.csv"), "--output", str(tmp_path / "y.parquet"))
    assert code == 2 and "--items: encode users needs" in out.err
    code, out = run("items", "--input", str(tmp_path / "dup.csv"), "--output", str(tmp_path / "y.parquet"),
                    "--set", "item_text.max_item_tokens=2")  # was ignored: the bundle's text template applies
    assert code == 2 and "item_text.max_item_tokens: hllm encode builds item text as bundle" in out.err
    with pytest.raises(SystemExit) as exc:
        main(["encode", "items", "--input", "x", "--output", "y", "--batch-size", "0", *bundle])
    assert exc.value.code == 2 and "expected a positive integer; got 0" in capsys.readouterr().err
    assert not (tmp_path / "y.parquet").exists()
