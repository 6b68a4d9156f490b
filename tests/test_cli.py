import re
import subprocess
import sys
from pathlib import Path

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
    main(["evaluate", "--scorer", "popularity"])
    out = capsys.readouterr().out
    ndcg10 = float(re.search(r"ndcg\s+([\d.]+)", out).group(1))
    assert ndcg10 > 0.03  # popularity on ML-100K is a well-known, much better than chance floor


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
