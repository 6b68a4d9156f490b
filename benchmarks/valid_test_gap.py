"""Where a trained model's validation score is lost on test: NDCG@10 by how popular the target is.

The best HLLM passes SASRec on validation and drops more to test (BENCHMARKS.md, "Where HLLM stands").
This reads a finished run's selected weights (RUN_DIR/best/model.safetensors, its config RUN_DIR/config.yaml),
ranks the validation and the test targets through the one evaluation protocol, and splits each by the
target's training count into terciles (rare / mid / popular; thresholds from that split's targets). For a
cosine model it also ranks with a log-popularity prior added to every score (cosine + lambda * log(1 + count)),
which a model that lacks a popularity signal on test would gain from; and ranks each split's targets from
the history less its most recent item (on test: without the validation item). Not part of `make bench`: it reads
run folders that `hllm quality` trained (the older ones need the config.yaml the trainer now writes).

    .venv/bin/python -m benchmarks.valid_test_gap --run "LABEL=RUN_DIR" [--run ...] \
        --output benchmarks/results/valid_test_gap.json [--merge]

--merge keeps the rows already in --output (run folders do not outlive a machine) and adds these.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import merged_command, write_result

COMMAND = ".venv/bin/python -m benchmarks.valid_test_gap"
PRIORS = (0.02, 0.05, 0.1)  # lambda: the prior's weight against a cosine in [-1, 1]
TERCILES = ("rare", "mid", "popular")


def tercile_of_targets(target_counts: np.ndarray) -> np.ndarray:
    """Per target (its training count), 0 / 1 / 2 = rare / mid / popular: cut at the 1/3 and 2/3
    quantiles of these counts, ties going to the lower tercile. Raises ValueError on no targets."""
    counts = np.asarray(target_counts, dtype=float)
    if counts.size == 0:
        raise ValueError("tercile_of_targets: no targets")
    low, high = np.quantile(counts, [1 / 3, 2 / 3])
    return np.where(counts <= low, 0, np.where(counts <= high, 1, 2))


def subset(eval_set, rows: np.ndarray):
    """The EvalSet restricted to `rows` (indices into its users), same order."""
    from feature_gen.data.sequences import EvalSet

    return EvalSet(users=eval_set.users[rows], histories=[eval_set.histories[i] for i in rows],
                   history_timestamps=[eval_set.history_timestamps[i] for i in rows],
                   targets=eval_set.targets[rows], target_timestamps=eval_set.target_timestamps[rows])


def with_prior(users: torch.Tensor, table: torch.Tensor, counts: np.ndarray, weight: float):
    """(users [U, D+1], table [N+1, D+1]) whose inner product is cosine(u, i) + weight * log(1 + count_i)."""
    from feature_gen.evaluation.protocol import in_scoring_space

    u, t = in_scoring_space(users, "cosine"), in_scoring_space(table, "cosine")
    prior = torch.as_tensor(np.log1p(counts), dtype=torch.float32)[:, None]
    return torch.cat([u, torch.full((len(u), 1), float(weight))], 1), torch.cat([t, prior], 1)


def gap_rows(users_by_split: dict[str, torch.Tensor], table: torch.Tensor, eval_sets: dict, counts: np.ndarray,
             cfg, similarity: str, users_without_last: dict[str, torch.Tensor] | None = None) -> dict:
    """{"valid"|"test": {"ndcg@10", "target_log_count", "<tercile>": {"users", "ndcg@10"}, "prior <w>",
    "without last input"}}.

    users_by_split: per split name, the user vectors [U, D] of that split's EvalSet (same order); table: the
    item table [N+1, D] every split ranks; counts: training count per item id [N+1]. users_without_last
    (optional, same shapes): each user's vector from its history less the most recent item, ranked for the
    same target with the same seen items removed: how much of a split's score rests on its last input (on
    test, the validation item: the one input no training window of that user held)."""
    from feature_gen.evaluation.protocol import evaluate_vectors

    out = {}
    for which, eval_set in eval_sets.items():
        users = users_by_split[which]
        row = {"ndcg@10": evaluate_vectors(users, table, eval_set, cfg, similarity).values["ndcg@10"],
               "target_log_count": float(np.log1p(counts[eval_set.targets]).mean())}
        if users_without_last is not None:
            row["without last input"] = evaluate_vectors(users_without_last[which], table, eval_set, cfg,
                                                         similarity).values["ndcg@10"]
        terciles = tercile_of_targets(counts[eval_set.targets])
        for k, name in enumerate(TERCILES):
            rows = np.flatnonzero(terciles == k)
            row[name] = {"users": int(len(rows)), "ndcg@10": evaluate_vectors(
                users[rows], table, subset(eval_set, rows), cfg, similarity).values["ndcg@10"]}
        if similarity == "cosine":
            for weight in PRIORS:
                u, t = with_prior(users, table, counts, weight)
                row[f"prior {weight}"] = evaluate_vectors(u, t, eval_set, cfg, "dot").values["ndcg@10"]
        out[which] = row
    return out


def run_one(run_dir: str) -> dict:
    """The gap table of the run in `run_dir` (FileNotFoundError naming a missing config.yaml or weights)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from feature_gen.config import load_config
    from feature_gen.data.sequences import leave_one_out, load_interaction_data
    from feature_gen.inference.encoders import embed_users
    from trainer.train import build_recommender

    folder = Path(run_dir)
    for needed in ("config.yaml", "best/model.safetensors"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder / needed}: a finished run folder keeps its config and selected weights")
    cfg = load_config(folder / "config.yaml")
    if cfg.data.split != "leave_one_out":
        raise ValueError(f"{folder}: data.split is {cfg.data.split!r}; the gap is read on the leave-one-out split")
    data = load_interaction_data(cfg.data, cfg.item_text)
    split = leave_one_out(data)
    recommender, _, _ = build_recommender(cfg, data)
    recommender.load_state_dict(load_file(str(folder / "best" / "model.safetensors")), strict=False)
    recommender.eval()
    counts = np.bincount(np.concatenate(split.train).astype(np.int64), minlength=data.num_items + 1)
    eval_sets = {"valid": split.valid, "test": split.test}
    with torch.no_grad():
        table = recommender.item_table().float()
        def users(histories, timestamps):
            return embed_users(recommender.user_model, table, histories, timestamps, cfg.data.max_seq_len).vectors

        def less_last(seqs):  # a history of one item keeps it (nothing to embed otherwise); MovieLens users have >= 20
            return [x[:-1] if len(x) > 1 else x for x in seqs]

        users_by_split = {which: users(s.histories, s.history_timestamps) for which, s in eval_sets.items()}
        users_without_last = {which: users(less_last(s.histories), less_last(s.history_timestamps))
                              for which, s in eval_sets.items()}
    return {"model": cfg.train.model, "data": cfg.data.source, "seed": cfg.seed, "folder": str(folder),
            **gap_rows(users_by_split, table, eval_sets, counts, cfg, cfg.loss.similarity, users_without_last)}


def markdown(doc: dict) -> str:
    cols = ["ndcg@10", *TERCILES, *(f"prior {w}" for w in PRIORS), "without last input"]
    lines = ["| run | split | target log(1+count) | " + " | ".join(f"NDCG@10 {c}" if c != "ndcg@10" else "NDCG@10"
                                                          for c in cols) + " |",
             "|---" * (len(cols) + 3) + "|"]
    for label, r in doc["runs"].items():
        for which in ("valid", "test"):
            row = r[which]
            cells = [f"{row['ndcg@10']:.4f}"]
            cells += [f"{row[t]['ndcg@10']:.4f} ({row[t]['users']})" for t in TERCILES]
            cells += [f"{row[f'prior {w}']:.4f}" if f"prior {w}" in row else "" for w in PRIORS]
            cells += [f"{row['without last input']:.4f}" if "without last input" in row else ""]
            lines.append(f"| {label} | {which} | {row['target_log_count']:.3f} | " + " | ".join(cells) + " |")
    return (f"{doc['note']}\n\n" + "\n".join(lines) + f"\n\nCommand: `{doc['command']}`; "
            f"load average {doc['loadavg']}.")


NOTE = ("Validation and test NDCG@10 of each run's selected checkpoint, split by the target's training count into "
        "terciles (rare / mid / popular, users in brackets), and with a log-popularity prior added to a cosine "
        "model's scores (cosine + lambda log(1 + count)), and from each history less its most recent item "
        "(without last input; on test, the validation item), the same target and seen items.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.valid_test_gap", description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR")
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default=None, help="the table's note (default: the file's under --merge, else NOTE)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs already in --output (their folders may be gone); a label given again "
                             "replaces its run; the command is appended to the file's ('<old>; then <new>')")
    args = parser.parse_args(argv)
    previous = {}
    if args.merge and args.output and Path(args.output).is_file():
        previous = json.loads(Path(args.output).read_text())
    runs = dict(previous.get("runs", {}))
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            parser.error(f"--run {spec!r}: expected LABEL=RUN_DIR")
        runs[label] = run_one(folder)
        print(f"{label}: valid {runs[label]['valid']['ndcg@10']:.4f} test {runs[label]['test']['ndcg@10']:.4f}",
              flush=True)
    command = COMMAND + " " + " ".join(f"--run '{s.partition('=')[0]}=DIR'" for s in args.run)
    command = merged_command(previous.get("command"), command + (" --merge" if args.merge else ""))
    doc = {"command": command, "note": args.note or previous.get("note") or NOTE,
           "loadavg": ", ".join(f"{x:.1f}" for x in os.getloadavg()), "runs": runs}
    print(markdown(doc))
    write_result(doc, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
