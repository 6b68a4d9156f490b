"""`hllm`: the one front door. Subcommands import their modules lazily so `hllm --help` stays fast.

Exit codes: every project error becomes one line on stderr (`hllm COMMAND: ErrorType: message`, the
message naming the field, file, row, view or servers) and the code of its kind, so a supervisor can
tell "fix what you gave the command" (2: restarting will not help) from "a service is down" (3, 4:
restart later; a refresh consumer replays from its last commit):

    0  done
    1  an unexpected error: a bug (the traceback is printed)
    2  what the command was given: config (ConfigError, FeatureConfigError), input data (DataError,
       TrainingSetError), model bundle (BundleError: missing, corrupt or tampered; ParityError) -- the
       same code the Spark jobs use for their input
    3  broker: BrokerUnreachable, BrokerError, any Kafka client error (unreachable, refused, no topic)
    4  feature store: FeatureStoreError, OfflineStoreError, OnlineStoreError (unreachable, locked)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=3e-4 (repeatable)",
    )


def _load(args):
    """The config from --config (or the schema's defaults) with every --set applied."""
    from feature_gen.config import config_from_dict, load_config, parse_override, set_dotted

    overrides = dict(parse_override(o) for o in args.overrides)
    if args.config is not None:
        return load_config(args.config, overrides)
    raw: dict = {}
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, "<defaults>")


def cmd_check_config(args) -> int:
    """Schema, then the machine: every problem at once, one line each (exit 2 when any)."""
    from feature_gen.config import ConfigError
    from hllm.config_check import problems

    try:
        cfg = _load(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"hllm check-config: {line}", file=sys.stderr)
        return 2
    found = problems(cfg)
    for line in found:
        print(f"hllm check-config: {args.config}: {line}", file=sys.stderr)
    if found:
        print(f"hllm check-config: {len(found)} problem(s) in {args.config}", file=sys.stderr)
        return 2
    import yaml

    print(yaml.safe_dump(cfg.model_dump(), sort_keys=False).rstrip())
    print(f"ok: {args.config} is valid; every path it reads exists and every model folder loads", file=sys.stderr)
    return 0


def cmd_data_summary(args) -> int:
    from feature_gen.data.sequences import load_interaction_data

    cfg = _load(args)
    data = load_interaction_data(cfg.data, cfg.item_text, allow_empty=True)  # zeros are a finding here
    lengths = [len(s) for s in data.sequences]
    print(f"source               {cfg.data.source}")
    print(f"users                {data.num_users}")
    print(f"items                {data.num_items}")
    print(f"interactions         {sum(lengths)}")
    print(f"rejected items       {len(data.rejects)}  { {k: int(v) for k, v in data.rejects.rows['reason'].value_counts().items()} if len(data.rejects) else ''}")
    print(f"dropped interactions {data.dropped_interactions}")
    # an empty result (every user too short, every item rejected) is a summary of zeros, not a crash
    shortest, median, longest = (min(lengths), sorted(lengths)[len(lengths) // 2], max(lengths)) if lengths else (0, 0, 0)
    print(f"sequence length      min {shortest}  median {median}  max {longest}")
    print(f"fingerprint          {data.fingerprint}")
    return 0


def cmd_evaluate(args) -> int:
    from hllm.evaluate_cli import run_evaluate

    return run_evaluate(_load(args), scorer=args.scorer, split=args.split, seed=args.seed, as_json=args.json,
                        output=args.output)


def cmd_train(args) -> int:
    from trainer.train import run_training

    cfg = _load(args)
    if cfg.loss.objective == "discriminative":  # the same loop on labelled requests: trainer/discriminative.py
        from trainer.discriminative import train_discriminative

        train_discriminative(cfg, resume=not args.no_resume)
        return 0
    run_training(cfg, resume=not args.no_resume)
    return 0


def cmd_quality(args) -> int:
    from trainer.quality import run_quality

    from feature_gen.config import parse_override

    # --config / --set apply on top of every run's own config (e.g. --set train.batch_size=64): the
    # file's fields as dotted overrides, validated on each selected run's config before anything runs
    overrides: dict = {}
    if args.config:
        from feature_gen.config import ConfigError, dotted_fields, read_data_file

        # the loader every config goes through (duplicate keys, encodings and YAML errors named); sections
        # only: a mapping value (data.columns) stays whole
        overrides = dotted_fields(read_data_file(args.config, ConfigError, f"{args.config}: config file not found") or {},
                                  depth=1)
    overrides.update(dict(parse_override(o) for o in args.overrides))
    try:
        return run_quality(args.suite, seeds=args.seeds, output=args.output, datasets=args.datasets, runs=args.runs,
                           report_only=args.report_only, overrides=overrides, fractions=args.fractions)
    except ValueError as exc:  # a bad --runs name or fraction: one line, before anything runs
        if not str(exc).startswith(("--runs", "--fractions", "--output")):
            raise
        print(f"quality: {exc}", file=sys.stderr)
        return 2


def cmd_encode(args) -> int:
    """Embed a file of items (or events -> users) with a bundle through the public API (feature_gen.api)."""
    import pandas as pd

    from feature_gen.api import Encoder
    from feature_gen.config import ConfigError
    from feature_gen.data.contract import check_item_columns
    from feature_gen.data.formats import read_mapped

    cfg = _load(args)
    _check_output_file("--output", args.output)  # before any work: a bad path must not cost the embedding
    if args.kind == "users" and not args.items:
        raise ConfigError("--items: encode users needs the item vectors (item_id, embedding) or a catalogue to embed first")
    if args.runtime == "torch":
        from feature_gen.inference.encoders import torch_device

        try:
            torch_device(args.device)
        except (RuntimeError, ValueError) as exc:  # torch's own words for a malformed name
            raise ConfigError(f"--device: {exc}") from None
    enc = Encoder.from_bundle(args.bundle, runtime=args.runtime, device=args.device, batch_size=args.batch_size)
    # the item text is the bundle's (what its Item LLM was trained on): an item_text the caller set
    # differently would be ignored, so it is refused (a training config with the same one passes)
    theirs, mine = enc.encoders.text_cfg.model_dump(), cfg.item_text.model_dump()
    default = type(cfg.item_text)().model_dump()
    differs = [k for k in mine if mine[k] != theirs.get(k) and mine[k] != default[k]]
    if differs:
        raise ConfigError(f"item_text.{differs[0]}: hllm encode builds item text as bundle {enc.version} was trained "
                          f"({theirs.get(differs[0])!r}, not {mine[differs[0]]!r}); drop it (a new text needs a new bundle)")

    def catalogue(path):  # an item file under the contract: an item_id column (no row numbers as ids)
        frame = read_mapped(path, cfg.data)
        if "embedding" not in frame.columns:
            check_item_columns(frame.columns, str(path), enc.encoders.text_cfg)
        return frame

    if args.kind == "items":
        got = enc.encode_items(catalogue(args.input), errors="skip")
        out = pd.DataFrame({"item_id": got.item_ids, "embedding": list(got.vectors), "bundle_version": enc.version})
    else:
        frame = read_mapped(args.input, cfg.data)
        items = catalogue(args.items)
        if "embedding" not in items.columns:  # a catalogue: embed it first
            items = enc.encode_items(items, errors="skip")
        got = enc.encode_users(frame, items=items, errors="skip", timestamp_unit=cfg.data.timestamp_unit)
        out = pd.DataFrame({"user_id": got.user_ids, "embedding": list(got.vectors), "seq_len": got.seq_len,
                            "last_event_ts": got.last_event_ts, "bundle_version": enc.version})
    out.to_parquet(args.output, index=False)
    reasons = {str(k): int(v) for k, v in got.rejects["reason"].value_counts().items()} if len(got.rejects) else {}
    print(f"{len(out)} {args.kind} embedded ({enc.dim} dims, {enc.version}) -> {args.output}; rejected {len(got.rejects)} {reasons}")
    return 0


def _check_output_file(flag: str, path: str) -> None:
    """An output file's folder exists and the path is not a folder: ConfigError naming the flag."""
    from feature_gen.config import ConfigError

    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file path")
    if not target.absolute().parent.is_dir():
        raise ConfigError(f"{flag}: the folder {target.absolute().parent} does not exist")


def cmd_demo(args) -> int:
    from hllm.demo_pipeline import run_demo_pipeline

    return run_demo_pipeline(output_dir=args.output_dir, config_path=args.config, restart=args.restart)


def cmd_export(args) -> int:
    from export.cli import run_export

    # the flags are config overrides, so a bad value fails like any other field
    args.overrides += [f"export.{k}={v}" for k, v in (("precision", args.precision), ("opset", args.opset)) if v]
    return run_export(_load(args), bundle=args.bundle)


def cmd_materialize(args) -> int:
    from hllm.materialize_cli import run_materialize

    return run_materialize(_load(args), args.version, args.bundle, args.views.split(",") if args.views else None,
                           engine=args.engine, master=args.master)


def cmd_feature_repo(args) -> int:
    from hllm.materialize_cli import run_feature_repo

    return run_feature_repo(_load(args), args.version)


def cmd_validate_features(args) -> int:
    from ranker_integration.feature_config import run_validate_features

    return run_validate_features(args.features, args.bundle, _load(args).store, min_coverage=args.min_coverage,
                                 catalogue_size=args.catalogue_size, active_users=args.active_users)


def cmd_refresh(args) -> int:
    if args.bundle:
        args.overrides.append(f"stream.bundle_path={args.bundle}")
    cfg = _load(args)
    if args.items:
        from feature_gen.streaming.item_refresh import run_item_refresh

        return run_item_refresh(cfg)
    from feature_gen.streaming.refresh import run_refresh

    return run_refresh(cfg)


def cmd_produce_events(args) -> int:
    from feature_gen.streaming.produce import run_produce_events

    report = run_produce_events(_load(args), args.input, kind=args.kind, rate=args.rate, limit=args.limit,
                                event_type=args.event_type, topic=args.topic)
    for line in report.skipped[:20]:
        print(f"skipped: {line}", file=sys.stderr)
    if len(report.skipped) > 20:
        print(f"skipped: ... and {len(report.skipped) - 20} more rows", file=sys.stderr)
    print(f"sent {report.sent} {args.kind} events in {report.seconds:.2f} s ({report.events_per_s:.0f}/s)"
          + (f"; skipped {len(report.skipped)} rows" if report.skipped else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from feature_gen.logs import LEVELS  # light: stdlib only

    parser = argparse.ArgumentParser(
        prog="hllm",
        description="HLLM item and user-interest embeddings as ranking features.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS,
                        help="the project's log level (third-party libraries stay at WARNING unless DEBUG)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only (= --log-level WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a config file and print it with defaults filled in")
    _config_args(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("data-summary", help="load the configured data set and print its shape and rejects")
    _config_args(p, required=False)
    p.set_defaults(func=cmd_data_summary)

    p = sub.add_parser(
        "evaluate",
        help="full-ranking leave-one-out evaluation (Recall/NDCG@K) of a scorer",
    )
    _config_args(p, required=False)
    p.add_argument("--scorer", choices=["random", "popularity", "content"], default="random",
                   help="random: chance-level sanity check; popularity; content: frozen Item LLM embeddings")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object instead of a table")
    p.add_argument("--output", default=None, help="also write the result as JSON to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train HLLM (stage 1 or 2) or the SASRec baseline with DeepSpeed, then freeze a bundle")
    _config_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quality", help="the quality table: SASRec vs HLLM (and ablations) over seeds, on real data")
    p.add_argument("--suite", choices=["warm", "ablations", "cold", "efficiency", "all"], default="warm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=["ml-100k"], choices=["ml-100k", "ml-latest-small"])
    p.add_argument("--output", default="runs/quality")
    p.add_argument("--runs", nargs="+", default=None, help="only these models of the suite (e.g. sasrec): "
                   "lets two processes share a suite; rerun without it for the full table")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished runs")
    p.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                   help="efficiency suite: the fractions of the training users, each in (0, 1) "
                        "(default 0.25 0.5); e.g. --fractions 0.5 runs only that point of the curve")
    _config_args(p, required=False)
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("encode", help="embed items (or users from events) of a file with a bundle -> Parquet (the Python API)")
    p.add_argument("kind", choices=["items", "users"])
    p.add_argument("--bundle", required=True, help="bundle folder (<root>/<version>/)")
    p.add_argument("--input", required=True, help="items, or events (user_id, item_id, timestamp): .parquet/.csv/.tsv/.jsonl; "
                   "data.columns / data.timestamp_format of --config apply")
    p.add_argument("--items", default=None, help="users: item vectors (item_id, embedding) or a catalogue to embed first")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (torch) or auto / cpu / cuda (onnx)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    _config_args(p, required=False)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults (what `make demo` runs)")
    p.add_argument("--output-dir", default="outputs/demo")
    p.add_argument("--config", default=None, help="defaults to configs/demo_e2e.yaml")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming after the last finished step")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a bundle's item and user encoders to ONNX (parity-checked) into the bundle")
    p.add_argument("--bundle", required=True, help="bundle folder (<root>/<version>/)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="default: export.precision of the config (fp32)")
    p.add_argument("--opset", type=int, default=None, help="default: export.opset of the config (17)")
    _config_args(p, required=False)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("materialize", help="push a bundle version's offline features (Spark job output) into the online store")
    _config_args(p, required=False)
    p.add_argument("--version", default=None, help="bundle version to publish, e.g. hllm-1a2b3c4d5e6f")
    p.add_argument("--bundle", default=None, help="... or the bundle folder whose version to publish")
    p.add_argument("--views", default=None, help="comma-separated subset of item_embedding,user_embedding,user_recent_items")
    p.add_argument("--engine", choices=["driver", "spark"], default="driver",
                   help="driver: this process reads the version and writes it (small tables); spark: Spark executors "
                        "write their partitions (any size; --master, or spark-submit's)")
    p.add_argument("--master", default=None, help="Spark master for --engine spark (default local[*])")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("feature-repo", help="create or update the Feast feature repo (store section) and apply it, "
                                            "under a lock; --version makes that bundle version the one served")
    _config_args(p, required=False)
    p.add_argument("--version", default=None, help="bundle version the serving views' batch sources read (default: keep)")
    p.set_defaults(func=cmd_feature_repo)

    p = sub.add_parser("validate-features", help="check the ranker's feature config against the feature store and a bundle")
    p.add_argument("--features", default=None, help="feature config YAML (default: the shipped ranker_integration/feature_config.yaml)")
    p.add_argument("--bundle", required=True, help="bundle folder (<root>/<version>/) the features must match")
    p.add_argument("--min-coverage", type=float, default=0.99,
                   help="least fraction of the version's offline rows found online with this version, and of "
                        "--catalogue-size / --active-users found offline (default 0.99)")
    p.add_argument("--catalogue-size", type=int, default=None, help="items the catalogue holds (offline item rows are checked against it)")
    p.add_argument("--active-users", type=int, default=None, help="users to be served (offline user rows are checked against it)")
    _config_args(p, required=False)
    p.set_defaults(func=cmd_validate_features)

    for name, items, text in (
        ("refresh", False, "consume user events: keep recent items and user embeddings fresh in the online store"),
        ("refresh-items", True, "consume item events: embed new or changed items into the online store"),
    ):
        p = sub.add_parser(name, help=text + " (until SIGTERM)")
        p.add_argument("--bundle", default=None, help="bundle folder (default: stream.bundle_path of the config)")
        _config_args(p)
        p.set_defaults(func=cmd_refresh, items=items)

    p = sub.add_parser("produce-events", help="replay a Parquet/CSV event log into Kafka (replays, demos, benchmarks)")
    p.add_argument("--input", required=True, help="user log: user_id, item_id, timestamp[, event_type]; item log: item_id + text fields")
    p.add_argument("--kind", choices=["user", "item"], default="user")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    p.add_argument("--limit", type=int, default=None, help="send at most this many events")
    p.add_argument("--event-type", default="click", help="event_type when the log has no such column")
    p.add_argument("--topic", default=None, help="default: stream.user_events_topic / stream.item_events_topic")
    _config_args(p)
    p.set_defaults(func=cmd_produce_events)
    return parser


# Error class (module.name, matched along the exception's MRO) -> exit code; by name, so classifying an
# error never imports Feast, Kafka or torch.
EXIT_CODES = {
    "feature_gen.config.ConfigError": 2,
    "feature_gen.data.contract.DataError": 2,
    "ranker_integration.feature_config.FeatureConfigError": 2,
    "ranker_integration.training_set.TrainingSetError": 2,
    "feature_gen.model.bundle.BundleError": 2,
    "export.bundle_export.ParityError": 2,
    "feature_gen.store.feature_store.FeatureStoreError": 4,
    "feature_gen.store.feature_store.OnlineStoreError": 4,
    "feature_gen.store.offline_store.OfflineStoreError": 4,
    "feature_gen.streaming.clients.BrokerUnreachable": 3,
    "feature_gen.streaming.clients.BrokerError": 3,
    "hllm.local_broker.BrokerError": 3,
    "kafka.errors.KafkaError": 3,
}


def exit_code_of(exc: BaseException) -> int | None:
    """The documented exit code of a project error (see the module docstring); None for anything else."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hllm-features")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from feature_gen.logs import setup_logging

    setup_logging("WARNING" if args.quiet else args.log_level)
    try:
        return int(args.func(args) or 0)
    except UnicodeDecodeError as exc:  # bytes a reader could not decode: one line, not a traceback
        print(f"hllm {args.command}: {exc.encoding} cannot decode byte(s) {exc.object[exc.start:exc.end]!r} at "
              f"offset {exc.start} ({exc.reason}); set data.encoding to the file's encoding", file=sys.stderr)
        return 2
    except Exception as exc:
        code = exit_code_of(exc)
        if code is None:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the error's own formatting
        print(f"hllm {args.command}: {type(exc).__name__}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
