"""The quality harness's bookkeeping (which stage runs where, from which bundle), with training faked:
the real training paths are covered by test_trainer.py."""

from __future__ import annotations

import json

import pytest

import trainer.quality as quality
import trainer.train


@pytest.fixture
def fake_training(monkeypatch):
    calls = []

    def fake_run_training(cfg, resume=True):
        out = cfg.train.output_dir
        calls.append({"out": out, "stage": cfg.train.stage, "init": cfg.train.init_bundle,
                      "negatives": f"{cfg.loss.negatives}/{cfg.loss.num_negatives}", "text_id": cfg.train.text_plus_id,
                      "seed": cfg.seed, "freeze": cfg.train.freeze_bundle,
                      "epochs": cfg.train.epochs, "lr": cfg.train.lr})
        from pathlib import Path

        Path(out, "bundles", f"hllm-{len(calls):04d}").mkdir(parents=True)
        Path(out, "checkpoints", "step7").mkdir(parents=True)  # what DeepSpeed leaves for resuming
        Path(out, "result.json").write_text(json.dumps({"test": {m: len(calls) / 100 for m in quality.METRICS}}))

    monkeypatch.setattr(trainer.train, "run_training", fake_run_training)
    return calls


def test_stage2_ablation_reuses_the_warm_stage1_and_runs_it_once(tmp_path, fake_training):
    quality.run_quality("ablations", seeds=[3], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-text-id", "hllm-negatives-32"])
    warm_stage1 = tmp_path / "ml-100k" / "warm" / "standard" / "hllm" / "seed3" / "stage1"
    outs = [c["out"] for c in fake_training]
    assert outs.count(str(warm_stage1)) == 1  # run once, then picked up by the second ablation
    stage2 = [c for c in fake_training if c["stage"] == 2]
    assert len(stage2) == 2
    assert all(c["init"].startswith(str(warm_stage1 / "bundles")) for c in stage2)
    assert {(c["text_id"], c["negatives"]) for c in stage2} == {(True, "auto/512"), (False, "sampled/32")}
    assert all(c["seed"] == 3 for c in fake_training)
    assert [c["freeze"] for c in fake_training] == [True, False, False]


def test_an_ablation_can_reuse_another_ablations_stage1(tmp_path, fake_training):
    quality.run_quality("ablations", seeds=[1], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-stage1-12-epochs", "hllm-stage1-12-epochs-stage2-lr1e-4"])
    stage1 = tmp_path / "ml-100k" / "ablations" / "standard" / "hllm-stage1-12-epochs" / "seed1" / "stage1"
    assert [(c["stage"], c["epochs"]) for c in fake_training] == [(1, 12), (2, 6), (2, 6)]  # one stage 1
    assert fake_training[0]["out"] == str(stage1)
    assert all(c["init"].startswith(str(stage1 / "bundles")) for c in fake_training[1:])
    assert sorted(c["lr"] for c in fake_training[1:]) == [1e-4, 3e-4]


def test_runs_filter_lets_processes_share_a_suite(tmp_path, fake_training):
    quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], runs=["sasrec"])
    assert [c["stage"] for c in fake_training] == [1] and "sasrec" in fake_training[0]["out"]
    quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"])  # picks sasrec up
    assert len(fake_training) == 7  # + HLLM stage 1 and 2 and the four one-stage frozen runs, sasrec not again
    table = (tmp_path / "quality-ml-100k-warm.md").read_text()
    assert "| sasrec | 0 |" in table and "| hllm | 0 |" in table  # the seed column names the seeds


def test_report_only_tabulates_finished_runs_and_trains_nothing(tmp_path, fake_training):
    quality.run_quality("warm", seeds=[0, 1], output=str(tmp_path), datasets=["ml-100k"], runs=["sasrec"])
    assert len(fake_training) == 2
    quality.run_quality("warm", seeds=[0, 1, 2], output=str(tmp_path), datasets=["ml-100k"], report_only=True)
    assert len(fake_training) == 2  # nothing trained
    table = (tmp_path / "quality-ml-100k-warm-report.md").read_text()
    assert "| sasrec | 0, 1 | 0.0150 ± 0.0071 |" in table  # fake recall@10 = 0.01, 0.02
    assert "hllm" not in table.split("\n", 2)[2]


def test_report_lists_stage1_of_two_stage_runs(tmp_path, fake_training):
    quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], runs=["hllm"])
    quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], report_only=True)
    table = (tmp_path / "quality-ml-100k-warm-report.md").read_text()
    assert "| hllm | 0 | 0.0200 ± 0.0000 |" in table  # stage 2 was the second fake run
    assert "| hllm (stage 1 only) | 0 | 0.0100 ± 0.0000 |" in table


def test_an_unknown_run_name_is_refused_before_anything_runs(tmp_path, fake_training):
    with pytest.raises(ValueError, match=r"--runs: hllm-typo not in suite 'warm' \(its runs: hllm, hllm-frozen-adapter-id, hllm-frozen-adapter-id-dropout, hllm-frozen-adapter-id-dropout-stride10, hllm-frozen-adapter-long, sasrec\)"):
        quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], runs=["hllm-typo"])
    assert fake_training == []


def test_finished_stages_keep_their_bundle_and_result_but_not_their_checkpoints(tmp_path, fake_training):
    quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], runs=["hllm"])
    seed0 = tmp_path / "ml-100k" / "warm" / "standard" / "hllm" / "seed0"
    for stage in ("stage1", "stage2"):
        assert (seed0 / stage / "result.json").is_file() and any((seed0 / stage / "bundles").iterdir())
        assert not (seed0 / stage / "checkpoints").exists()


def test_tables_of_different_datasets_do_not_overwrite_each_other(tmp_path, fake_training):
    for dataset in ("ml-100k", "ml-latest-small"):
        quality.run_quality("warm", seeds=[0], output=str(tmp_path), datasets=[dataset], runs=["sasrec"])
    assert "### ml-100k, warm" in (tmp_path / "quality-ml-100k-warm-sasrec.md").read_text()
    assert "### ml-latest-small, warm" in (tmp_path / "quality-ml-latest-small-warm-sasrec.md").read_text()


def test_every_stage_of_every_run_is_a_valid_config():
    """A misspelt override or a value outside the schema fails here, not an hour into a suite."""
    from feature_gen.config import load_config

    for name, stages in quality.RUNS.items():
        for config, overrides in stages:
            if config == "reuse":
                assert overrides in quality.RUNS, f"{name} reuses unknown run {overrides}"
                continue
            for suite_overrides in quality.SUITE_OVERRIDES.values():
                for extra in suite_overrides:
                    load_config(quality.REPO / config, {**overrides, **extra})
    assert quality.RUNS["hllm-stage1-24-epochs-random-windows"][0][1]["train.windows"] == "random"


def test_efficiency_keeps_a_converged_runs_steps_and_patience_on_a_fraction(tmp_path, fake_training, monkeypatch):
    seen = []
    real = quality.run_one
    monkeypatch.setattr(quality, "run_one", lambda stages, overrides, *a: seen.append(overrides) or real(stages, overrides, *a))
    quality.run_quality("efficiency", seeds=[0], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-frozen-adapter-id-dropout", "hllm-frozen-adapter"])
    by_run = {(c["out"].split("/")[-3], c["out"].split("/")[-2]): c["epochs"] for c in fake_training}
    # 20 epochs at 100 % -> 80 at 25 %, 40 at 50 %; the demo's model keeps its 6
    assert by_run == {("train_user_fraction=0.25", "hllm-frozen-adapter-id-dropout"): 80,
                      ("train_user_fraction=0.5", "hllm-frozen-adapter-id-dropout"): 40,
                      ("train_user_fraction=0.25", "hllm-frozen-adapter"): 6,
                      ("train_user_fraction=0.5", "hllm-frozen-adapter"): 6}
    patience = sorted(o.get("train.early_stopping_patience") or 0 for o in seen)
    assert patience == [0, 0, 6, 12]  # 3 evaluations at 100 %
    # runs outside STEPS_KEPT_ON_FRACTIONS keep their config (SASRec's patience comes from --set)
    assert quality.fraction_schedule("sasrec", {"train.train_user_fraction": 0.25}) == {}


def test_fractions_choose_the_efficiency_curves_points(tmp_path, fake_training):
    quality.run_quality("efficiency", seeds=[0], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-frozen-adapter-id-dropout"], fractions=[0.5])
    assert [(c["out"].split("/")[-3], c["epochs"]) for c in fake_training] == [("train_user_fraction=0.5", 40)]
    quality.run_quality("efficiency", seeds=[0], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-frozen-adapter-id-dropout"], fractions=[0.1])
    assert (fake_training[-1]["out"].split("/")[-3], fake_training[-1]["epochs"]) == ("train_user_fraction=0.1", 200)
    with pytest.raises(ValueError, match="--fractions: 1.0 not in"):
        quality.run_quality("efficiency", seeds=[0], output=str(tmp_path), datasets=["ml-100k"], fractions=[1.0])
    assert len(fake_training) == 2  # nothing ran for the bad fraction


def test_a_random_user_llm_is_initialised_from_the_runs_seed(tmp_path, fake_training, monkeypatch):
    seen = []
    real = quality.run_one
    monkeypatch.setattr(quality, "run_one", lambda stages, overrides, *a: seen.append(overrides) or real(stages, overrides, *a))
    quality.run_quality("ablations", seeds=[1, 2], output=str(tmp_path), datasets=["ml-100k"],
                        runs=["hllm-frozen-adapter-id-dropout-user-sasrec-size", "hllm-frozen-adapter-id-dropout-user-1-layer"])
    assert [o.get("user_llm.tiny.seed") for o in seen] == [None, 1, None, 2]  # the pretrained User LLM sets none


def test_the_readme_names_every_run_of_the_small_suites_and_counts_the_ablations():
    """README's "Quality suite" paragraph is what users read before a multi-hour `hllm quality`: it went
    stale once (a warm run and three efficiency runs missing, the ablations counted as 10)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = text[text.index("- **Quality suite**"):text.index("`trainer/quality.py` `RUNS` says")]
    for suite in ("warm", "cold", "efficiency"):
        for run in quality.SUITES[suite]:
            assert f"`{run}`" in paragraph, (suite, run)
    counted = re.search(r"`ablations` \((\d+) runs", paragraph)
    assert counted and int(counted.group(1)) == len(quality.SUITES["ablations"])
    # every run a suite names exists
    assert all(run in quality.RUNS for runs in quality.SUITES.values() for run in runs)


def test_report_only_on_a_folder_that_holds_no_runs_is_one_line(tmp_path, capsys, fake_training):
    """`hllm quality --report-only` in a fresh checkout was a FileNotFoundError traceback."""
    from hllm.cli import main

    assert main(["quality", "--report-only", "--output", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "--output:" in err and "is not a folder of quality runs" in err and err.count("\n") == 1
    assert fake_training == [] and not (tmp_path / "nothing-here").exists()
