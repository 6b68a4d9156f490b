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

from feature_gen.config import StoreConfig
from feature_gen.store.offline_store import ITEM_EMBEDDING, USER_EMBEDDING, OfflineStoreError, read_version
from feature_gen.store.schema import EMBEDDING, EVENT_TIMESTAMP, ITEM_ID, LAST_EVENT_TS, SEQ_LEN, USER_ID


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
    from feature_gen.inference.encoders import load_encoders
    from feature_gen.inference.item_table import ItemTable
    from feature_gen.store.feature_store import open_store

    encoders = load_encoders(bundle_dir, "torch")
    version = encoders.version
    items = read_version(store_cfg.offline_root, ITEM_EMBEDDING, version)
    table = ItemTable.of(items[ITEM_ID], list(items[EMBEDDING]))
    index = table.index
    events = interactions.reset_index(drop=True)
    events = events.iloc[np.argsort(events["timestamp"].to_numpy(), kind="stable")]  # file order breaks ties
    events = events.assign(row=events[ITEM_ID].astype(str).map(index)).dropna(subset=["row"])
    times = events["timestamp"].to_numpy()
    by_user = {u: (g["row"].to_numpy(dtype=np.int64), g["timestamp"].to_numpy(dtype=np.int64))
               for u, g in events.groupby(USER_ID, sort=True)}
    user_ids, histories, stamps = [], [], []
    previous = None
    for cutoff in cutoffs:
        window = (times <= cutoff) if previous is None else ((times > previous) & (times <= cutoff))
        for user in pd.unique(events[USER_ID].to_numpy()[window]):
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
            users = encoders.embed_users(table.vectors, histories[chunk], stamps[chunk])
            frames.append(pd.DataFrame({USER_ID: user_ids[chunk], EMBEDDING: list(users.vectors),
                                        SEQ_LEN: users.seq_len, LAST_EVENT_TS: users.last_event_ts}))
    if not frames:
        return 0
    new = pd.concat(frames, ignore_index=True)
    try:
        existing = read_version(store_cfg.offline_root, USER_EMBEDDING, version).drop(columns=[EVENT_TIMESTAMP], errors="ignore")
    except OfflineStoreError:
        existing = new.iloc[:0]
    existing = existing.assign(user_id=existing[USER_ID].astype(str))
    rows = pd.concat([existing[new.columns], new], ignore_index=True)
    rows = rows.drop_duplicates([USER_ID, LAST_EVENT_TS], keep="first").reset_index(drop=True)
    open_store(store_cfg, apply=False).write_offline(USER_EMBEDDING, version, rows)
    return len(rows) - len(existing)
