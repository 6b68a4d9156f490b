"""From checked tables to time-ordered user sequences, the leave-one-out split, and batches.

Internal ids: items are 1..N in item-table order (0 is padding, never a real item); users 0..U-1 in
order of first appearance. Each user's events are sorted by timestamp with the file order as the
tie-break (a stable sort), so a split is reproducible to the item.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import torch

from feature_gen.config import DataConfig, ItemTextConfig
from feature_gen.data.contract import (
    ITEM_ID,
    TIMESTAMP,
    USER_ID,
    DataError,
    ItemRejects,
    check_known_items,
    fingerprint,
    load_files,
    split_rejects,
    validate_interactions,
    validate_items,
)

PAD = 0


@dataclass
class InteractionData:
    items: pd.DataFrame  # catalogue; row r is internal item r + 1
    user_ids: np.ndarray  # [U] external user ids; position = internal user index
    sequences: list[np.ndarray]  # per user: internal item ids (int64), time ordered
    timestamps: list[np.ndarray]  # per user: int64 unix seconds, aligned with sequences
    rejects: ItemRejects  # items without usable text (and their interactions, dropped)
    dropped_interactions: int  # interactions on rejected items or of users too short to split
    fingerprint: str

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def item_index(self) -> dict:
        """external item id -> internal id (1..N)."""
        return {ext: i + 1 for i, ext in enumerate(self.items[ITEM_ID].tolist())}


def build_interaction_data(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    text_cfg: ItemTextConfig,
    min_user_interactions: int = 3,
) -> InteractionData:
    """Map ids, drop unembeddable items (kept as rejects), group and time-order each user's events."""
    accepted, rejects = split_rejects(items, text_cfg)
    index = {ext: i + 1 for i, ext in enumerate(accepted[ITEM_ID].tolist())}
    mapped = interactions[ITEM_ID].map(index)
    keep = mapped.notna().to_numpy()
    frame = pd.DataFrame(
        {
            "user": interactions[USER_ID].to_numpy()[keep],
            "item": mapped.to_numpy()[keep].astype(np.int64),
            "ts": interactions[TIMESTAMP].to_numpy()[keep].astype(np.int64),
            "order": np.flatnonzero(keep),  # file order, the tie-break
        }
    )
    frame = frame.sort_values(["ts", "order"], kind="stable")
    user_ids, sequences, timestamps = [], [], []
    dropped = int((~keep).sum())
    # groupby(sort=False) keeps first-appearance order of users in the time-sorted frame; reindex by
    # first appearance in the file instead so user numbering does not depend on timestamps.
    first_seen = pd.unique(interactions[USER_ID].to_numpy()[keep])
    groups = {u: g for u, g in frame.groupby("user", sort=False)}
    for u in first_seen:
        g = groups[u]
        if len(g) < min_user_interactions:
            dropped += len(g)
            continue
        user_ids.append(u)
        sequences.append(g["item"].to_numpy())
        timestamps.append(g["ts"].to_numpy())
    return InteractionData(
        items=accepted,
        user_ids=np.asarray(user_ids),
        sequences=sequences,
        timestamps=timestamps,
        rejects=rejects,
        dropped_interactions=dropped,
        fingerprint=fingerprint(items, interactions),
    )


def load_interaction_data(data_cfg: DataConfig, text_cfg: ItemTextConfig, allow_empty: bool = False) -> InteractionData:
    """The one entry point from config to sequences, for every data source. No user left after
    `data.min_user_interactions`: DataError saying so, unless `allow_empty` (a summary that shows zeros)."""
    if data_cfg.source == "files":
        from feature_gen.data.formats import read_mapped

        items, interactions = load_files(data_cfg.items_path, data_cfg.interactions_path, text_cfg,
                                         data_cfg.encoding, data_cfg.timestamp_unit,
                                         read=lambda path: read_mapped(path, data_cfg))
    else:
        from feature_gen.data.movielens import LOADERS

        items, interactions = LOADERS[data_cfg.source]()
        items = validate_items(items, data_cfg.source, text_cfg)
        interactions = validate_interactions(interactions, data_cfg.source, data_cfg.timestamp_unit)
        check_known_items(interactions, items[ITEM_ID], data_cfg.source)
    data = build_interaction_data(items, interactions, text_cfg, data_cfg.min_user_interactions)
    if not len(data.user_ids) and not allow_empty:  # nothing to train or evaluate on: say why here, not later
        source = data_cfg.interactions_path if data_cfg.source == "files" else data_cfg.source
        raise DataError(f"{source}: no user has data.min_user_interactions ({data_cfg.min_user_interactions}) "
                        f"interactions on embeddable items ({len(interactions)} interactions of "
                        f"{interactions[USER_ID].nunique()} users read, {len(data.rejects)} items rejected)")
    return data


@dataclass
class EvalSet:
    """One evaluation target per user: predict `targets` from `histories`."""

    users: np.ndarray  # [U] internal user index
    histories: list[np.ndarray]  # full history (item ids) before the target
    history_timestamps: list[np.ndarray]
    targets: np.ndarray  # [U] internal item id
    target_timestamps: np.ndarray  # [U]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class LeaveOneOutSplit:
    train: list[np.ndarray]  # per user: all items but the last two
    train_timestamps: list[np.ndarray]
    valid: EvalSet  # target: second last; history: train part
    test: EvalSet  # target: last; history: train part + the valid item


def leave_one_out(data: InteractionData) -> LeaveOneOutSplit:
    users = np.arange(data.num_users)
    seqs, tss = data.sequences, data.timestamps
    if any(len(s) < 3 for s in seqs):
        raise ValueError("leave_one_out: every user needs at least 3 interactions (data.min_user_interactions)")
    valid = EvalSet(
        users=users,
        histories=[s[:-2] for s in seqs],
        history_timestamps=[t[:-2] for t in tss],
        targets=np.array([s[-2] for s in seqs], dtype=np.int64),
        target_timestamps=np.array([t[-2] for t in tss], dtype=np.int64),
    )
    test = EvalSet(
        users=users,
        histories=[s[:-1] for s in seqs],
        history_timestamps=[t[:-1] for t in tss],
        targets=np.array([s[-1] for s in seqs], dtype=np.int64),
        target_timestamps=np.array([t[-1] for t in tss], dtype=np.int64),
    )
    return LeaveOneOutSplit(
        train=[s[:-2] for s in seqs], train_timestamps=[t[:-2] for t in tss], valid=valid, test=test
    )


@dataclass
class SequenceBatch:
    item_ids: torch.Tensor  # [B, L] int64, PAD where mask is 0
    timestamps: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64


def pad_sequences(
    sequences: list[np.ndarray],
    timestamps: list[np.ndarray] | None,
    max_len: int,
    padding_side: str = "left",
) -> SequenceBatch:
    """Keep each sequence's last `max_len` items and pad to a batch. Left padding by default, so the
    most recent item sits in the last column for every user (what serving code indexes)."""
    batch = len(sequences)
    ids = np.zeros((batch, max_len), dtype=np.int64)
    ts = np.zeros((batch, max_len), dtype=np.int64)
    mask = np.zeros((batch, max_len), dtype=np.int64)
    for i, seq in enumerate(sequences):
        tail = seq[-max_len:]
        n = len(tail)
        if n == 0:
            continue
        cols = slice(max_len - n, max_len) if padding_side == "left" else slice(0, n)
        ids[i, cols] = tail
        mask[i, cols] = 1
        if timestamps is not None:
            ts[i, cols] = timestamps[i][-max_len:]
    return SequenceBatch(torch.from_numpy(ids), torch.from_numpy(ts), torch.from_numpy(mask))


@dataclass
class TrainingBatch:
    inputs: SequenceBatch  # items 0..n-2 of each window
    targets: torch.Tensor  # [B, L] the next item at every input position (PAD where none)

    def to(self, device: torch.device | str) -> "TrainingBatch":
        """This batch with every tensor on `device` (the trainer passes the DeepSpeed engine's): the one
        place a batch is placed. Batches are built on the CPU from numpy; a tensor already there is
        not copied."""
        inputs = SequenceBatch(**{f.name: getattr(self.inputs, f.name).to(device) for f in fields(self.inputs)})
        return TrainingBatch(inputs=inputs, targets=self.targets.to(device))


def training_windows(
    sequences: list[np.ndarray], timestamps: list[np.ndarray], max_seq_len: int,
    trained: list[int] | None = None,
) -> TrainingBatch:
    """Each sequence's most recent `max_seq_len + 1` items as (inputs, next-item targets); with
    `trained`, only the last `trained[i]` targets of sequence i are kept (the rest are PAD: context
    only, trained by another window, see `history_windows`)."""
    windows = [s[-(max_seq_len + 1):] for s in sequences]
    ts_windows = [t[-(max_seq_len + 1):] for t in timestamps]
    inputs = pad_sequences([w[:-1] for w in windows], [t[:-1] for t in ts_windows], max_seq_len, "left")
    targets = pad_sequences([w[1:] for w in windows], None, max_seq_len, "left").item_ids
    if trained is not None:  # left padded: a window's targets end in the last column
        keep = torch.arange(max_seq_len).unsqueeze(0) >= max_seq_len - torch.as_tensor(trained).unsqueeze(1)
        targets = targets * keep
    return TrainingBatch(inputs=inputs, targets=targets)


def history_windows(
    sequences: list[np.ndarray], timestamps: list[np.ndarray], max_seq_len: int, stride: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Every training window of each history, cut from the most recent end backwards, and how many of
    its last targets each window trains, so that every transition is trained exactly once.

    Windows hold up to `max_seq_len + 1` items and their ends are `stride` items apart (default
    `max_seq_len`: consecutive chunks sharing one item, the cheapest cover). A window trains only its
    last `stride` targets (the one that reaches the start of the history trains all it holds), so a
    smaller stride gives each target more context, at least `max_seq_len - stride + 1` items or its
    whole history, for `max_seq_len / stride` times the compute; stride 1 is one window per target with full
    context, RecBole's prefix augmentation. Returns (windows, their timestamps, targets to train [int])."""
    step = max_seq_len if stride is None else stride
    if not 1 <= step <= max_seq_len:
        raise ValueError(f"history_windows: stride must be in [1, max_seq_len={max_seq_len}], got {step}")
    seqs, tss, trained = [], [], []
    for seq, ts in zip(sequences, timestamps):
        end = len(seq)
        while end >= 2:
            start = max(0, end - (max_seq_len + 1))
            seqs.append(seq[start:end])
            tss.append(ts[start:end])
            trained.append(end - 1 - start if start == 0 else min(step, end - 1 - start))
            if start == 0:
                break
            end -= step
    return seqs, tss, trained


def random_windows(
    sequences: list[np.ndarray], timestamps: list[np.ndarray], max_seq_len: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One window of `max_seq_len + 1` items per history, ending at a uniformly drawn position (a
    history shorter than that is kept whole). Drawn afresh each epoch, a short-history stage sees a
    different slice of every user's history each time at the cost of one window, where `last` would
    repeat the same most recent slice: every full-length end position is equally likely, so over
    epochs every transition of the history can be trained on."""
    seqs, tss = [], []
    width = max_seq_len + 1
    for seq, ts in zip(sequences, timestamps):
        n = len(seq)
        end = int(rng.integers(width, n + 1)) if n > width else n
        seqs.append(seq[end - min(width, n):end])
        tss.append(ts[end - min(width, n):end])
    return seqs, tss


def cold_item_split(data: "InteractionData", fraction: float, seed: int) -> tuple[LeaveOneOutSplit, np.ndarray]:
    """Withhold a random `fraction` of items from training entirely: they are removed from every
    sequence used for training and as inputs, and the test set keeps only users whose test target is
    one of them (ranked against the whole catalogue). Returns (split, cold item ids)."""
    rng = np.random.default_rng([seed, 20_240_917])
    n_cold = int(round(fraction * data.num_items))
    cold = np.sort(rng.choice(np.arange(1, data.num_items + 1), size=n_cold, replace=False))
    is_cold = np.zeros(data.num_items + 1, dtype=bool)
    is_cold[cold] = True
    full = leave_one_out(data)
    keep_train = [~is_cold[s] for s in full.train]
    train = [s[k] for s, k in zip(full.train, keep_train)]
    train_ts = [t[k] for t, k in zip(full.train_timestamps, keep_train)]

    def warm_history(eval_set: EvalSet, users: np.ndarray) -> EvalSet:
        hist = [eval_set.histories[u][~is_cold[eval_set.histories[u]]] for u in users]
        hts = [eval_set.history_timestamps[u][~is_cold[eval_set.histories[u]]] for u in users]
        ok = np.array([len(h) > 0 for h in hist], dtype=bool)
        return EvalSet(users=users[ok], histories=[h for h, o in zip(hist, ok) if o],
                       history_timestamps=[t for t, o in zip(hts, ok) if o],
                       targets=eval_set.targets[users][ok], target_timestamps=eval_set.target_timestamps[users][ok])

    users = np.arange(data.num_users)
    valid_users = users[~is_cold[full.valid.targets]]  # model selection on warm targets only
    test_users = users[is_cold[full.test.targets]]
    split = LeaveOneOutSplit(train=train, train_timestamps=train_ts,
                             valid=warm_history(full.valid, valid_users), test=warm_history(full.test, test_users))
    return split, cold


class UniformNegativeSampler:
    """Negatives drawn uniformly from the catalogue (ids 1..N), avoiding the batch's positives."""

    def __init__(self, num_items: int, seed: int = 0):
        if num_items < 2:
            raise ValueError(f"UniformNegativeSampler needs at least 2 items; got {num_items}")
        self.num_items = num_items
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, count: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """[count] int64 ids drawn uniformly from 1..N minus `exclude` (typically the batch's
        positives). If everything is excluded, draws from the whole catalogue (the loss masks
        same-id negatives anyway)."""
        if exclude is None or exclude.numel() == 0:
            return torch.randint(1, self.num_items + 1, (count,), generator=self.generator)
        banned = torch.zeros(self.num_items + 1, dtype=torch.bool)
        banned[0] = True
        banned[exclude[(exclude > 0) & (exclude <= self.num_items)].long()] = True
        allowed = (~banned).nonzero().squeeze(1)  # [n_allowed] ids, O(N) per call, cheap next to a forward pass
        if allowed.numel() == 0:
            return torch.randint(1, self.num_items + 1, (count,), generator=self.generator)
        return allowed[torch.randint(0, allowed.numel(), (count,), generator=self.generator)]
