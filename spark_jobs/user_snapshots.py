"""Historical user-embedding snapshots in the offline store: what a point-in-time join needs.

The Spark user job writes each user's embedding as of the end of its input. A ranker trained on labels
spread over weeks needs the embedding as it was before each label, so this backfill embeds every user's
history as of a few cut-off times (through feature_gen.inference.encoders, the one inference path) and adds those
rows to the bundle version's offline `user_embedding` table. Each row is stamped with the newest event it
reflects (`last_event_ts`), which is what the join orders by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from feature_gen.config import StoreConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, OfflineStoreError, read_version


def snapshot_cutoffs(start: int, end: int, interval_s: int) -> list[int]:
    """Cut-off times every `interval_s` after `start` (which the batch job's snapshot covers) up to and
    including the first one at or past `end`."""
    return list(range(start + interval_s, end + interval_s, interval_s))


def backfill_user_snapshots(bundle_dir, interactions: pd.DataFrame, cutoffs: list[int], store_cfg: StoreConfig,
                            progress: bool = False) -> int:
    """Add, for each cut-off, the embedding of every user whose history changed since the previous
    cut-off (every user with events, at the first), over the history up to the cut-off, to the offline
    user_embedding table of the bundle's version (rows already there are kept); returns rows added.
    One batched inference pass over all snapshots: what a streaming refresh would have written, at the
    granularity of the cut-offs."""
    from feature_gen.model.bundle import load_bundle
    from feature_gen.store.feature_store import open_store
    from feature_gen.inference.encoders import embed_users, load_encoders

    bundle = load_bundle(bundle_dir)
    encoders = load_encoders(bundle, "torch")
    version, max_seq_len = bundle.version, int(bundle.manifest["max_seq_len"])
    items = read_version(store_cfg.offline_root, ITEM_EMBEDDING, version)
    ids = items["item_id"].astype(str).to_numpy()
    table = torch.from_numpy(np.concatenate([np.zeros((1, len(items["embedding"].iloc[0])), np.float32),
                                             np.stack(items["embedding"].to_numpy()).astype(np.float32)]))
    index = {item: row + 1 for row, item in enumerate(ids)}
    events = interactions.reset_index(drop=True)
    events = events.iloc[np.argsort(events["timestamp"].to_numpy(), kind="stable")]  # file order breaks ties
    events = events.assign(row=events["item_id"].astype(str).map(index)).dropna(subset=["row"])
    times = events["timestamp"].to_numpy()
    by_user = {u: (g["row"].to_numpy(dtype=np.int64), g["timestamp"].to_numpy(dtype=np.int64))
               for u, g in events.groupby("user_id", sort=True)}
    user_ids, histories, stamps = [], [], []
    previous = None
    for cutoff in cutoffs:
        window = (times <= cutoff) if previous is None else ((times > previous) & (times <= cutoff))
        for user in pd.unique(events["user_id"].to_numpy()[window]):
            rows, ts = by_user[user]
            n = int(np.searchsorted(ts, cutoff, side="right"))
            user_ids.append(str(user))
            histories.append(rows[:n])
            stamps.append(ts[:n])
        previous = cutoff
    frames = []
    if histories:
        batches = range(0, len(histories), 256)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"   user snapshots ({len(histories)} over {len(cutoffs)} cut-offs)", unit="batch")
        for start in batches:
            chunk = slice(start, start + 256)
            users = embed_users(encoders.user, table, histories[chunk], stamps[chunk], max_seq_len)
            frames.append(pd.DataFrame({"user_id": user_ids[chunk], "embedding": list(users.vectors),
                                        "seq_len": users.seq_len, "last_event_ts": users.last_event_ts}))
    if not frames:
        return 0
    new = pd.concat(frames, ignore_index=True)
    try:
        existing = read_version(store_cfg.offline_root, USER_EMBEDDING, version).drop(columns=["event_timestamp"], errors="ignore")
    except OfflineStoreError:
        existing = new.iloc[:0]
    existing = existing.assign(user_id=existing["user_id"].astype(str))
    rows = pd.concat([existing[new.columns], new], ignore_index=True)
    rows = rows.drop_duplicates(["user_id", "last_event_ts"], keep="first").reset_index(drop=True)
    open_store(store_cfg, apply=False).write_offline(USER_EMBEDDING, version, rows)
    return len(rows) - len(existing)
