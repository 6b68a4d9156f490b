"""Export the project's leave-one-out sequences as RecBole atomic files (runs in the PROJECT venv).

    PYTHONPATH=<repo> .venv/bin/python benchmarks/peer/export_split.py --out outputs/peer/data

For each data set (`ml-100k`, `ml-latest-small`) the sequences come from the project's own loader
(`feature_gen.data.sequences.load_interaction_data` with the default config), so filtering, item
rejects and the tie order (stable sort by timestamp, file order breaks ties) are exactly the
project's. Written to `<out>/<name>/`:

* `<name>.inter`: `user_id:token  item_id:token  timestamp:float`, one row per event; the timestamp is
  the event's position in the user's sequence (0, 1, 2, ...), so it is unique per user and exact in
  float32, and RecBole's time ordering cannot reorder ties.
* `<name>.item`: `item_id:token`, the project's whole catalogue (items no one rated stay rankable, as
  in the project's evaluation).
* `split.json`: counts and the per-user test / valid targets, for the check in `recbole_sasrec.py`.

Tokens are the project's internal ids (users 0..U-1, items 1..N), so RecBole's remapped ids can be
translated back. The script asserts that each user's last (second last) exported item is the project's
leave-one-out test (validation) target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from feature_gen.config import HLLMConfig
from feature_gen.data.sequences import leave_one_out, load_interaction_data

# RecBole special-cases the dataset name "ml-100k": it then reads its own bundled copy (raw float32
# timestamps, reordered ties) whatever data_path says. A prefix keeps every name ours.
NAMES = {"ml-100k": "loo-ml-100k", "ml-latest-small": "loo-ml-latest-small"}


def export(source: str, out: Path) -> dict:
    cfg = HLLMConfig()
    cfg.data.source = source
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    name = NAMES[source]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)

    rows = []
    for u, seq in enumerate(data.sequences):
        for pos, item in enumerate(seq):
            rows.append(f"{u}\t{int(item)}\t{pos}")
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    (folder / f"{name}.item").write_text(
        "item_id:token\n" + "\n".join(str(i) for i in range(1, data.num_items + 1)) + "\n"
    )

    # check: the export's last / second-last item per user is the project's test / valid target
    last = np.array([int(s[-1]) for s in data.sequences])
    second = np.array([int(s[-2]) for s in data.sequences])
    assert np.array_equal(last, split.test.targets), "last exported item != project test target"
    assert np.array_equal(second, split.valid.targets), "second-last exported item != project valid target"
    # and the file round-trips: re-read it, order by (user, timestamp) and compare
    back: dict[int, list[tuple[float, int]]] = {}
    for line in (folder / f"{name}.inter").read_text().splitlines()[1:]:
        u, i, t = line.split("\t")
        back.setdefault(int(u), []).append((np.float32(float(t)), int(i)))
    reread_last = np.array([sorted(back[u])[-1][1] for u in range(data.num_users)])
    assert np.array_equal(reread_last, split.test.targets), "re-read export disagrees with the test targets"
    info = {
        "source": source,
        "name": name,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": int(sum(len(s) for s in data.sequences)),
        "train_positions": int(sum(len(s) - 3 for s in data.sequences)),
        "dropped_interactions": data.dropped_interactions,
        "fingerprint": data.fingerprint,
        "test_targets_checked": int(len(last)),
        "test_targets": last.tolist(),
        "valid_targets": second.tolist(),
    }
    (folder / "split.json").write_text(json.dumps(info))
    print(
        f"{name}: {info['users']} users, {info['items']} items, {info['interactions']} interactions -> {folder}; "
        f"last item == project test target for {info['test_targets_checked']}/{data.num_users} users"
    )
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/peer/data")
    ap.add_argument("--sources", nargs="+", default=["ml-100k", "ml-latest-small"], choices=sorted(NAMES))
    args = ap.parse_args()
    for s in args.sources:
        export(s, Path(args.out))


if __name__ == "__main__":
    main()
