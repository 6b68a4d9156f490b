"""ONNX graphs of the click heads (the discriminative objective) and their parity checks.

    late_fusion_head.onnx     user_embedding [batch, D], candidate_embeddings [batch, cand, D]
                              -> click_logit [batch, cand]
    early_fusion_scorer.onnx  item_embeddings [batch, seq, D], attention_mask [batch, seq] int64,
                              candidate_embeddings [batch, cand, D] (+ timestamps [batch, seq] int64,
                              candidate_timestamp [batch] int64 when the User LLM uses time gaps)
                              -> click_logit [batch, cand]

Late fusion is the serving path the paper ran in production: the user embedding comes from the user
encoder (or the online store) once per request and the head scores every candidate. Early fusion
carries the whole User LLM, one pass per (user, candidate). Both trace the same modules as PyTorch
(LateFusionHead, EarlyFusionScorer), so the candidate's slot and time gap are not re-implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.graphs import _trace
from export.parity import ParityCase, random_timestamps, rel_error
from feature_gen.model.losses import EarlyFusionScorer, LateFusionHead

LATE_FILE = "late_fusion_head.onnx"
EARLY_FILE = "early_fusion_scorer.onnx"
LATE_INPUTS = ("user_embedding", "candidate_embeddings")
EARLY_INPUTS = ("item_embeddings", "attention_mask", "candidate_embeddings", "timestamps", "candidate_timestamp")
OUTPUTS = ("click_logit",)
# (batch, history length, candidates): one request of 100 candidates is the serving case
FUSION_CASES = [(1, 1, 1), (3, 7, 5), (2, 20, 100)]


class _EarlyGraph(nn.Module):
    def __init__(self, scorer: EarlyFusionScorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, item_embeddings, attention_mask, candidate_embeddings, timestamps=None, candidate_timestamp=None):
        return self.scorer(item_embeddings, attention_mask, candidate_embeddings, timestamps, candidate_timestamp)


def _uses_ts(scorer: EarlyFusionScorer) -> bool:
    return scorer.user_llm.time_embedding is not None


@torch.no_grad()
def export_late_head(head: LateFusionHead, path: Path, opset: int) -> None:
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(2, head.dim, generator=gen), torch.randn(2, 3, head.dim, generator=gen))
    axes = {"user_embedding": {0: "batch"}, "candidate_embeddings": {0: "batch", 1: "cand"},
            "click_logit": {0: "batch", 1: "cand"}}
    _trace(head.eval(), args, path, list(LATE_INPUTS), list(OUTPUTS), axes, opset)


@torch.no_grad()
def export_early_scorer(scorer: EarlyFusionScorer, path: Path, opset: int) -> None:
    dim = scorer.head.in_features
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])  # padded on each side: the traced slot is the general one
    args = (torch.randn(2, 4, dim, generator=gen), mask, torch.randn(2, 3, dim, generator=gen))
    inputs = list(EARLY_INPUTS if _uses_ts(scorer) else EARLY_INPUTS[:3])
    if _uses_ts(scorer):
        args += (torch.tensor([[0, 100, 160, 4000], [10, 20, 20, 0]]), torch.tensor([5000, 30]))
    seq, cand = {0: "batch", 1: "seq"}, {0: "batch", 1: "cand"}
    axes = {"item_embeddings": seq, "attention_mask": seq, "timestamps": seq, "candidate_timestamp": {0: "batch"},
            "candidate_embeddings": cand, "click_logit": cand}
    _trace(_EarlyGraph(scorer).eval(), args, path, inputs, list(OUTPUTS), {k: v for k, v in axes.items() if k in inputs + ["click_logit"]}, opset)


@dataclass
class FusionGraphs:
    files: dict[str, str]  # "late_fusion_head" / "early_fusion_scorer" -> file name inside onnx/
    section: dict  # the manifest's description of each graph


def export_fusion(model, folder: Path, opset: int) -> FusionGraphs:
    """Trace the bundle's click head (if any) into `folder`; the manifest section describes it."""
    folder = Path(folder)
    if getattr(model, "late_head", None) is not None:
        export_late_head(model.late_head, folder / LATE_FILE, opset)
        d = model.late_head.dim
        return FusionGraphs({"late_fusion_head": LATE_FILE}, {"late_fusion_head": {
            "file": f"onnx/{LATE_FILE}",
            "inputs": {"user_embedding": f"float32 [batch, {d}]", "candidate_embeddings": f"float32 [batch, cand, {d}]"},
            "outputs": {"click_logit": "float32 [batch, cand] (sigmoid = click probability)"}}})
    if getattr(model, "early_scorer", None) is not None:
        export_early_scorer(model.early_scorer, folder / EARLY_FILE, opset)
        d = model.early_scorer.head.in_features
        inputs = {"item_embeddings": f"float32 [batch, seq, {d}]", "attention_mask": "int64 [batch, seq]",
                  "candidate_embeddings": f"float32 [batch, cand, {d}]"}
        if _uses_ts(model.early_scorer):
            inputs |= {"timestamps": "int64 [batch, seq]", "candidate_timestamp": "int64 [batch]"}
        return FusionGraphs({"early_fusion_scorer": EARLY_FILE}, {"early_fusion_scorer": {
            "file": f"onnx/{EARLY_FILE}", "inputs": inputs,
            "outputs": {"click_logit": "float32 [batch, cand] (sigmoid = click probability)"}}})
    return FusionGraphs({}, {})


@torch.no_grad()
def fusion_parity(model, session, name: str, seed: int) -> list[ParityCase]:
    """ONNX Runtime vs PyTorch on fresh random padded requests, FUSION_CASES."""
    rng = np.random.default_rng(seed + 2)
    cases = []
    for batch, width, n_cand in FUSION_CASES:
        if name == "late_fusion_head":
            dim = model.late_head.dim
            user = rng.standard_normal((batch, dim)).astype(np.float32)
            cands = rng.standard_normal((batch, n_cand, dim)).astype(np.float32)
            ref = model.late_head(torch.from_numpy(user), torch.from_numpy(cands)).numpy()
            got = session.run(None, {"user_embedding": user, "candidate_embeddings": cands})[0]
            cases.append(ParityCase(name, batch, n_cand, "none", rel_error(got, ref)))
            continue
        scorer = model.early_scorer
        dim = scorer.head.in_features
        hist = rng.standard_normal((batch, width, dim)).astype(np.float32)
        cands = rng.standard_normal((batch, n_cand, dim)).astype(np.float32)
        lengths = rng.integers(0, width + 1, size=batch)
        lengths[0] = width
        stamps = random_timestamps(rng, batch, width)
        at = stamps[:, -1] + 60
        cols = np.arange(width)
        for side in ("left", "right"):
            mask = ((cols[None] >= width - lengths[:, None]) if side == "left" else (cols[None] < lengths[:, None])).astype(np.int64)
            feeds = {"item_embeddings": hist, "attention_mask": mask, "candidate_embeddings": cands}
            args = [torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(cands)]
            if _uses_ts(scorer):
                feeds |= {"timestamps": stamps, "candidate_timestamp": at}
                args += [torch.from_numpy(stamps), torch.from_numpy(at)]
            ref = scorer(*args).numpy()
            got = session.run(None, feeds)[0]
            cases.append(ParityCase(name, batch, width, side, rel_error(got, ref)))
    return cases
