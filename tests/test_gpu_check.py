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
