import numpy as np
import pandas as pd
import pytest
import torch

from feature_gen.config import ItemTextConfig
from feature_gen.inference.encoders import batches_by_length, embed_catalogue, embed_texts, embed_users
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
