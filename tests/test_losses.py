import math

import pytest
import torch

from feature_gen.config import LossConfig
from feature_gen.model.losses import (
    EarlyFusionScorer,
    LateFusionHead,
    LogitScale,
    click_bce,
    info_nce,
    sequence_info_nce,
    total_loss,
)
from feature_gen.model.hllm import build_hllm

from tests.conftest import tiny_config

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_info_nce_hand_computed():
    # cos(pred, pos) = 1, negatives at cos 0 and -1, scale 2: logits [2, 0, -2]
    result = info_nce(E1.view(1, 2), E1.view(1, 2) * 5, torch.stack([E2, -E1]), torch.tensor(2.0))
    assert result.loss.item() == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)), abs=1e-6)
    assert result.valid_negatives.tolist() == [2]


def test_info_nce_is_cosine_not_dot_product():
    small = info_nce(E1.view(1, 2) * 0.1, (E1 + E2).view(1, 2), E2.view(1, 2), torch.tensor(3.0))
    large = info_nce(E1.view(1, 2) * 100, (E1 + E2).view(1, 2) * 7, E2.view(1, 2) * 9, torch.tensor(3.0))
    assert small.loss.item() == pytest.approx(large.loss.item(), abs=1e-6)


def test_near_duplicate_of_positive_is_masked():
    # the first negative points the same way as the positive (cos 1 > 0.99): not a negative
    negs = torch.stack([E1 * 3, E2])
    result = info_nce(E1.view(1, 2), E1.view(1, 2), negs, torch.tensor(4.0), threshold=0.99)
    assert result.loss.item() == pytest.approx(math.log(1 + math.exp(-4)), abs=1e-6)
    assert result.valid_negatives.tolist() == [1]
    # a looser threshold keeps it: cos 0.8 survives 0.99 but not 0.5
    tilted = torch.tensor([0.8, 0.6])
    kept = info_nce(E1.view(1, 2), E1.view(1, 2), tilted.view(1, 2), torch.tensor(1.0), threshold=0.99)
    dropped = info_nce(E1.view(1, 2), E1.view(1, 2), tilted.view(1, 2), torch.tensor(1.0), threshold=0.5)
    assert kept.loss.item() == pytest.approx(math.log(1 + math.exp(0.8 - 1.0)), abs=1e-6)
    assert dropped.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_negative_with_the_positive_id_is_masked_even_if_embeddings_differ():
    negs = torch.stack([E2, -E1])
    result = info_nce(
        E1.view(1, 2), E1.view(1, 2), negs, torch.tensor(2.0),
        positive_ids=torch.tensor([7]), negative_ids=torch.tensor([7, 9]),
    )
    assert result.loss.item() == pytest.approx(math.log(1 + math.exp(-4)), abs=1e-6)


def test_masking_never_makes_nan_and_gradients_flow():
    pred = torch.randn(4, 8, requires_grad=True)
    pos = torch.randn(4, 8)
    result = info_nce(pred, pos, pos.clone(), torch.tensor(100.0))  # every negative is some positive
    assert torch.isfinite(result.loss)
    result.loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_logit_scale_init_and_clamp():
    scale = LogitScale(temperature_init=0.07, max_scale=100.0)
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-6)
    assert scale.log_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


def test_sequence_info_nce_uses_only_real_positions():
    torch.manual_seed(0)
    preds, targets = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    negs = torch.randn(5, 4)
    got = sequence_info_nce(preds, targets, mask, negs, torch.tensor(5.0))
    keep = mask.bool()
    expected = info_nce(preds[keep], targets[keep], negs, torch.tensor(5.0))
    assert got.loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)
    assert got.logits.shape == (4, 6)
    preds2 = preds.clone()
    preds2[0, 0] = 100.0  # a padded position: must not matter
    again = sequence_info_nce(preds2, targets, mask, negs, torch.tensor(5.0))
    assert again.loss.item() == pytest.approx(got.loss.item(), abs=1e-6)


def test_click_bce_hand_computed():
    loss = click_bce(torch.tensor([0.0, math.log(3.0)]), torch.tensor([1, 0]))
    # -log(sigmoid(0)) = ln 2 ; -log(1 - sigmoid(ln 3)) = -log(1/4) = ln 4
    assert loss.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)


def test_late_fusion_head_hand_computed():
    head = LateFusionHead(dim=1, hidden=1)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.tensor([[0.0, 0.0, 1.0]]))  # picks u * c
        head.mlp[0].bias.zero_()
        head.mlp[2].weight.fill_(1.0)
        head.mlp[2].bias.zero_()
    logits = head(torch.tensor([[2.0]]), torch.tensor([[[3.0], [-1.0]]]))
    gelu = lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert logits.shape == (1, 2)
    assert logits[0, 0].item() == pytest.approx(gelu(6.0), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(gelu(-2.0), abs=1e-5)


def test_early_fusion_appends_candidate_after_last_real_item():
    cfg = tiny_config()
    model, _ = build_hllm(cfg)
    scorer = EarlyFusionScorer(model.user_llm, dim=64).eval()
    torch.manual_seed(0)
    history = torch.randn(2, 4, 64)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right- and left-padded rows
    cands = torch.randn(2, 3, 64)
    with torch.no_grad():
        got = scorer(history, mask, cands)
        for b, real in enumerate([history[0, :3], history[1, 1:]]):
            for c in range(3):
                seq = torch.cat([real, cands[b, c : c + 1]]).unsqueeze(0)
                out = model.user_llm(seq, torch.ones(1, seq.size(1), dtype=torch.long))
                expected = scorer.head(out.user_embedding)
                assert got[b, c].item() == pytest.approx(expected.item(), abs=1e-4)


def test_total_loss_weights():
    cfg = LossConfig(gen_weight=1.0, bce_weight=0.5, next_weight=0.1)
    got = total_loss(cfg, gen=torch.tensor(1.0), bce=torch.tensor(2.0), next_item=torch.tensor(3.0))
    assert got.item() == pytest.approx(1.0 + 1.0 + 0.3)
    assert total_loss(cfg, gen=torch.tensor(1.5)).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no loss term"):
        total_loss(LossConfig(gen_weight=0.0), gen=torch.tensor(1.0))


def _batch(model, batch=3, seq=5, k=8, dim=64):
    torch.manual_seed(1)
    ids = torch.randint(1, 50, (batch, seq + 1))
    table = torch.randn(51, dim)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, :2] = 0
    return dict(
        seq_item_embs=table[ids[:, :-1]], attention_mask=mask, target_embs=table[ids[:, 1:]],
        target_ids=ids[:, 1:] * mask, negative_embs=table[1 : k + 1], negative_ids=torch.arange(1, k + 1),
    )


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_hllm_discriminative_losses_combine(fusion):
    cfg = tiny_config(loss={"objective": "discriminative", "fusion": fusion, "next_weight": 0.5, "bce_weight": 2.0})
    model, _ = build_hllm(cfg)
    batch = _batch(model)
    cands = torch.randn(3, 2, 64)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    out = model.losses(**batch, candidate_embs=cands, click_labels=labels)
    expected = out.gen.loss + 2.0 * out.bce + 0.5 * out.next_item.loss
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    out.total.backward()
    head = model.late_head if fusion == "late" else model.early_scorer.head
    assert next(head.parameters()).grad is not None
    assert model.item_llm.backbone.get_input_embeddings().weight.grad is None  # items came in as embeddings
    with pytest.raises(ValueError, match="needs candidate_embs"):
        model.losses(**batch)


def test_hllm_generative_loss_is_near_log_k_plus_one_at_init():
    """A random model cannot tell the positive from 8 negatives: loss ~ log(9) at a small scale."""
    cfg = tiny_config(loss={"temperature_init": 1.0})
    model, _ = build_hllm(cfg)
    out = model.losses(**_batch(model))
    assert out.bce is None and out.next_item is None
    assert out.total.item() == pytest.approx(out.gen.loss.item())
    assert abs(out.total.item() - math.log(9)) < 1.0
