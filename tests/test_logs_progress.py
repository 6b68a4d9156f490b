"""One logging setup and the progress reporter: totals and ETA, periodic lines off a terminal, quiet
third-party loggers; the trainer's progress hook and its max_steps warning on a tiny real run."""

from __future__ import annotations

import io
import logging
import re

import pytest

from feature_gen.logs import Progress, setup_logging


def test_progress_off_a_terminal_logs_at_most_one_line_per_interval_with_total_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="hllm.progress")
    with Progress(400, "train", "steps", interval=3600, tty=False) as bar:
        for _ in range(120):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # no ticker: only the closing line within the interval
    assert re.match(r"train: 120/400 steps \(30%\), [\d.e+]+ steps/s, elapsed \d+:\d\d, eta \d+:\d\d", lines[0]), lines
    caplog.clear()
    with Progress(10, "cache", "items", interval=0, tty=False) as bar:
        bar.update(4)
        bar.update(6)
    # interval 0: a line per update, and the closing one
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "cache: 4/10 items (40%)", "cache: 10/10 items (100%)", "cache: 10/10 items (100%)"]


def test_progress_on_a_terminal_draws_a_bar_with_the_total():
    stream = io.StringIO()
    with Progress(50, "spark items", "partitions", tty=True, stream=stream) as bar:
        bar.update(25)
    assert "spark items" in stream.getvalue() and "25/50" in stream.getvalue()


def test_setup_logging_keeps_third_party_at_warning_unless_debug():
    setup_logging("INFO")
    assert logging.getLogger("feast").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("kafka").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("hllm.stream").getEffectiveLevel() == logging.INFO
    setup_logging("WARNING")
    assert logging.getLogger("hllm.stream").getEffectiveLevel() == logging.WARNING
    setup_logging("DEBUG")
    assert logging.getLogger("feast").getEffectiveLevel() == logging.DEBUG
    with pytest.raises(ValueError, match="--log-level"):
        setup_logging("LOUD")
    setup_logging("INFO")


@pytest.mark.integration
def test_training_reports_progress_with_its_total_and_warns_when_max_steps_skips_selection(tmp_path, caplog, monkeypatch):
    from tests.toys import toy_config
    from trainer.train import run_training

    monkeypatch.setenv("HLLM_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO)
    cfg = toy_config(tmp_path, max_steps=3, epochs=5, freeze_bundle=False)
    result = run_training(cfg, resume=False)
    assert result.state.best_epoch == -1
    progress = [r.getMessage() for r in caplog.records if r.name == "hllm.progress"]
    assert progress and progress[0].startswith("train hllm stage 1: 1/3 steps")
    assert any(m.startswith("train hllm stage 1: 3/3 steps (100%)") for m in progress)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "hllm.train"]
    assert warned and "best_epoch -1" in warned[0] and "train.max_steps=3" in warned[0]


def test_consumer_status_line_counts_only_batches_with_events(caplog):
    from feature_gen.streaming.consumer_loop import StatusLine

    caplog.set_level(logging.INFO, logger="feature_gen.streaming.consumer_loop")
    status = StatusLine("hllm-refresh", every_s=0)
    assert status.observe(0, 0.001, lag=0) is None  # idle polls say nothing and are not batches
    status.dead_letters += 2
    status.observe(0, 0.001, lag=0)
    line = status.observe(17, 0.045, lag=12)
    assert re.fullmatch(r"hllm-refresh: 17 events in \d+ s \([\d.]+/s\), 1 batches, lag 12, dead letters 2, "
                        r"last batch 45 ms \(17 events\)", line), line
    assert caplog.records[-1].getMessage() == line
    assert status.observe(0, 0.001, lag=0) is None  # counters restart after each line


def test_catalogue_caching_reports_items_done_of_the_catalogue(tmp_path, tiny_bundle, caplog, monkeypatch):
    from tests.toys import agree_with_bundle, toy_config
    from trainer.train import build_recommender
    from feature_gen.data.sequences import load_interaction_data

    monkeypatch.setenv("HLLM_PROGRESS_SECONDS", "3600")
    caplog.set_level(logging.INFO, logger="hllm.progress")
    cfg = agree_with_bundle(toy_config(tmp_path, stage=2), tiny_bundle)
    data = load_interaction_data(cfg.data, cfg.item_text)
    build_recommender(cfg, data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("caching the catalogue")]
    assert lines and lines[-1].startswith(f"caching the catalogue: {data.num_items}/{data.num_items} items (100%)")


def test_logging_follows_stderr_after_a_redirect_is_closed(capsys):
    """setup_logging bound the handler to the stderr object of its call; when that was a test's capture
    (or any redirect) and was closed, every later record printed "--- Logging error ---" instead, which
    broke a later test's one-line error check."""
    import io
    import logging
    import sys

    from feature_gen.logs import setup_logging

    redirect = io.StringIO()
    saved, sys.stderr = sys.stderr, redirect
    try:
        setup_logging("INFO")
        logging.getLogger("feature_gen.probe").info("into the redirect")
    finally:
        sys.stderr = saved
    redirect.close()
    logging.getLogger("feature_gen.probe").warning("after the redirect closed")
    err = capsys.readouterr().err
    assert "after the redirect closed" in err and "Logging error" not in err
