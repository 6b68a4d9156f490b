"""BENCHMARKS.md's tables of issue 23 are printed from benchmarks/results/*.json: every committed results
file must still print through its module's markdown() (a renamed field fails here, not in a review)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.harness import RUNNABLE_COMMAND
from benchmarks.sections import RESULTS_DIR, section

RESULT_FILES = sorted(p.stem for p in Path(RESULTS_DIR).glob("*.json"))


@pytest.mark.parametrize("name", RESULT_FILES)
def test_results_print_as_a_table_with_load_and_command(name):
    text = section(name)
    assert "\n| " in "\n" + text and "|---|" in text  # a markdown table (a heading or note may come first)
    assert "load av" in text and re.search("Command: `" + RUNNABLE_COMMAND.pattern, text), text


def test_an_unknown_results_name_is_one_error_naming_it(capsys):
    from benchmarks.sections import main

    with pytest.raises(SystemExit) as info:
        main(["valid_test_gap", "no_such_bench", "nor_this"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no benchmarks/results/no_such_bench.json, benchmarks/results/nor_this.json" in err
    assert "valid_test_gap" in err  # the known names
