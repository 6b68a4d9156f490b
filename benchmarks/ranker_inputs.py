"""How the example ranker should take the HLLM embeddings: raw, or unit-length and projected.

    python -m benchmarks.ranker_inputs run --demo-dir outputs/demo --seeds 0 1 2
    # -> benchmarks/results/ranker_inputs.json; `markdown` prints the table BENCHMARKS.md holds

Reads a finished `make demo` output folder (its demo_state.pkl: config, items, interactions, bundle,
feature config; its offline store), builds the ranker's training set once (the demo's labels and time
split) and trains the example TF ranker (ranker_integration/ranker.py) once per variant and seed:

    ids_only          user/item IDs + hour/weekday (the demo's "IDs + context only")
    scalars_only      + user_item_score (cosine), sequence_length, freshness_seconds: no vectors
    raw_vectors       + the two embeddings as they are (ranker.embedding_projection_dim: null)
    projected_<d>     + the two embeddings L2-normalised and projected to d (the default: 8)

Each row: test AUC and GAUC (mean ± sd over the ranker's seeds, which set its initial weights and
batch order; the data and features are the same in every seed) and train AUC (how much it memorises).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shlex
import statistics
import sys
import time
from pathlib import Path

from benchmarks.harness import write_result

RESULT = Path(__file__).resolve().parent / "results" / "ranker_inputs.json"


def _variants(fc, projections: list[int]) -> dict[str, tuple[object, bool, int | None]]:
    """name -> (feature config, use_hllm, embedding_projection_dim)."""
    scalars = fc.scalars_only()  # as the demo's "scalars, no vectors" row
    out = {"ids_only": (fc, False, None), "scalars_only": (scalars, True, None), "raw_vectors": (fc, True, None)}
    out.update({f"projected_{d}": (fc, True, d) for d in projections})
    return out


def run(demo_dir: str, seeds: list[int], projections: list[int]) -> dict:
    from feature_gen.config import config_from_dict
    from ranker_integration.ranker import _cross_layer_class, train_ranker
    from ranker_integration.training_set import build_training_set, make_labels

    _cross_layer_class()  # registers the DCN layer before the state (which may hold a Keras model) loads
    state = pickle.loads((Path(demo_dir) / "demo_state.pkl").read_bytes())  # the demo's own resume file
    cfg, facts = config_from_dict(state["config"]), state["facts"]
    version, fc = facts["bundle"].name, facts["fc"]
    labels = make_labels(facts["items"], facts["interactions"], cfg.ranker, seed=cfg.seed)
    ts = build_training_set(labels, cfg.store, version, fc)
    train, test = ts.split("train"), ts.split("test")
    rows = {}
    for name, (vfc, use_hllm, dim) in _variants(fc, projections).items():
        rcfg = cfg.ranker.model_copy(update={"embedding_projection_dim": dim})
        runs = []
        for seed in seeds:
            r = train_ranker(train, test, vfc, rcfg, use_hllm=use_hllm, seed=seed)
            runs.append({"seed": seed, "auc": r.auc, "gauc": r.gauc, "train_auc": r.train_auc,
                         "train_seconds": r.train_seconds})
            print(f"{name} seed {seed}: AUC {r.auc:.4f} GAUC {r.gauc:.4f} train AUC {r.train_auc:.4f}", flush=True)
        rows[name] = {"features": list(vfc.names) if use_hllm else [], "embedding_projection_dim": dim, "runs": runs,
                      **{f"{m}_{s}": f(x[m] for x in runs) for m in ("auc", "gauc", "train_auc")
                         for s, f in (("mean", lambda v: statistics.fmean(v)),
                                      ("sd", lambda v: statistics.stdev(v) if len(seeds) > 1 else 0.0))}}
    return {"suite": "ranker_inputs", "bundle": version, "demo_dir": str(Path(demo_dir).resolve()),
            "train_rows": len(train.frame), "test_rows": len(test.frame), "seeds": seeds,
            "ranker": {k: v for k, v in cfg.ranker.model_dump().items() if k != "embedding_projection_dim"},
            "loadavg": os.getloadavg(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks.ranker_inputs " + shlex.join(sys.argv[1:]), "rows": rows}


def markdown(doc: dict) -> str:
    lines = [f"Bundle `{doc['bundle']}` (a `make demo` run), {doc['train_rows']:,} train / {doc['test_rows']:,} "
             f"test rows (later half of the labels), ranker seeds {', '.join(map(str, doc['seeds']))}; "
             f"load average {doc['loadavg'][0]:.1f} at the end. Command: `{doc['command']}`.",
             *([doc["note"]] if doc.get("note") else []), "",
             "| ranker inputs | test AUC | test GAUC | train AUC |", "|---|---|---|---|"]
    for name, row in doc["rows"].items():
        lines.append(f"| {name} | {row['auc_mean']:.4f} ± {row['auc_sd']:.4f} | {row['gauc_mean']:.4f} ± "
                     f"{row['gauc_sd']:.4f} | {row['train_auc_mean']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ranker_inputs", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--demo-dir", default="outputs/demo", help="a finished `make demo` output folder")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--projections", type=int, nargs="+", default=[4, 8, 16, 32])
    r.add_argument("--out", default=str(RESULT))
    sub.add_parser("markdown").add_argument("--result", default=str(RESULT))
    args = ap.parse_args(argv)
    if args.cmd == "run":
        doc = run(args.demo_dir, args.seeds, args.projections)
        print(f"wrote {write_result(doc, args.out)}")
        print(markdown(doc))
    else:
        import json

        print(markdown(json.loads(Path(args.result).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
