"""`hllm demo` resumes after its last finished step (same output folder and config)."""

from __future__ import annotations

from hllm.demo_pipeline import STATE, run_demo_pipeline


def test_demo_resumes_after_its_last_finished_step_and_restart_starts_over(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo_pipeline(str(out), stop_after="data") == 0
    assert (out / STATE).is_file() and "== data:" in capsys.readouterr().out
    history = out / "data" / "history.parquet"
    written = history.stat().st_mtime_ns
    assert run_demo_pipeline(str(out), stop_after="data") == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "after step 'data'" in printed and "== data:" not in printed
    assert history.stat().st_mtime_ns == written  # not redone
    assert run_demo_pipeline(str(out), stop_after="data", restart=True) == 0
    assert "== data:" in capsys.readouterr().out
