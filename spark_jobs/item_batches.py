"""Item rows as pandas batches: text or reject reason, then embeddings. Plain functions, no Spark, so the
tests and any other batch runner call exactly what the Spark workers run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from feature_gen.config import ItemTextConfig
from feature_gen.inference.encoders import Encoders
from feature_gen.model.item_text import item_text_or_reject
from feature_gen.store.schema import EMBEDDING, ITEM_ID

ORDER = "_order"  # position in the input, the tie-break that keeps duplicate handling deterministic
PREPARED_SCHEMA = f"{ITEM_ID} string, text string, reason string, row_json string, {ORDER} long"


def _json_value(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def row_json(row: dict) -> str:
    """The whole input row, so a reject can be inspected and replayed as it arrived."""
    return json.dumps({k: v for k, v in row.items() if k != ORDER}, default=_json_value, ensure_ascii=False)


def prepare_item_batch(pdf: pd.DataFrame, text_cfg: ItemTextConfig) -> pd.DataFrame:
    """Each row's item text, or the reason it cannot be embedded (null_id, no_text, oversize_text)."""
    out = {ITEM_ID: [], "text": [], "reason": [], "row_json": [], ORDER: []}
    for row in pdf.to_dict("records"):
        result = item_text_or_reject(row, text_cfg)
        item_id = row.get(ITEM_ID)
        out[ITEM_ID].append(None if result.reject_reason == "null_id" else str(item_id))
        out["text"].append(result.text)
        out["reason"].append(result.reject_reason)
        out["row_json"].append(row_json(row) if result.reject_reason else None)
        out[ORDER].append(row[ORDER])
    return pd.DataFrame(out)


def embed_item_batch(pdf: pd.DataFrame, encoders: Encoders, batch_size: int, bucket: bool) -> pd.DataFrame:
    """Embeddings [n] (float32 arrays, input order) for rows with texts, through Encoders.embed_texts."""
    if len(pdf) == 0:
        return pd.DataFrame({ITEM_ID: pd.Series([], dtype=object), EMBEDDING: pd.Series([], dtype=object)})
    vectors = encoders.embed_texts(pdf["text"].tolist(), batch_size=batch_size, bucket=bucket)
    return pd.DataFrame({ITEM_ID: pdf[ITEM_ID].to_numpy(), EMBEDDING: list(vectors)})
