"""Training entry point.

    deepspeed trainer/train.py --config configs/quality_hllm.yaml        # launcher: GPUs, nodes, hostfile
    hllm train --config configs/quality_hllm.yaml --set train.stage=2    # one process (CPU: gloo)
    python -m trainer.train --config X.yaml --deepspeed --deepspeed_config ds.json   # DeepSpeed's own arguments

`--deepspeed_config` is `train.deepspeed_config` given on the command line (both given and different:
an error naming both); `--deepspeed` is accepted and changes nothing (the trainer always runs DeepSpeed);
`--local_rank` is the launcher's.

Stage 1 trains Item and User LLM end to end on short histories; stage 2 freezes the Item LLM (from
`train.init_bundle`), caches the catalogue and trains the User LLM on long histories; stage 3 freezes
the selected weights into a bundle under `<train.output_dir>/bundles/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from feature_gen.config import ConfigError, HLLMConfig, load_config, parse_override

log = logging.getLogger("hllm.train")


def build_recommender(cfg: HLLMConfig, data):
    """(recommender, tokenizer or None, base-model descriptions) for cfg.train.model/stage."""
    from trainer.recommenders import HLLMRecommender, ProjectedSASRecUser, SASRecRecommender, catalogue_token_ids

    t = cfg.train
    if t.model == "sasrec":
        rec = SASRecRecommender(data.num_items, t.sasrec_hidden, t.sasrec_layers, t.sasrec_heads,
                                cfg.data.max_seq_len, t.dropout, cfg.loss.temperature_init, cfg.loss.max_logit_scale,
                                t.sasrec_ffn)
        return rec, None, {"item": "id-embedding", "user": f"sasrec({t.sasrec_layers}x{t.sasrec_hidden})"}

    def sasrec_user(item_dim: int):  # train.user_model: sasrec, SASRec's blocks in the User LLM's place
        return ProjectedSASRecUser(item_dim, t.sasrec_hidden, t.sasrec_layers, t.sasrec_heads,
                                   cfg.data.max_seq_len, t.dropout, t.sasrec_ffn)

    user_model = None
    if t.init_bundle:
        from trainer.init_bundle import load_init_bundle

        bundle = load_init_bundle(cfg)
        hllm, tokenizer = bundle.model, bundle.tokenizer
        bases = bundle.manifest.get("base_models", {})
        if t.user_model == "sasrec":  # the bundle brings its User LLM: replaced, so that ablation reads no weights of it
            user_model = sasrec_user(hllm.item_dim)  # train.item_dim is refused with init_bundle
    else:
        from feature_gen.model.hllm import build_item_llm, build_user_llm
        from feature_gen.model.hllm import HLLM

        item_llm, tokenizer, item_desc = build_item_llm(cfg)
        item_dim = t.item_dim or item_llm.hidden_size  # the item space the User LLM reads and predicts in
        if t.user_model == "sasrec":  # never build (nor load) the Llama User LLM that would be thrown away
            user_llm = sasrec_user(item_dim)
            user_desc = f"sasrec({t.sasrec_layers}x{t.sasrec_hidden})"
        else:
            user_llm, user_desc = build_user_llm(cfg, item_dim)
        hllm = HLLM(item_llm, user_llm, cfg)
        bases = {"item": item_desc, "user": user_desc}
    if t.gradient_checkpointing:
        for module in (hllm.item_llm, hllm.user_llm):
            backbone = getattr(module, "backbone", None)
            if hasattr(backbone, "gradient_checkpointing_enable"):
                backbone.gradient_checkpointing_enable()
    tokens = catalogue_token_ids(data.items, cfg.item_text, tokenizer)
    rec = HLLMRecommender(hllm, tokens, tokenizer.pad_token_id, t.stage, t.text_plus_id, cfg.item_llm.padding_side,
                          id_only=t.id_only, user_model=user_model, item_dim=t.item_dim,
                          item_projection_init=t.item_projection_init, id_init=t.id_init,
                          id_anchor_weight=t.id_anchor_weight)
    return rec, tokenizer, bases


def run_training(cfg: HLLMConfig, resume: bool = True):
    """Train, select on validation NDCG@10, report test metrics, freeze a bundle; return TrainResult."""
    import torch

    from feature_gen.data.sequences import cold_item_split, leave_one_out, load_interaction_data
    from feature_gen.model.losses import check_run_objective
    from trainer.loop import train
    from trainer.progress import TrainingProgress

    t = cfg.train
    torch.manual_seed(cfg.seed)
    data = load_interaction_data(cfg.data, cfg.item_text)
    # refuse what the trainer cannot honour before any model is loaded (the loop checks again)
    check_run_objective(cfg, data.num_items)
    cold = None
    if cfg.data.split == "cold_items":
        split, cold = cold_item_split(data, cfg.data.cold_item_fraction, cfg.seed)
    else:
        split = leave_one_out(data)
    rec, tokenizer, bases = build_recommender(cfg, data)
    max_len = t.stage1_max_seq_len if (t.model == "hllm" and t.stage == 1) else cfg.data.max_seq_len
    progress = TrainingProgress(f"train {t.model} stage {t.stage}")
    try:
        result = train(rec, split, data.num_items, cfg, t.output_dir, max_seq_len=max_len, resume=resume,
                       never_sample=cold, on_step=progress)
    finally:
        progress.close()
    if result.state.best_epoch == -1:
        log.warning("train.max_steps=%s stopped the run before any validation (best_epoch -1): the weights kept "
                    "are the last ones, not selected on validation; let an epoch finish to select", t.max_steps)
    is_rank0 = int(__import__("os").environ.get("RANK", "0")) == 0
    if t.model == "hllm" and t.freeze_bundle and not (t.text_plus_id or t.id_only or t.user_model != "llm"
                                                       or t.item_dim is not None):
        from feature_gen.model.bundle import save_bundle
        from trainer.deepspeed_setup import is_sharded, whole_state_dict

        hllm = rec.hllm
        if is_sharded(rec):
            # ZeRO-3 leaves each rank a shard: gather the selected weights (all ranks) into a plain copy
            state = whole_state_dict(rec.hllm)
            if is_rank0:
                hllm = build_recommender(cfg, data)[0].hllm
                hllm.load_state_dict(state)
        if is_rank0:
            result.bundle = save_bundle(
                hllm, tokenizer, cfg, Path(t.output_dir) / "bundles", data_fingerprint=data.fingerprint,
                metrics={"stage": t.stage, "valid": result.valid, "test": result.test, "best_epoch": result.state.best_epoch},
                base_models=bases,
                data_sizes={"users": data.num_users, "items": data.num_items, "interactions": sum(map(len, data.sequences))},
            )
    if is_rank0:
        print(json.dumps({"run_dir": str(result.run_dir), "best_epoch": result.state.best_epoch,
                          "valid": result.valid, "test": result.test,
                          "bundle": str(result.bundle) if result.bundle else None,
                          "throughput": result.throughput}, indent=2))
    return result


def parse_args(argv=None):
    import deepspeed

    from feature_gen.logs import LEVELS

    parser = argparse.ArgumentParser(prog="trainer/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS,
                        help="the trainer's progress, catalogue caching and item-norm lines are INFO")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's
    deepspeed.add_config_arguments(parser)  # --deepspeed, --deepspeed_config (and the deprecated --deepscale*)
    return parser.parse_args(argv)


def config_from_args(args) -> HLLMConfig:
    """The run's config: the YAML, its --set overrides, and --deepspeed_config as train.deepspeed_config."""
    cfg = load_config(args.config, dict(parse_override(o) for o in args.overrides))
    given = args.deepspeed_config or args.deepscale_config
    if given:
        mine = cfg.train.deepspeed_config
        if mine and Path(mine).resolve() != Path(given).resolve():
            raise ConfigError(f"--deepspeed_config {given} but train.deepspeed_config is {mine}; give one of them")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"deepspeed_config": given})})
    return cfg


def main(argv=None) -> int:
    from feature_gen.logs import setup_logging

    args = parse_args(argv)
    # as `hllm train` does: without it `python -m trainer.train` (and deepspeed's launcher) printed no progress
    setup_logging(args.log_level)
    try:
        cfg = config_from_args(args)
        if cfg.loss.objective == "discriminative":  # the same loop on labelled requests, selected on GAUC
            from trainer.discriminative import train_discriminative

            train_discriminative(cfg, resume=not args.no_resume)
        else:
            run_training(cfg, resume=not args.no_resume)
    except ConfigError as exc:
        print(f"train: ConfigError: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
