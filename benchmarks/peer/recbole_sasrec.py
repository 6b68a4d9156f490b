"""RecBole 1.2.1 SASRec (full softmax) on the project's leave-one-out split: the peer baseline.

Runs in its OWN virtualenv (RecBole needs numpy 1.x; see README.md here), on the atomic files that
`export_split.py` wrote from the project's loaders:

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        .venv-recbole/bin/python benchmarks/peer/recbole_sasrec.py --dataset ml-100k --seed 0

Protocol (the project's, README "Evaluation protocol"): leave-one-out after the project's stable time
sort (RecBole `eval_args: split LS valid_and_test, order TO, mode full`), ranking against the whole
catalogue with the user's whole input history removed (the target itself stays rankable). RecBole does
not remove the history for sequential models, so `HistoryMaskedTrainer._full_sort_batch_eval` does:
the full history is looked up from the exported sequences (the exported timestamp is the event's
position in the user's sequence, so the target's timestamp says where the history ends) and is
checked against the interaction's own `item_id_list` / `item_length`. The validation-selected
checkpoint (RecBole's `valid_metric: NDCG@10`) is reloaded and evaluated on test.

Metrics written: `test` / `valid` with the project's pessimistic ranks (the rank of the target is the
number of other rankable items scoring >= it), and `test_recbole` / `valid_recbole` as RecBole computes
them (topk; ties broken arbitrarily) as a cross-check. Recall@K = HR@K (one target per user).

Cost: `positions_per_s` = training positions (RecBole's augmented rows; each row is one next-item
target over up to MAX_ITEM_LIST_LENGTH inputs) per second of training (evaluation excluded);
`input_positions_per_s` counts the input items processed instead; `seconds_to_best` is the wall time
from the start of training to the end of the selected epoch's validation, `train_seconds_to_best`
the training time alone up to and including the selected epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole checkpoints pickle the Config
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

KS = (10, 50, 200)
# the exported folder names (export_split.py): never "ml-100k", which RecBole maps to its bundled copy
DATASETS = {"ml-100k": "loo-ml-100k", "ml-latest-small": "loo-ml-latest-small"}


def sasrec_config(args) -> dict:
    """RecBole's standard SASRec setup (its defaults, written out) on the project's split."""
    return {
        # data: the exported atomic files, nothing filtered or normalised
        "data_path": str(Path(args.data).resolve()),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "filter_inter_by_user_or_item": False,
        "normalize_all": False,
        "MAX_ITEM_LIST_LENGTH": 50,
        # leave-one-out, full ranking
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG", "Hit"],
        "topk": list(KS),
        "valid_metric": "NDCG@10",
        "eval_batch_size": 4096,
        # model: RecBole 1.2.1 SASRec defaults (recbole/properties/model/SASRec.yaml)
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 64,
        "inner_size": 256,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "loss_type": "CE",  # full softmax over the catalogue
        "train_neg_sample_args": None,  # no negative sampling
        # training: RecBole's overall defaults, epochs capped
        "learner": "adam",
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "train_batch_size": 2048,
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "eval_step": 1,
        "clip_grad_norm": None,
        # run
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "worker": 0,
        "show_progress": False,
        "log_wandb": False,
        "checkpoint_dir": str(Path(args.work) / "saved" / f"{args.dataset}-seed{args.seed}"),
        "state": "INFO",
    }


def read_sequences(data_dir: Path, name: str) -> dict[str, list[str]]:
    """user token -> item tokens in the exported order (timestamp = position)."""
    seqs: dict[str, list[tuple[int, str]]] = {}
    with open(data_dir / name / f"{name}.inter") as f:
        next(f)
        for line in f:
            u, i, t = line.rstrip("\n").split("\t")
            seqs.setdefault(u, []).append((int(float(t)), i))
    out = {}
    for u, rows in seqs.items():
        rows.sort()
        assert [p for p, _ in rows] == list(range(len(rows))), f"user {u}: positions are not 0..n-1"
        out[u] = [i for _, i in rows]
    return out


def project_metrics(ranks: np.ndarray) -> dict[str, float]:
    """The project's Recall@K / NDCG@K from pessimistic 0-based ranks (feature_gen/evaluation/metrics.py)."""
    out = {}
    for k in KS:
        out[f"recall@{k}"] = float(np.mean(ranks < k))
    for k in KS:
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, choices=["ml-100k", "ml-latest-small"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--stopping-step", type=int, default=10)
    ap.add_argument("--data", default="outputs/peer/data")
    ap.add_argument("--work", default="outputs/peer/work", help="RecBole's log/ and saved/ go here")
    ap.add_argument("--out", default="outputs/peer/results")
    ap.add_argument("--tag", default="", help="suffix of the result file name (e.g. -smoke)")
    ap.add_argument("--note", default="", help="free text stored in the result (e.g. why epochs were lowered)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its progress file (<out>/<dataset>-seed<k><tag>.progress.json): "
                         "RecBole's last saved (= best so far) checkpoint, its optimizer and early-stopping counter, "
                         "and the epoch log up to that checkpoint. With --tag and no tagged progress file it reads the "
                         "untagged run's (<dataset>-seed<k>.progress.json): how a run still training is evaluated as it "
                         "stands (--epochs = its best epoch + 1). Nothing to resume is an error")
    ap.add_argument("--sanity-popularity", action="store_true",
                    help="no training: rank by training-set popularity through the same evaluation hook "
                         "(the project's harness gives ML-100K test NDCG@10 0.0432, Recall@10 0.0838)")
    args = ap.parse_args()
    # absolute before the chdir below: the defaults (and run_peer.sh's PEER_ROOT) are relative paths
    args.data, args.work, args.out = (str(Path(p).resolve()) for p in (args.data, args.work, args.out))

    load_start = os.getloadavg()
    wall_start = time.time()
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes log/ and log_tensorboard/ into the working directory

    from recbole import __version__ as recbole_version
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed, set_color  # noqa: F401

    data_dir = Path(args.data)
    name = DATASETS[args.dataset]
    split_info = json.loads((data_dir / name / "split.json").read_text())
    assert split_info["source"] == args.dataset and split_info["name"] == name
    token_seqs = read_sequences(data_dir, name)

    config = Config(model="SASRec", dataset=name, config_dict=sasrec_config(args))
    assert Path(config["data_path"]).resolve() == (data_dir / name).resolve(), config["data_path"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)  # after RecBole's setup, in case it touched it

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])

    # --- the split is the project's: every user's test (valid) target is the exported last (second last)
    uid_tokens = dataset.field2id_token["user_id"]
    iid_tokens = dataset.field2id_token["item_id"]
    for part, loader, key in (("test", test_data, "test_targets"), ("valid", valid_data, "valid_targets")):
        feat = loader._dataset.inter_feat
        got = {int(uid_tokens[u]): int(iid_tokens[i]) for u, i in zip(feat["user_id"].tolist(), feat["item_id"].tolist())}
        want = split_info[key]
        assert len(got) == len(want) == split_info["users"], f"{part}: {len(got)} users vs {len(want)} exported"
        bad = [u for u, t in enumerate(want) if got[u] != t]
        assert not bad, f"{part}: {len(bad)} users' targets differ from the project's, e.g. user {bad[0]}"
    assert dataset.item_num - 1 == split_info["items"], (dataset.item_num - 1, split_info["items"])
    train_feat = train_data._dataset.inter_feat
    train_rows = len(train_feat)
    assert train_rows == split_info["train_positions"], (train_rows, split_info["train_positions"])
    train_input_positions = int(train_feat["item_length"].sum())
    print(f"split check: {split_info['users']} users' valid and test targets equal the project's; "
          f"{split_info['items']} items; {train_rows} training positions", flush=True)

    # full histories in RecBole's internal ids, indexed by internal user id
    token2uid = {t: i for i, t in enumerate(uid_tokens)}
    token2iid = {t: i for i, t in enumerate(iid_tokens)}
    histories: list[np.ndarray | None] = [None] * dataset.user_num
    for u, items in token_seqs.items():
        histories[token2uid[u]] = np.array([token2iid[i] for i in items], dtype=np.int64)

    class HistoryMaskedTrainer(Trainer):
        """Removes each user's whole input history from the full ranking (the target stays rankable),
        records pessimistic ranks, and times the training epochs."""

        ranks: list[np.ndarray]
        epoch_log: list[dict]

        def _full_sort_batch_eval(self, batched_data):
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            uids = interaction["user_id"].cpu().numpy()
            pos = interaction["timestamp"].cpu().numpy().astype(np.int64)  # position of the target
            targets = interaction["item_id"].cpu().numpy()
            lists = interaction["item_id_list"].cpu().numpy()
            lengths = interaction["item_length"].cpu().numpy()
            rows, cols = [], []
            for r, (u, p) in enumerate(zip(uids, pos)):
                seq = histories[u]
                hist = seq[:p]
                assert seq[p] == targets[r], "target is not the item at the exported position"
                n = int(lengths[r])
                assert np.array_equal(lists[r, :n], hist[-n:]), "item_id_list is not the tail of the history"
                hist = np.unique(hist)
                hist = hist[hist != targets[r]]  # the target always stays rankable
                rows.append(np.full(len(hist), r))
                cols.append(hist)
            rows_t = torch.from_numpy(np.concatenate(rows))
            cols_t = torch.from_numpy(np.concatenate(cols))
            scores[rows_t, cols_t] = -np.inf
            # pessimistic rank: other rankable items scoring >= the target (NaN counts as -inf)
            s = torch.nan_to_num(scores, nan=-np.inf)
            tgt = torch.from_numpy(targets)
            t_score = s[torch.arange(len(tgt)), tgt].unsqueeze(1)
            rank = (s >= t_score).sum(dim=1) - 1
            self.ranks.append(rank.numpy())
            return interaction, scores, positive_u, positive_i

        @torch.no_grad()
        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            self.ranks = []
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
            self.last_ranks = np.concatenate(self.ranks)
            return result

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            t0 = time.time()
            loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            self.epoch_log.append({"epoch": epoch_idx, "train_seconds": time.time() - t0,
                                   "loss": float(loss), "load": os.getloadavg()[0]})
            return loss

    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = HistoryMaskedTrainer(config, model)
    if args.sanity_popularity:
        # the project's popularity scorer: counts over each user's training part (all but the last two)
        counts = torch.zeros(dataset.item_num)
        for seq in histories[1:]:  # internal user 0 is RecBole's [PAD]
            np.add.at(counts.numpy(), seq[:-2], 1.0)
        # the project's tie-break (feature_gen reference_scorers.popularity_vectors): a tiny jitter by
        # the project's item id, which is the exported token
        project_ids = np.array([0] + [int(t) for t in iid_tokens[1:]])
        counts += torch.from_numpy(np.linspace(0, 1e-3, split_info["items"] + 1, dtype=np.float32)[project_ids])
        counts[0] = 0.0
        model.full_sort_predict = lambda interaction: counts.unsqueeze(0).repeat(len(interaction), 1)
        recbole_res = trainer.evaluate(test_data, load_best_model=False)
        res = project_metrics(trainer.last_ranks)
        print(f"popularity sanity, {args.dataset} test: project-protocol metrics "
              + " ".join(f"{k} {v:.4f}" for k, v in res.items())
              + f"; RecBole's topk (ties arbitrary): NDCG@10 {recbole_res['ndcg@10']:.4f} Recall@10 {recbole_res['recall@10']:.4f}",
              flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / f"{args.dataset}-seed{args.seed}{args.tag}.progress.json"
    trainer.epoch_log = []
    resumed_from = None
    prior_wall = 0.0
    if args.resume:
        # a tagged evaluation of a run still training reads that run's progress (and never writes it)
        untagged = out / f"{args.dataset}-seed{args.seed}.progress.json"
        source = progress_path if progress_path.exists() or not args.tag else untagged
        if not source.exists():
            raise SystemExit(f"--resume: nothing to resume, {source} does not exist (start the run without --resume)")
        # RecBole saves only on a new best, so the run restarts after the best epoch: later epochs are
        # dropped from the log and trained again (their randomness differs from the interrupted run's).
        progress = json.loads(source.read_text())
        resumed_from = progress["checkpoint"]
        if not resumed_from or not Path(resumed_from).exists():
            raise SystemExit(f"--resume: {source} names checkpoint {resumed_from}, which is gone "
                             f"(remove {source} to start the run again)")
        trainer.resume_checkpoint(resumed_from)
        trainer.epoch_log = [r for r in progress["history"] if r["epoch"] < trainer.start_epoch]
        prior_wall = trainer.epoch_log[-1]["wall_seconds"] if trainer.epoch_log else 0.0
        print(f"resumed from {resumed_from}: epoch {trainer.start_epoch}, best valid NDCG@10 "
              f"{trainer.best_valid_score:.4f}, {len(trainer.epoch_log)} epochs logged", flush=True)
    fit_start = time.time() - prior_wall

    def on_epoch_end(epoch_idx, valid_score):
        rec = trainer.epoch_log[-1]
        assert rec["epoch"] == epoch_idx
        rec["valid_ndcg@10"] = float(valid_score)
        rec["valid_project"] = project_metrics(trainer.last_ranks)
        rec["wall_seconds"] = time.time() - fit_start
        print(f"epoch {epoch_idx}: train {rec['train_seconds']:.1f}s loss {rec['loss']:.4f} "
              f"valid NDCG@10 {valid_score:.4f} (project {rec['valid_project']['ndcg@10']:.4f}) "
              f"wall {rec['wall_seconds']:.0f}s load {rec['load']:.2f}", flush=True)
        # RecBole has just saved the model if this epoch is a new best (fit saves before the callback)
        saved = Path(trainer.saved_model_file)
        checkpoint = str(saved.resolve()) if saved.exists() else resumed_from
        progress_path.write_text(json.dumps({"checkpoint": checkpoint, "history": trainer.epoch_log}, indent=1) + "\n")

    if trainer.start_epoch >= args.epochs:
        # nothing left to train (a resumed run evaluated as it stands): RecBole's fit would re-save the
        # checkpoint with epoch -1, so a later --resume would start again from epoch 0
        best_valid_score = trainer.best_valid_score
    else:
        best_valid_score, _ = trainer.fit(
            train_data, valid_data, verbose=True, saved=True, show_progress=False, callback_fn=on_epoch_end
        )
    fit_seconds = time.time() - fit_start
    log = trainer.epoch_log
    best = max(log, key=lambda r: (r["valid_ndcg@10"], -r["epoch"]))  # RecBole keeps the first best
    best_epoch = best["epoch"]
    assert abs(best["valid_ndcg@10"] - best_valid_score) < 1e-12, (best, best_valid_score)

    if resumed_from and not Path(trainer.saved_model_file).exists():
        trainer.saved_model_file = resumed_from  # no new best after the resume: the best is the one resumed
    valid_recbole = trainer.evaluate(valid_data, load_best_model=True)
    valid_ranks = trainer.last_ranks
    test_recbole = trainer.evaluate(test_data, load_best_model=True)
    test_ranks = trainer.last_ranks
    assert len(test_ranks) == split_info["users"]

    train_seconds = sum(r["train_seconds"] for r in log)
    result = {
        "benchmark": "peer: RecBole SASRec (CE, full softmax), project leave-one-out split, history removed",
        "dataset": args.dataset,
        "seed": args.seed,
        "test": project_metrics(test_ranks),
        "valid": project_metrics(valid_ranks),
        "test_recbole": {k: float(v) for k, v in test_recbole.items()},
        "valid_recbole": {k: float(v) for k, v in valid_recbole.items()},
        "best_epoch": best_epoch,
        "epochs_run": len(log),
        "max_epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "stopped_early": len(log) < args.epochs,
        "seconds_total": time.time() - wall_start,
        "fit_seconds": fit_seconds,
        "seconds_to_best": best["wall_seconds"],
        "train_seconds_to_best": sum(r["train_seconds"] for r in log if r["epoch"] <= best_epoch),
        "train_seconds": train_seconds,
        "seconds_per_epoch_train": train_seconds / len(log),
        "train_positions_per_epoch": train_rows,
        "train_input_positions_per_epoch": train_input_positions,
        "positions_per_s": train_rows * len(log) / train_seconds,
        "input_positions_per_s": train_input_positions * len(log) / train_seconds,
        "users": split_info["users"],
        "items": split_info["items"],
        "data_fingerprint": split_info["fingerprint"],
        "recbole_dataset": name,
        "data_path": config["data_path"],
        "recbole_version": recbole_version,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "note": args.note,
        "resumed_from": resumed_from,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "config": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else str(v))
                   for k, v in sorted(config.final_config_dict.items())
                   if k in sasrec_config(args) or k in ("model", "dataset", "MODEL_TYPE")},
        "history": log,
    }
    path = out / f"{args.dataset}-seed{args.seed}{args.tag}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    t = result["test"]
    print(f"{args.dataset} seed {args.seed}: best epoch {best_epoch}/{len(log)}; test NDCG@10 {t['ndcg@10']:.4f} "
          f"Recall@10 {t['recall@10']:.4f} (RecBole: {result['test_recbole']['ndcg@10']:.4f} / "
          f"{result['test_recbole']['recall@10']:.4f}); {result['positions_per_s']:.0f} positions/s; "
          f"{result['seconds_to_best']:.0f}s to best -> {path}", flush=True)


if __name__ == "__main__":
    main()
