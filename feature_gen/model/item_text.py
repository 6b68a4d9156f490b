"""The one place that turns an item's fields into the Item LLM's input text and token ids.

Text: `prompt + "title: X. tags: a, b. description: Y."` over the configured keys that have a value,
tokenised and truncated to `max_item_tokens` tokens. The `[ITEM]` slot is not a token of the
vocabulary: ItemLLM appends a learned embedding after the last text token, so the slot costs no id
and cannot collide with real text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from feature_gen.config import ItemTextConfig

# Reasons an item cannot be embedded; they go to a rejects table, never silently dropped.
REJECT_NULL_ID = "null_id"
REJECT_NO_TEXT = "no_text"
REJECT_OVERSIZE_TEXT = "oversize_text"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:  # pandas' missing scalars: pd.NA (nullable string/Int columns), NaT, numpy float32 NaN
        import pandas as pd

        if pd.api.types.is_scalar(value) and not isinstance(value, str) and bool(pd.isna(value)):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (list, tuple)) and not [v for v in value if not _is_missing(v)]:
        return True
    try:  # numpy arrays (Parquet list columns arrive as ndarrays)
        import numpy as np

        if isinstance(value, np.ndarray) and value.size == 0:
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def _field_text(value: Any, separator: str | None = None) -> str:
    """Lists (genres, tags) join with commas; a string is split on `separator` (a list key's declared
    tag separator) or kept whole."""
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
    else:
        parts = [str(v) for v in value if not _is_missing(v)] if hasattr(value, "__iter__") else [str(value)]
    return ", ".join(p.strip() for p in parts if p.strip())


def build_item_text(item: Mapping[str, Any], cfg: ItemTextConfig) -> str | None:
    """The item's text, or None when none of the configured keys has a value."""
    fields = []
    for key in cfg.text_keys:
        if key in item and not _is_missing(item[key]):
            text = _field_text(item[key], cfg.tag_separator if key in cfg.list_keys else None)
            fields.append(f"{key}: {text}" + ("" if text.endswith((".", "!", "?")) else "."))
    if not fields:
        return None
    return cfg.prompt + " ".join(fields)


@dataclass(frozen=True)
class ItemTextResult:
    text: str | None
    reject_reason: str | None


def item_text_or_reject(item: Mapping[str, Any], cfg: ItemTextConfig, id_key: str = "item_id") -> ItemTextResult:
    """Text for one item row, or the reason it must go to the rejects output."""
    if _is_missing(item.get(id_key)):
        return ItemTextResult(None, REJECT_NULL_ID)
    for key in cfg.text_keys:
        value = item.get(key)
        if isinstance(value, str) and len(value) > cfg.max_text_chars:
            return ItemTextResult(None, REJECT_OVERSIZE_TEXT)
    text = build_item_text(item, cfg)
    if text is None:
        return ItemTextResult(None, REJECT_NO_TEXT)
    return ItemTextResult(text, None)


def check_prompt_budget(tokenizer, cfg: ItemTextConfig, min_field_tokens: int = 4) -> int:
    """Fail when the prompt alone (nearly) fills `max_item_tokens`: truncation would then cut every
    item down to the same prompt and give the whole catalogue one embedding. Returns the prompt's length."""
    prompt_tokens = len(tokenizer(cfg.prompt, add_special_tokens=True)["input_ids"]) if cfg.prompt else 0
    if prompt_tokens + min_field_tokens > cfg.max_item_tokens:
        from feature_gen.config import ConfigError

        raise ConfigError(
            f"item_text.max_item_tokens: {cfg.max_item_tokens} leaves no room for item fields after the "
            f"prompt's {prompt_tokens} tokens; raise it to at least {prompt_tokens + 16} or shorten item_text.prompt"
        )
    return prompt_tokens


def tokenize_item_texts(texts: Sequence[str], tokenizer, max_item_tokens: int) -> list[list[int]]:
    """Token ids per text, truncated to `max_item_tokens` (special tokens counted)."""
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_item_tokens,
        padding=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64, 1 = real token


def pad_token_ids(token_ids: Iterable[Sequence[int]], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad variable-length id lists into one batch; ItemLLM is correct with either side."""
    rows = [list(r) for r in token_ids]
    if not rows:
        raise ValueError("pad_token_ids: empty batch")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"pad_token_ids: row {i} has no tokens")
        if padding_side == "right":
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        else:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return TokenBatch(ids, mask)
