import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.config import ItemTextConfig
from feature_gen.inference.encoders import batches_by_length, embed_catalogue, embed_texts, embed_users, load_encoders
from feature_gen.inference.item_table import ItemTable, padded_item_table
from feature_gen.model.positions import real_position_ids
from feature_gen.model.hllm import build_hllm

from tests.conftest import tiny_config

TEXTS = ["title: Heat.", "title: A very long title " + "word " * 30, "title: Up.", "tags: Drama.", "title: Se7en."]


def test_batches_by_length_covers_every_row_once_and_groups_lengths():
    lengths = [5, 50, 6, 49, 7]
    batches = batches_by_length(lengths, batch_size=2)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(5))
    assert set(batches[0].tolist()) == {1, 3}  # the two long ones together
    assert [b.tolist() for b in batches_by_length(lengths, 2, bucket=False)] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_bucketing_and_batch_size_do_not_change_embeddings(side):
    model, tok = build_hllm(tiny_config())
    ref = embed_texts(model.item_llm, tok, TEXTS, 64, batch_size=1, bucket=False, padding_side=side)
    for bs, bucket in [(2, True), (5, True), (3, False)]:
        got = embed_texts(model.item_llm, tok, TEXTS, 64, batch_size=bs, bucket=bucket, padding_side=side)
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


def test_embed_catalogue_has_a_zero_padding_row():
    model, tok = build_hllm(tiny_config())
    items = pd.DataFrame({"item_id": [10, 11], "title": ["Heat", "Up"], "tags": [["Crime"], None]})
    table = embed_catalogue(model.item_llm, tok, items, ItemTextConfig())
    assert table.shape == (3, 64)
    assert torch.count_nonzero(table[0]) == 0
    direct = embed_texts(model.item_llm, tok, ["Compress the following sentence into embedding: title: Up."], 256)
    np.testing.assert_allclose(table[2].numpy(), direct[0], atol=2e-5)
    with pytest.raises(ValueError, match="has no text"):
        embed_catalogue(model.item_llm, tok, pd.DataFrame({"item_id": [1], "title": [None]}), ItemTextConfig())


def test_embed_users_matches_a_direct_forward_and_reports_length_and_time():
    model, _ = build_hllm(tiny_config(user_llm={"use_timestamps": True}))
    torch.manual_seed(0)
    with torch.no_grad():
        model.user_llm.time_embedding.weight.normal_()
    table = torch.cat([torch.zeros(1, 64), torch.randn(20, 64)])
    histories = [np.array([3, 4, 5]), np.array([1, 2, 3, 4, 5, 6, 7, 8]), np.array([9])]
    stamps = [np.array([10, 20, 30]), np.arange(8) * 100, np.array([5])]
    out = embed_users(model.user_llm, table, histories, stamps, max_seq_len=4, batch_size=2)
    assert out.vectors.shape == (3, 64)
    assert out.seq_len.tolist() == [3, 4, 1]
    assert out.last_event_ts.tolist() == [30, 700, 5]
    with torch.no_grad():
        direct = model.user_llm(table[torch.tensor([[5, 6, 7, 8]])], torch.ones(1, 4, dtype=torch.long),
                                torch.tensor([[400, 500, 600, 700]])).user_embedding
    np.testing.assert_allclose(out.vectors[1], direct[0].numpy(), atol=2e-5)
    with pytest.raises(ValueError, match="empty history"):
        embed_users(model.user_llm, table, [np.array([], dtype=np.int64)], [np.array([])], 4)


# ---------------------------------------------------------------------------------------------------
# The item table and the one Encoders interface


def test_padded_item_table_puts_a_zero_row_before_the_vectors():
    vectors = np.arange(6, dtype=np.float64).reshape(3, 2) + 1
    table = padded_item_table(vectors)
    assert table.dtype == torch.float32 and table.shape == (4, 2)
    assert torch.count_nonzero(table[0]) == 0
    np.testing.assert_array_equal(table[1:].numpy(), vectors.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected \[N, D\] with N >= 1; got shape \(0, 0\)"):
        padded_item_table([])


def test_item_table_looks_up_external_ids_and_names_a_missing_one():
    table = ItemTable.of([7, "a", 9], np.eye(3, dtype=np.float32))
    assert table.index == {"7": 1, "a": 2, "9": 3}
    assert table.rows(["9", 7]).tolist() == [3, 1]
    np.testing.assert_array_equal(table.vectors[table.rows(["a"])].numpy(), [[0, 1, 0]])
    with pytest.raises(KeyError, match="item_id 'zzz' has no vector"):
        table.rows(["a", "zzz"])
    with pytest.raises(ValueError, match="2 item ids for 3 vectors"):
        ItemTable.of(["x", "y"], np.eye(3))


def test_real_position_ids_count_from_each_rows_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert real_position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]


def test_encoders_embed_histories_by_external_id_as_embed_users_does_by_index(tiny_bundle):
    encoders = load_encoders(tiny_bundle, "torch")
    assert encoders.runtime == "torch" and encoders.version.startswith("hllm-")
    vectors = encoders.embed_texts(TEXTS)  # [5, D]
    by_id = {f"i{k}": v for k, v in enumerate(vectors)}
    histories, stamps = [["i3", "i0", "i3"], ["i4"]], [[10, 20, 30], [5]]
    got = encoders.embed_histories(by_id, histories, stamps)
    table = padded_item_table(vectors)
    ref = embed_users(encoders.user, table, [np.array([4, 1, 4]), np.array([5])],
                      [np.array(t) for t in stamps], encoders.max_seq_len)
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-6)
    assert got.seq_len.tolist() == [3, 1] and got.last_event_ts.tolist() == [30, 5]
    with pytest.raises(KeyError, match="item_id 'i9': no vector given"):
        encoders.embed_histories(by_id, [["i9"]], [[1]])
    with pytest.raises(ValueError, match="runtime: expected 'torch' or 'onnx'"):
        load_encoders(tiny_bundle, "tensorrt")
