"""User sequences as pandas batches -> user-interest embeddings, through feature_gen.inference.encoders.embed_users.

A batch arrives as one row per user with the embeddings of their most recent items (oldest first) and the
items' timestamps; the batch's own item table is those embeddings stacked, so no catalogue is needed on
the worker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from feature_gen.inference.encoders import embed_users

USER_ID = "user_id"
SEQUENCE_SCHEMA_NOTE = "user_id string, seq_embeddings array<array<float>>, seq_ts array<long>"
EMBEDDED_SCHEMA = f"{USER_ID} string, embedding array<float>, seq_len long, last_event_ts long"


def embed_user_batch(pdf: pd.DataFrame, bundle, batch_size: int) -> pd.DataFrame:
    if len(pdf) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in (USER_ID, "embedding", "seq_len", "last_event_ts")})
    seqs = [np.stack([np.asarray(e, dtype=np.float32) for e in row]) for row in pdf["seq_embeddings"]]  # each [L_u, D]
    lengths = np.array([len(s) for s in seqs])
    starts = np.concatenate([[1], 1 + np.cumsum(lengths)[:-1]])  # row 0 of the table is padding
    item_table = torch.from_numpy(np.concatenate([np.zeros((1, seqs[0].shape[1]), np.float32), *seqs]))  # [1+sum L, D]
    histories = [np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, lengths)]
    timestamps = [np.asarray(t, dtype=np.int64) for t in pdf["seq_ts"]]
    result = embed_users(
        bundle.model.user_llm, item_table, histories, timestamps, bundle.cfg.data.max_seq_len, batch_size=batch_size
    )
    return pd.DataFrame({
        USER_ID: pdf[USER_ID].to_numpy(),
        "embedding": list(result.vectors),
        "seq_len": result.seq_len,
        "last_event_ts": result.last_event_ts,
    })
