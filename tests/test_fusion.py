"""Late and early fusion: loss and gradient of the batched code against a direct, per-pair computation."""

import math

import pytest
import torch

from feature_gen.config import LossConfig
from feature_gen.model.hllm import build_hllm
from feature_gen.model.losses import EarlyFusionScorer, LateFusionHead, click_bce, total_loss

from tests.conftest import tiny_config


def _direct_bce(z: torch.Tensor, y: float) -> torch.Tensor:
    p = torch.sigmoid(z)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def test_late_fusion_loss_and_gradient_match_a_direct_computation():
    torch.manual_seed(0)
    dim, hidden = 5, 7
    head = LateFusionHead(dim, hidden).double()
    user = torch.randn(2, dim, dtype=torch.float64, requires_grad=True)
    cands = torch.randn(2, 3, dim, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [0, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second request has two candidates
    loss = click_bce(head(user, cands), labels, mask)
    grads = torch.autograd.grad(loss, [user, cands, head.mlp[0].weight])

    w1, b1 = head.mlp[0].weight, head.mlp[0].bias
    w2, b2 = head.mlp[2].weight, head.mlp[2].bias
    gelu = lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # noqa: E731
    terms = []
    for b in range(2):
        for c in range(3):
            if not mask[b, c]:
                continue
            u, v = user[b], cands[b, c]
            z = w2 @ gelu(w1 @ torch.cat([u, v, u * v]) + b1) + b2
            terms.append(_direct_bce(z.squeeze(), float(labels[b, c])))
    direct = torch.stack(terms).mean()
    direct_grads = torch.autograd.grad(direct, [user, cands, w1])
    assert loss.item() == pytest.approx(direct.item(), rel=1e-12)
    for got, want in zip(grads, direct_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert grads[1][1, 2].abs().sum() == 0  # the padded candidate gets no gradient


def test_early_fusion_loss_and_gradient_match_one_pass_per_candidate():
    cfg = tiny_config(user_llm={"use_timestamps": True})
    model, _ = build_hllm(cfg)
    user_llm = model.user_llm.eval()  # no dropout in the tiny Llama either way; eval for clarity
    scorer = EarlyFusionScorer(user_llm, dim=64)
    torch.manual_seed(2)
    history = torch.randn(3, 4, 64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])  # right-, left-padded, no history
    stamps = torch.tensor([[10, 20, 400, 0], [0, 5, 6, 9000], [0, 0, 0, 0]])
    at = torch.tensor([500, 10_000, 77])
    cands = torch.randn(3, 2, 64)
    labels = torch.tensor([[1, 0], [0, 1], [1, 0]])
    params = [scorer.head.weight, user_llm.in_proj.weight]
    loss = click_bce(scorer(history, mask, cands, stamps, at), labels)
    grads = torch.autograd.grad(loss, params)

    terms = []
    for b in range(3):
        real = mask[b].bool()
        for c in range(2):
            seq = torch.cat([history[b, real], cands[b, c : c + 1]]).unsqueeze(0)
            ts = torch.cat([stamps[b, real], at[b : b + 1]]).unsqueeze(0)
            out = user_llm(seq, torch.ones(1, seq.size(1), dtype=torch.long), ts)
            terms.append(_direct_bce(scorer.head(out.user_embedding).squeeze(), float(labels[b, c])))
    direct = torch.stack(terms).mean()
    direct_grads = torch.autograd.grad(direct, params)
    assert loss.item() == pytest.approx(direct.item(), abs=1e-5)
    for got, want in zip(grads, direct_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_lambda_zero_removes_the_next_item_term():
    gen, bce, nxt = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(100.0)
    with_next = total_loss(LossConfig(objective="discriminative", next_weight=0.5), gen=gen, bce=bce, next_item=nxt)
    without = total_loss(LossConfig(objective="discriminative", next_weight=0.0), gen=gen, bce=bce, next_item=nxt)
    assert with_next.item() == pytest.approx(53.0)
    assert without.item() == pytest.approx(3.0)
