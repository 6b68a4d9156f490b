"""benchmarks/gpu_check.py: its figures need a GPU; here its code path runs on the CPU (tiny shape) and
it refuses to report anything when CUDA is asked for and absent. Also: a device that does not exist
is a clear error from the one device resolver the encoders and the Spark workers use."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import gpu_check
from feature_gen.inference.encoders import torch_device


def test_cpu_smoke_run_trains_and_embeds():
    r = gpu_check.run("cpu", "tiny", steps=2, batch_users=2, seq_len=4, item_len=8, embed_items=16, peak_tflops=1e-4)
    assert r["device"] == "cpu" and r["embedding_finite"] and math.isfinite(r["last_loss"])
    assert r["train_tokens_per_s"] > 0 and r["train_mfu"] > 0 and r["peak_source"] == "given"


def test_without_cuda_nothing_is_measured(capsys, monkeypatch):
    # the no-CUDA path on every machine: a GPU host sees it as a CPU-only one, so nothing is skipped
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert gpu_check.main([]) == 0
    assert "no CUDA device here; nothing measured" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'cuda:1' asked for, but torch sees no CUDA device"):
        torch_device("cuda:1")
    assert torch_device("auto") == torch.device("cpu")


def test_batches_parse_and_a_bad_one_names_the_flag():
    assert gpu_check._batches("4x10,16X20") == [(4, 10), (16, 20)]
    for bad in ("4", "4x0", "ax3", "4x3x2"):
        with pytest.raises(Exception, match="--batches"):
            gpu_check._batches(bad)


def test_a_cpu_smoke_result_prints_as_the_benchmarks_table():
    """main()'s JSON, as the GPU run commits it, prints through markdown() with one row per batch and the
    trainer check's verdict (the CPU run writes no file; the printer is the same)."""
    runs = [gpu_check.run("cpu", "tiny", steps=2, batch_users=u, seq_len=s, item_len=8, embed_items=16, peak_tflops=1e-4)
            for u, s in ((2, 4), (3, 5))]
    doc = {"command": "python -m benchmarks.gpu_check --device cpu", "date": "2026-12-04 00:00 UTC", "load": "0.10 0.20 0.30",
           "software": gpu_check._software(), "runs": runs,
           "trainer": {"ok": False, "stage1": {"ok": False, "rc": 1}}}
    text = gpu_check.markdown(doc)
    assert "| 2 x 4 | 80 |" in text and "| 3 x 5 | 144 |" in text  # users x (seq + 1) x item tokens
    assert "**FAILED**" in text and "| stage1 | failed (rc 1) |" in text and "| stage2 | not run |" in text
    assert "Command: `python -m benchmarks.gpu_check" in text
