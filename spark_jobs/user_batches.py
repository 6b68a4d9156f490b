"""User sequences as pandas batches -> user-interest embeddings, through feature_gen.inference.encoders.embed_users.

A batch arrives as one row per user with the embeddings of their most recent items (oldest first) and the
items' timestamps; the batch's own item table is those embeddings stacked, so no catalogue is needed on
the worker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_gen.inference.encoders import Encoders
from feature_gen.inference.item_table import padded_item_table
from feature_gen.store.schema import EMBEDDING, LAST_EVENT_TS, SEQ_LEN, USER_ID

SEQUENCE_SCHEMA_NOTE = "user_id string, seq_embeddings array<array<float>>, seq_ts array<long>"


def embed_user_batch(pdf: pd.DataFrame, encoders: Encoders, batch_size: int) -> pd.DataFrame:
    if len(pdf) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in (USER_ID, EMBEDDING, SEQ_LEN, LAST_EVENT_TS)})
    seqs = [np.stack([np.asarray(e, dtype=np.float32) for e in row]) for row in pdf["seq_embeddings"]]  # each [L_u, D]
    lengths = np.array([len(s) for s in seqs])
    starts = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])  # row 0 of the table is padding
    item_table = padded_item_table(np.concatenate(seqs))  # [1+sum L, D]
    histories = [np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, lengths)]
    timestamps = [np.asarray(t, dtype=np.int64) for t in pdf["seq_ts"]]
    result = encoders.embed_users(item_table, histories, timestamps, batch_size=batch_size)
    return pd.DataFrame({
        USER_ID: pdf[USER_ID].to_numpy(),
        EMBEDDING: list(result.vectors),
        SEQ_LEN: result.seq_len,
        LAST_EVENT_TS: result.last_event_ts,
    })
