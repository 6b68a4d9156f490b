import numpy as np
import pytest

from feature_gen.model.base_models import byte_tokenizer
from feature_gen.config import ItemTextConfig
from feature_gen.model.item_text import (
    REJECT_NO_TEXT,
    REJECT_NULL_ID,
    REJECT_OVERSIZE_TEXT,
    build_item_text,
    item_text_or_reject,
    pad_token_ids,
    tokenize_item_texts,
)

CFG = ItemTextConfig(prompt="P: ", text_keys=["title", "tags", "description"], max_item_tokens=16)


def test_template_joins_present_keys_in_configured_order():
    item = {"item_id": 1, "description": "A toy.", "title": "Toy Story", "tags": ["Animation", "Comedy"]}
    assert build_item_text(item, CFG) == "P: title: Toy Story. tags: Animation, Comedy. description: A toy."


def test_missing_fields_are_skipped_and_pipe_lists_split():
    assert build_item_text({"title": None, "tags": "Drama|War"}, CFG) == "P: tags: Drama, War."
    assert build_item_text({"title": float("nan"), "tags": np.array(["Drama"])}, CFG) == "P: tags: Drama."
    assert build_item_text({"title": "  ", "tags": [], "description": None}, CFG) is None


def test_pandas_missing_values_are_missing_not_text():
    """Nullable pandas columns hand out pd.NA / NaT; neither may become the text "<NA>" or "NaT"."""
    import pandas as pd

    assert build_item_text({"title": pd.NA, "tags": ["Drama", pd.NA], "description": pd.NaT}, CFG) == "P: tags: Drama."
    assert build_item_text({"title": np.float32("nan"), "tags": None}, CFG) is None
    assert item_text_or_reject({"item_id": 3, "title": pd.NA}, CFG).reject_reason == REJECT_NO_TEXT


def test_text_keys_are_configurable():
    cfg = ItemTextConfig(prompt="", text_keys=["year", "title"])
    assert build_item_text({"title": "Heat", "year": "1995", "tags": ["Crime"]}, cfg) == "year: 1995. title: Heat."


def test_reject_reasons():
    assert item_text_or_reject({"item_id": None, "title": "x"}, CFG).reject_reason == REJECT_NULL_ID
    assert item_text_or_reject({"item_id": 3, "title": None}, CFG).reject_reason == REJECT_NO_TEXT
    huge = ItemTextConfig(max_text_chars=10)
    assert item_text_or_reject({"item_id": 3, "title": "x" * 11}, huge).reject_reason == REJECT_OVERSIZE_TEXT
    ok = item_text_or_reject({"item_id": 3, "tags": ["Drama"]}, CFG)
    assert ok.reject_reason is None and ok.text == "P: tags: Drama."


def test_truncation_counts_tokens_not_characters():
    tok = byte_tokenizer()  # one token per byte
    ids = tokenize_item_texts(["a" * 100, "bb"], tok, max_item_tokens=16)
    assert [len(i) for i in ids] == [16, 2]
    # multi-byte characters are several tokens: truncation happens in tokens
    ids = tokenize_item_texts(["é" * 10], tok, max_item_tokens=16)
    assert len(ids[0]) == 16


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_token_ids(side):
    batch = pad_token_ids([[5, 6, 7], [8]], pad_id=0, padding_side=side)
    assert batch.input_ids.shape == (2, 3)
    if side == "right":
        assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    else:
        assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
        assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        pad_token_ids([[1], []], pad_id=0)
