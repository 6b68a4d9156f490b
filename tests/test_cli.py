import re
import subprocess
import sys
from pathlib import Path

import pytest

from hllm.cli import main

HLLM = str(Path(sys.executable).parent / "hllm")


def test_help_lists_the_commands_and_is_fast_to_import():
    out = subprocess.run([HLLM, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("check-config", "data-summary", "evaluate", "demo"):
        assert command in out
    # --help must not import torch (lazy subcommands)
    probe = "import sys, hllm.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_random_scorer_on_ml100k_is_near_chance(capsys):
    assert main(["evaluate", "--scorer", "random", "--set", "data.source=ml-100k"]) == 0
    out = capsys.readouterr().out
    assert "943 users x 1682 items" in out
    recall10 = float(re.search(r"recall\s+([\d.]+)", out).group(1))
    chance10 = float(re.search(r"chance recall: @10 ([\d.]+)", out).group(1))
    assert abs(chance10 - 10 / 1682) < 0.002  # ~10 / (1682 - seen)
    # 943 users: one standard deviation of a binomial at p~0.006 is ~0.0025
    assert abs(recall10 - chance10) < 0.01


def test_popularity_beats_random_on_ml100k(capsys):
    assert main(["evaluate", "--scorer", "popularity"]) == 0
    out = capsys.readouterr().out
    ndcg10 = float(re.search(r"ndcg\s+([\d.]+)", out).group(1))
    recall10 = float(re.search(r"recall\s+([\d.]+)", out).group(1))
    chance10 = float(re.search(r"chance recall: @10 ([\d.]+)", out).group(1))
    # deterministic: BENCHMARKS.md "Sanity" (0.0838 / 0.0433, what issue 17's reviewers reproduced), ~13 x chance
    assert recall10 == pytest.approx(0.0838, abs=5e-4) and ndcg10 == pytest.approx(0.0433, abs=5e-4)
    assert recall10 > 10 * chance10


def test_bad_config_exits_2_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("loss:\n  objective: contrastive\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "loss.objective: expected one of 'generative' or 'discriminative'; got 'contrastive'" in err


def test_data_summary_on_files(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,title,tags\n1,Heat,Crime\n2,Up,Animation\n3,,\n")
    (tmp_path / "inter.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u1,{i % 2 + 1},{1_700_000_100 + i}\n" for i in range(4)) + "u1,3,1700000200\n"
    )
    rc = main(["data-summary", "--set", "data.source=files", "--set", f"data.items_path={tmp_path / 'items.csv'}",
               "--set", f"data.interactions_path={tmp_path / 'inter.csv'}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"items\s+2\b", out) and re.search(r"rejected items\s+1 .*no_text", out)
    assert re.search(r"dropped interactions 1\b", out)


def test_check_config_lists_every_missing_path_and_unloadable_model_at_once(tmp_path, capsys):
    broken_model = tmp_path / "model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data:\n  source: files\n  items_path: missing/items.parquet\n  interactions_path: events.csv\n"
        "train:\n  deepspeed_config: /nonexistent/zero2.json\n"
        f"item_llm:\n  source: folder\n  path: {broken_model}\n"
    )
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    # relative paths are read from the config file's folder: events.csv beside it is found
    assert f"data.items_path: {tmp_path / 'missing/items.parquet'} does not exist" in err
    assert "interactions_path" not in err
    assert "train.deepspeed_config: /nonexistent/zero2.json does not exist" in err
    assert f"item_llm.path: {broken_model} does not load as a Hugging Face model folder" in err
    assert "3 problem(s)" in err


def test_check_config_shows_every_schema_error_and_passes_a_good_config(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("loss:\n  objective: contrastive\n  num_negatives: 0\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "loss.objective" in err[0] and "loss.num_negatives" in err[1]
    good = tmp_path / "good.yaml"
    good.write_text(f"train:\n  output_dir: {tmp_path / 'runs'}\n")
    assert main(["check-config", "--config", str(good)]) == 0
    assert "ok:" in capsys.readouterr().err


@pytest.mark.parametrize("loss, stage, named, fixed", [
    # byod.yaml shipped the first one: check-config passed it and `hllm train` refused it at start
    ("num_negatives: 256", 1, "loss.num_negatives: only negatives 'sampled' uses it", "{negatives: sampled, num_negatives: 256}"),
    ("negatives: full", 1, "loss.negatives: 'full' needs every item's embedding", "{negatives: full}"),
    ("fusion: early", 2, "loss.fusion: only the discriminative objective uses it", "{objective: discriminative, fusion: early}"),
])
def test_check_config_refuses_what_the_trainer_would(tmp_path, capsys, loss, stage, named, fixed):
    """check-config applies the trainer's objective rules (feature_gen.model.losses.check_run_objective), so
    a config it passes does not fail at `hllm train`'s start; the same config at stage 2 (or sampled) passes."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"loss: {{{loss}}}\ntrain: {{stage: {stage}, output_dir: {tmp_path / 'runs'}}}\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert named in capsys.readouterr().err
    cfg.write_text(f"loss: {fixed}\ntrain: {{stage: 2, output_dir: {tmp_path / 'runs'}}}\n")
    assert main(["check-config", "--config", str(cfg)]) == 0, capsys.readouterr().err


def test_check_config_merges_the_deepspeed_json_as_the_trainer_does(tmp_path, capsys):
    """A DeepSpeed JSON that contradicts the trainer (trainer.deepspeed_setup.build_deepspeed_config)
    failed only once `hllm train` had loaded data and models; check-config names each field now."""
    import json

    ds = tmp_path / "ds.json"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"train: {{lr: 0.001, deepspeed_config: {ds}, output_dir: {tmp_path / 'runs'}}}\n")
    for body, named in (({"optimizer": {"type": "AdamW", "params": {"lr": 0.01}}}, "optimizer.params.lr is 0.01 but train.lr is 0.001"),
                        ({"fp16": {"enabled": True}}, "fp16.enabled: the trainer trains in fp32 or bf16"),
                        ({"optimizer": {"type": "Lamb"}}, "optimizer.type 'Lamb': the trainer uses AdamW")):
        ds.write_text(json.dumps(body))
        assert main(["check-config", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"{ds}: {named}" in err, err
    for body, named in (([1, 2], "expected a JSON object of DeepSpeed settings; got list"),
                        ({"optimizer": None}, "optimizer must be an object"), ({"bf16": True}, "bf16 must be an object"),
                        ({"gradient_clipping": "x"}, "gradient_clipping is 'x', not a number")):
        ds.write_text(json.dumps(body))  # each was an AttributeError / ValueError traceback
        assert main(["check-config", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"{ds}: {named}" in err and "Traceback" not in err, err
    ds.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "zero_optimization": {"stage": 2}}))
    assert main(["check-config", "--config", str(cfg)]) == 0, capsys.readouterr().err
    # no JSON at all: the trainer's own precision is checked against this machine
    from trainer.deepspeed_setup import bf16_available

    cfg.write_text(f"train: {{precision: bf16, output_dir: {tmp_path / 'runs'}}}\n")
    if bf16_available():  # a GPU machine: bf16 is what it can do
        assert main(["check-config", "--config", str(cfg)]) == 0
    else:  # this project's CI and development machines
        assert main(["check-config", "--config", str(cfg)]) == 2
        assert "train.precision: bf16 asked for, but this machine has no bf16-capable GPU" in capsys.readouterr().err


def test_quality_reads_its_config_through_the_one_loader(tmp_path, capsys):
    """`hllm quality --config` read YAML on its own (duplicate keys silently last-wins)."""
    cfg = tmp_path / "q.yaml"
    cfg.write_text("train:\n  lr: 0.5\ntrain:\n  epochs: 2\n")
    assert main(["quality", "--config", str(cfg), "--report-only", "--output", str(tmp_path)]) == 2
    assert f"{cfg}: duplicate key 'train' at lines 1 and 3" in capsys.readouterr().err


def test_check_config_takes_every_data_path_the_readers_take(tmp_path, capsys):
    """A Spark output folder and .pq / .ndjson files, which load_interaction_data reads, were refused."""
    import pandas as pd

    (tmp_path / "events").mkdir()
    pd.DataFrame({"user_id": ["a"], "item_id": ["1"], "timestamp": [1_700_000_000]}).to_parquet(tmp_path / "events" / "part-0.parquet")
    pd.DataFrame({"item_id": ["1"], "title": ["Heat"]}).to_parquet(tmp_path / "items.pq")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {{source: files, items_path: {tmp_path / 'items.pq'}, interactions_path: {tmp_path / 'events'}}}\n"
                   f"train: {{output_dir: {tmp_path / 'runs'}}}\n")
    assert main(["check-config", "--config", str(cfg)]) == 0, capsys.readouterr().err


def test_version_and_quiet_logging():
    out = subprocess.run([HLLM, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and re.fullmatch(r"hllm \S+.*\n", out.stdout)
    from importlib.metadata import version

    assert version("hllm-features") in out.stdout


def test_evaluate_json_and_output_file(tmp_path, capsys):
    import json

    target = tmp_path / "res" / "eval.json"
    assert main(["evaluate", "--scorer", "popularity", "--json", "--output", str(target)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(target.read_text())
    assert printed["scorer"] == "popularity" and printed["users"] == 943 and printed["metrics"]["ndcg@10"] > 0.03


def test_quality_takes_config_and_set_and_refuses_a_typo(tmp_path, capsys):
    assert main(["quality", "--report-only", "--output", str(tmp_path), "--set", "train.lr=0.001"]) == 0
    assert main(["quality", "--report-only", "--output", str(tmp_path), "--set", "train.lrr=0.001"]) == 2
    assert "train.lrr: unknown key" in capsys.readouterr().err


def test_quality_checks_set_on_each_runs_own_config(tmp_path, capsys):
    """A check across fields holds or fails on the run's config, not on the schema's defaults (stage 1)."""
    id_only = ["quality", "--report-only", "--suite", "ablations", "--runs", "hllm-id-only-dropout-user-sasrec-size",
               "--output", str(tmp_path)]
    assert main([*id_only, "--set", "train.early_stopping_patience=10"]) == 0
    assert main([*id_only, "--set", "train.text_plus_id=true"]) == 2
    assert "train.id_only needs" in capsys.readouterr().err
