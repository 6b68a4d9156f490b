"""The bundle's encoders as the refresh consumers call them: texts -> item vectors, histories -> users.

Both go through feature_gen.inference.encoders (embed_texts, embed_users): the one inference path, so a user
refreshed from the stream gets exactly the embedding a batch job would compute from the same history.
`stream.runtime` picks the backend: "torch" (the bundle's eager modules) or "onnx" (ONNX Runtime over
the graphs `hllm export` wrote into the bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from feature_gen.config import ItemTextConfig
from feature_gen.inference.encoders import UserEmbeddings, embed_texts, embed_users


@dataclass
class StreamEncoders:
    item: Any  # ItemLLM or its ONNX twin
    user: Any  # UserLLM or its ONNX twin
    tokenizer: Any
    text_cfg: ItemTextConfig
    padding_side: str
    max_seq_len: int
    version: str
    runtime: str

    def embed_items(self, texts: Sequence[str]) -> np.ndarray:
        """[n, D] float32 item embeddings, in input order."""
        return embed_texts(self.item, self.tokenizer, texts, self.text_cfg.max_item_tokens, padding_side=self.padding_side)

    def embed_histories(self, item_vectors: dict[str, np.ndarray], histories: list[list[str]],
                        timestamps: list[list[int]]) -> UserEmbeddings:
        """User embeddings of time-ordered histories of item ids, each of whose vectors is given."""
        ids = list(dict.fromkeys(i for h in histories for i in h))
        index = {item_id: row + 1 for row, item_id in enumerate(ids)}  # row 0 = padding
        table = torch.from_numpy(np.stack([np.zeros_like(item_vectors[ids[0]])] + [item_vectors[i] for i in ids]))
        internal = [np.array([index[i] for i in h], dtype=np.int64) for h in histories]
        ts = [np.asarray(t, dtype=np.int64) for t in timestamps]
        return embed_users(self.user, table, internal, ts, self.max_seq_len)


def load_stream_encoders(bundle_path: str | Path, runtime: str = "torch", threads: int | None = None) -> StreamEncoders:
    from feature_gen.model.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    item, user = bundle.model.item_llm, bundle.model.user_llm
    if runtime == "onnx":
        from feature_gen.inference.encoders import load_encoders

        onnx = load_encoders(bundle, runtime="onnx", threads=threads)
        item, user = onnx.item, onnx.user
    elif runtime != "torch":
        raise ValueError(f"stream.runtime: expected 'torch' or 'onnx'; got {runtime!r}")
    return StreamEncoders(
        item=item,
        user=user,
        tokenizer=bundle.tokenizer,
        text_cfg=bundle.cfg.item_text,
        padding_side=bundle.cfg.item_llm.padding_side,
        max_seq_len=bundle.cfg.data.max_seq_len,
        version=bundle.version,
        runtime=runtime,
    )
