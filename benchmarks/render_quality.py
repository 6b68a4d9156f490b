"""Quality results as JSON, and BENCHMARKS.md's quality tables printed from them.

    # a table comparing rows already collected in other files, beside new runs (--row-from, repeatable)
    python -m benchmarks.render_quality collect --suite warm --dataset ml-100k \
        --row-from "sasrec-peer-ml-100k:sasrec (RecBole layout, ...)=sasrec" --run hllm-frozen=DIR --command "..."
    # collect finished runs (each a trainer run folder with result.json + metrics.jsonl) into one file
    python -m benchmarks.render_quality collect --suite sasrec-peer --dataset ml-100k \
        --run sasrec=runs/q/sasrec-s0,runs/q/sasrec-s1 --peer outputs/peer/results --command "..."
    # add runs to a file whose earlier run folders are gone: its other rows are kept as they are
    python -m benchmarks.render_quality collect --merge --suite sasrec-peer --dataset ml-100k \
        --peer-partial outputs/peer/results/ml-100k-seed1-epoch20.json --command "..."
    # rewrite the marked section of BENCHMARKS.md from every benchmarks/results/quality-*.json
    python -m benchmarks.render_quality

One file per suite and data set: `benchmarks/results/quality-<suite>-<dataset>.json` holding, per
run name, the seeds, each seed's test metrics of the validation-selected checkpoint, their mean and
sample sd, the cost (positions/s, seconds to the selected checkpoint), the command and the load
average at collection. A peer run (RecBole, written by its own script) is read from its JSON as is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import numpy as np

from benchmarks.harness import RUNNABLE_COMMAND, merged_command, write_result

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- quality-results:begin (python -m benchmarks.render_quality) -->", "<!-- quality-results:end -->"
METRICS = ["recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200"]


def trainer_run(folder: Path) -> dict:
    """One finished trainer run: test metrics of the selected checkpoint, its cost, its seed."""
    result = json.loads((folder / "result.json").read_text())
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    best = [h for h in result["history"] if h["epoch"] == result["best_epoch"]]
    best_step = best[-1]["step"] if best else 0
    # from the step log, not result.json's throughput: a run resumed (or closed) in another process
    # counts only that process's steps there
    trained = [r for r in steps if "loss" in r]
    seconds_to_best = sum(r["seconds"] for r in trained if r["step"] <= best_step)
    train_seconds = sum(r["seconds"] for r in trained)
    positions_per_s = sum(r["positions"] for r in trained) / train_seconds if train_seconds else 0.0
    seed = result.get("seed")
    if seed is None:  # runs from before result.json carried it: the folder name does (`...-s0`, `seed0`)
        found = re.search(r"(?:seed|-s)(\d+)$", folder.name)
        seed = int(found.group(1)) if found else None
    run = {"folder": str(folder), "seed": seed, "best_epoch": result["best_epoch"],
           "test": result["test"], "valid": result["valid"],
           "positions_per_s": positions_per_s, "train_seconds": train_seconds,
           "train_seconds_to_best": seconds_to_best, "epochs_run": max((r["epoch"] for r in trained), default=0) + 1}
    if "chance" in result:  # the trainer writes it since the cold tables needed it (older runs lack it)
        run["chance"], run["test_users"] = result["chance"]["test"], result["eval_users"]["test"]
    return run


def peer_run(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {"folder": str(path), "seed": r["seed"], "best_epoch": r["best_epoch"], "test": r["test"], "valid": r["valid"],
            "positions_per_s": r["positions_per_s"], "train_seconds": r["train_seconds"],
            "train_seconds_to_best": r["train_seconds_to_best"], "command": r.get("command"),
            "epochs_run": r.get("epochs_run"), "stopped_early": r.get("stopped_early")}


def summarise(runs: list[dict]) -> dict:
    out = {"seeds": [r["seed"] for r in runs], "runs": runs, "mean": {}, "sd": {}}
    for m in METRICS + ["positions_per_s", "train_seconds_to_best"]:
        values = np.array([r["test"][m] if m in r["test"] else r[m] for r in runs], dtype=float)
        out["mean"][m] = float(values.mean())
        out["sd"][m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    if runs and all("chance" in r for r in runs):
        out["chance"] = {m: float(np.mean([r["chance"][m] for r in runs])) for m in runs[0]["chance"]}
        out["test_users"] = [r["test_users"] for r in runs]
    return out


def chance_line(name: str, row: dict) -> str | None:
    """`name`: chance Recall@K over the row's own test users (mean over seeds) and the row's multiple of it."""
    if "chance" not in row:
        return None
    ks = [m for m in METRICS if m in row["chance"] and m.startswith("recall@")]
    figures = "; ".join(f"{m} {row['chance'][m]:.4f} ({row['mean'][m] / row['chance'][m]:.1f} x)" for m in ks)
    users = " / ".join(str(n) for n in row["test_users"])
    return f"{name}: {figures}; test users {users}"


PARTIAL = "recbole-sasrec (peer, seed {seed}, best of epochs 0-{last}, still training)"


_PARTIAL_NAME = re.compile(re.escape(PARTIAL).replace(r"\{seed\}", r"(\d+)").replace(r"\{last\}", r"\d+"))


def _partial_seed(name: str) -> int | None:
    found = _PARTIAL_NAME.fullmatch(name)
    return int(found.group(1)) if found else None


def _merge_row(runs: dict, name: str, new: list[dict]) -> None:
    """Row `name` takes the runs `new`; under --merge a seed it already holds and `new` lacks is kept."""
    seeds = {r["seed"] for r in new}
    kept = [r for r in runs.get(name, {}).get("runs", []) if r["seed"] not in seeds]
    runs[name] = summarise(sorted(kept + new, key=lambda r: (r["seed"] is None, r["seed"])))


def _row_from(spec: str) -> tuple[str, dict]:
    """`SUITE-DATASET:ROW[=NAME]` -> (NAME or ROW, that row of results/quality-SUITE-DATASET.json as it
    stands, marked with where it came from): a comparison table quoting runs collected elsewhere, whose
    folders may be gone. SystemExit naming the file or the row when either is missing."""
    source, _, rest = spec.partition(":")
    row, _, name = rest.partition("=")
    path = RESULTS / f"quality-{source}.json"
    if not path.is_file() or not row:
        raise SystemExit(f"--row-from {spec!r}: expected SUITE-DATASET:ROW[=NAME] with {path.name} in {RESULTS}")
    runs = json.loads(path.read_text())["runs"]
    if row not in runs:
        raise SystemExit(f"--row-from {spec!r}: no row {row!r} in {path.name} (rows: {', '.join(runs)})")
    return name or row, {**runs[row], "from": f"{path.name}: {row}"}


def collect(args) -> Path:
    if not RUNNABLE_COMMAND.match(args.command):  # a table's command is one a reader can run as is
        raise SystemExit(f"--command {args.command[:60]!r}...: start with the python command that trained the runs "
                         f"(pattern {RUNNABLE_COMMAND.pattern}); say how it was launched (e.g. hllm quality) after it")
    path = RESULTS / f"quality-{args.suite}-{args.dataset}.json"
    previous = json.loads(path.read_text()) if args.merge and path.is_file() else None
    # --merge: the file's rows stay as collected then (their run folders may be gone, e.g. on a new
    # machine); a seed collected again replaces that seed's run in its row, other seeds stay
    runs = dict(previous["runs"]) if previous else {}
    for spec in args.row_from:  # quoted rows first: the baselines a comparison starts from
        name, row = _row_from(spec)
        runs[name] = row
    for spec in args.run:
        name, folders = spec.split("=", 1)
        found = [trainer_run(Path(f)) for f in folders.split(",") if (Path(f) / "result.json").is_file()]
        if found:
            _merge_row(runs, name, found)
    finished: set[int] = set()
    if args.peer:
        # finished runs only: not -smoke / -epochN evaluations, not a run's .progress.json
        files = sorted(p for p in Path(args.peer).glob(f"{args.dataset}-seed*.json")
                       if re.fullmatch(rf"{re.escape(args.dataset)}-seed\d+\.json", p.name))
        if files:
            found = [peer_run(p) for p in files]
            finished = {r["seed"] for r in found}
            _merge_row(runs, "recbole-sasrec (peer)", found)
    for partial in args.peer_partial:  # a run still training: its best checkpoint so far, evaluated
        r = peer_run(Path(partial))
        if r["seed"] in finished:
            continue
        for name in [n for n in runs if _partial_seed(n) == r["seed"]]:
            del runs[name]  # an earlier evaluation of the same run, at fewer epochs
        runs[PARTIAL.format(seed=r["seed"], last=r["epochs_run"] - 1)] = summarise([r])
    for name in [n for n in runs if _partial_seed(n) in finished]:
        del runs[name]  # that run has finished: its final result replaces the evaluation in mid-run
    note = args.note or (previous or {}).get("note", "")
    command = merged_command((previous or {}).get("command"), args.command)
    doc = {"suite": args.suite, "dataset": args.dataset, "command": command, "note": note,
           "loadavg": list(os.getloadavg()), "runs": runs}
    # indent 1: the committed quality files' form since they were first written (2 would rewrite each one)
    write_result(doc, path, indent=1)
    print(f"-> {path}")
    return path


def table(doc: dict) -> str:
    lines = [f"#### {doc['dataset']}, {doc['suite']} (`{Path(RESULTS.name) / ('quality-' + doc['suite'] + '-' + doc['dataset'] + '.json')}`)", ""]
    if doc.get("note"):
        lines += [doc["note"], ""]
    lines += ["| run | seeds | " + " | ".join(METRICS) + " | positions/s | train s to selected |",
              "|---" * (len(METRICS) + 4) + "|"]
    for name, r in doc["runs"].items():
        cells = [f"{r['mean'][m]:.4f} ± {r['sd'][m]:.4f}" for m in METRICS]
        cells += [f"{r['mean']['positions_per_s']:.0f}", f"{r['mean']['train_seconds_to_best']:.0f}"]
        lines.append(f"| {name} | {', '.join(str(s) for s in r['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{doc['command']}`; load average at collection {', '.join(f'{v:.1f}' for v in doc['loadavg'])}."]
    chance = [line for name, r in doc["runs"].items() if (line := chance_line(name, r))]
    if chance:
        lines.append("Chance (expected Recall@K of a random ranking over each row's test users, their seen items "
                     "removed; mean over seeds; the row's multiple of it in brackets): " + " | ".join(chance) + ".")
    quoted = [f"{name} <- {r['from']}" for name, r in doc["runs"].items() if r.get("from")]
    if quoted:
        lines.append("Rows quoted from other result files (their commands are there): " + "; ".join(quoted) + ".")
    peer = [r for r in doc["runs"].values() if any(x.get("command") for x in r["runs"])]
    for r in peer:
        lines.append(f"Peer command: `{r['runs'][0]['command']}` (per seed).")
    return "\n".join(lines) + "\n"


def render() -> None:
    docs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("quality-*.json"))]
    body = "\n".join(table(d) for d in docs) or "(no results yet)\n"
    text = DOC.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{DOC}: marker {BEGIN!r} not found; add the begin/end markers where the tables go")
    text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{body}{END}", text, flags=re.S)
    DOC.write_text(text)
    print(f"{DOC}: {len(docs)} result file(s) rendered")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render_quality", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("collect")
    c.add_argument("--suite", required=True)
    c.add_argument("--dataset", required=True)
    c.add_argument("--run", action="append", default=[], metavar="NAME=DIR[,DIR...]")
    c.add_argument("--peer", help="folder of the peer's <dataset>-seed<N>.json results")
    c.add_argument("--peer-partial", action="append", default=[], metavar="JSON",
                   help="a peer result written by recbole_sasrec.py --resume --epochs N on a run still training")
    c.add_argument("--row-from", action="append", default=[], metavar="SUITE-DATASET:ROW[=NAME]",
                   help="copy a row of another results file (e.g. two-stage-ml-100k:hllm-stage1-24-epochs=hllm)")
    c.add_argument("--merge", action="store_true",
                   help="keep the runs already in the results file: a seed collected again replaces that seed's run "
                        "in its row, a peer's final result replaces its evaluations in mid-run")
    c.add_argument("--command", required=True,
                   help="the command that produced the runs; under --merge it is appended to the file's command "
                        "('<old>; then <new>'), so pass only the command of the runs collected now")
    c.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if args.cmd == "collect":
        collect(args)
    render()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
