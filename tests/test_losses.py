import math

import numpy as np

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
        target_ids=ids[:, 1:] * mask, candidates=Candidates(torch.arange(1, k + 1), table[1 : k + 1]),
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


# ---------------------------------------------------------------- objectives as configuration

from feature_gen.config import ConfigError  # noqa: E402
from feature_gen.model.losses import (  # noqa: E402
    Candidates,
    CatalogueCache,
    GenerativeObjective,
    check_objective,
    sampling_log_q,
    softmax_loss,
)


def _direct_softmax_ce(pred, pos, pos_ids, cand, cand_ids, scale, log_q=None, threshold=2.0, hardest=None):
    """Row by row with plain Python loops: -log softmax of the positive among its unmasked candidates."""
    losses = []
    for i in range(pred.size(0)):
        p = pred[i] / pred[i].norm()
        def logit(e, iid):
            value = scale * (p @ (e / e.norm()))
            return value - log_q[iid] if log_q is not None else value
        positive = logit(pos[i], pos_ids[i])
        negs = [logit(cand[j], cand_ids[j]) for j in range(cand.size(0))
                if cand_ids[j] != pos_ids[i] and float(((pos[i] / pos[i].norm()) @ (cand[j] / cand[j].norm())).detach()) <= threshold]
        if hardest is not None:
            negs = sorted(negs, key=lambda v: -float(v))[:hardest]
        losses.append(-positive + torch.logsumexp(torch.stack([positive, *negs]), dim=0))
    return torch.stack(losses).mean()


def _leaves(seed=0, n=5, k=7, d=4):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(k + 1, d, generator=g)  # ids 0..k, 0 = padding
    pred = torch.randn(n, d, generator=g)
    pos_ids = torch.randint(1, k + 1, (n,), generator=g)
    return pred, table, pos_ids


@pytest.mark.parametrize("case", ["full", "full_logq", "sampled_dupes", "hardest"])
def test_softmax_loss_and_gradients_match_a_direct_computation(case):
    pred0, table0, pos_ids = _leaves()
    cand_ids = torch.arange(1, 8) if case != "sampled_dupes" else torch.tensor([2, 2, 5, 7, 1])
    log_q = sampling_log_q(np.array([0, 5, 0, 1, 9, 3, 3, 2]), "popularity") if case == "full_logq" else None
    hardest = 3 if case == "hardest" else None
    results = []
    for direct in (False, True):
        pred, table = pred0.clone().requires_grad_(), table0.clone().requires_grad_()
        scale = torch.tensor(3.0)
        if direct:
            loss = _direct_softmax_ce(pred, table[pos_ids], pos_ids, table[cand_ids], cand_ids, scale, log_q, 2.0, hardest)
        else:
            cands = Candidates(cand_ids, table[cand_ids], log_q[cand_ids] if log_q is not None else None)
            loss = softmax_loss(pred, table[pos_ids], cands, scale, positive_ids=pos_ids,
                                positive_log_q=log_q[pos_ids] if log_q is not None else None,
                                threshold=1.0, hardest=hardest).loss
        loss.backward()
        results.append((loss.detach(), pred.grad, table.grad))
    (l1, gp1, gt1), (l2, gp2, gt2) = results
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gp1, gp2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gt1, gt2, atol=1e-5, rtol=1e-5)


def test_full_softmax_equals_cross_entropy_over_the_catalogue():
    """With the whole catalogue as candidates, the loss is the textbook CE with the target as the label."""
    pred, table, pos_ids = _leaves(seed=3)
    got = softmax_loss(pred, table[pos_ids], Candidates(torch.arange(1, 8), table[1:]), torch.tensor(5.0),
                       positive_ids=pos_ids, threshold=1.0).loss
    logits = 5.0 * torch.nn.functional.normalize(pred, dim=-1) @ torch.nn.functional.normalize(table[1:], dim=-1).T
    assert got.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, pos_ids - 1).item(), abs=1e-5)


def test_bf16_predictions_against_a_float32_catalogue_score_in_float32():
    """Stage 2 under bf16 (DeepSpeed casts the User LLM; the cached catalogue stays float32): the loss
    runs, in float32, equals the float32 computation on the same (bf16-rounded) values, under autocast
    too, and sends gradients back in bf16. Found on an H200: the mixed matmul raised a dtype error."""
    pred, table, pos_ids = _leaves(seed=3)
    pred16 = pred.detach().to(torch.bfloat16).requires_grad_()
    scale16 = torch.tensor(5.0, dtype=torch.bfloat16)
    cands = Candidates(torch.arange(1, 8), table[1:].detach())  # float32, as the cache
    got = softmax_loss(pred16, table[pos_ids].detach(), cands, scale16, positive_ids=pos_ids, threshold=1.0)
    want = softmax_loss(pred16.detach().float(), table[pos_ids].detach(), cands, torch.tensor(5.0),
                        positive_ids=pos_ids, threshold=1.0)
    assert got.loss.dtype == torch.float32 and got.logits.dtype == torch.float32
    assert got.loss.item() == pytest.approx(want.loss.item(), abs=1e-6)
    got.loss.backward()
    assert pred16.grad.dtype == torch.bfloat16 and torch.isfinite(pred16.grad.float()).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = softmax_loss(pred16.detach(), table[pos_ids].detach(), cands, scale16,
                                      positive_ids=pos_ids, threshold=1.0)
    assert under_autocast.logits.dtype == torch.float32
    assert under_autocast.loss.item() == pytest.approx(want.loss.item(), abs=1e-6)


def test_click_bce_is_float32_on_bf16_logits():
    logits = torch.tensor([[2.0, -1.0, 0.3]]).to(torch.bfloat16)
    labels, mask = torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 0]])
    got = click_bce(logits, labels, mask)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits.float()[:, :2], labels.float()[:, :2])
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), abs=1e-7)


def test_zero_count_item_in_logq_is_finite():
    log_q = sampling_log_q(np.array([0, 0, 0, 10]), "popularity")  # items 1 and 2 never seen
    assert torch.isfinite(log_q[1:]).all() and log_q[0] == -math.inf
    pred = torch.randn(2, 3, requires_grad=True)
    table = torch.randn(4, 3)
    ids = torch.tensor([1, 2])
    res = softmax_loss(pred, table[ids], Candidates(torch.tensor([1, 2, 3]), table[1:], log_q[1:]),
                       torch.tensor(10.0), positive_ids=ids, positive_log_q=log_q[ids])
    res.loss.backward()
    assert torch.isfinite(res.loss) and torch.isfinite(pred.grad).all()


def test_uniform_logq_changes_nothing_popularity_logq_does():
    pred, table, pos_ids = _leaves(seed=5)
    cands = torch.arange(1, 8)
    plain = softmax_loss(pred, table[pos_ids], Candidates(cands, table[cands]), torch.tensor(2.0), positive_ids=pos_ids).loss
    uq = sampling_log_q(np.zeros(8), "uniform")
    uniform = softmax_loss(pred, table[pos_ids], Candidates(cands, table[cands], uq[cands]), torch.tensor(2.0),
                           positive_ids=pos_ids, positive_log_q=uq[pos_ids]).loss
    pq = sampling_log_q(np.array([0, 100, 1, 1, 1, 1, 1, 1]), "popularity")
    pop = softmax_loss(pred, table[pos_ids], Candidates(cands, table[cands], pq[cands]), torch.tensor(2.0),
                       positive_ids=pos_ids, positive_log_q=pq[pos_ids]).loss
    assert uniform.item() == pytest.approx(plain.item(), abs=1e-5)
    assert abs(pop.item() - plain.item()) > 1e-3


def _objective(negatives, counts=None, **loss):
    cfg = LossConfig(negatives=negatives, nce_threshold=1.0, **loss)
    counts = np.array([0, 4, 3, 2, 1, 1, 1, 1, 1]) if counts is None else counts
    return GenerativeObjective(cfg, negatives, counts, seed=0)


def test_negatives_never_exclude_other_rows_positives():
    """Row 0's positive (item 2) is row 1's negative and vice versa; each masks only its own id."""
    table = torch.randn(9, 4)
    for negatives in ("full", "in_batch", "cache"):
        obj = _objective(negatives)
        targets = torch.tensor([2, 5])
        batch_ids = torch.tensor([1, 2, 5])
        cands = obj.candidates(0, batch_ids, table[batch_ids], targets, obj.extra_ids(0),
                               catalogue=lambda: table, item_table=lambda: table)
        assert {2, 5} <= set(cands.ids.tolist()), negatives
        res = obj.loss(torch.randn(2, 4), table[targets], targets, cands, torch.tensor(1.0))
        offered = cands.ids.numel()
        assert res.valid_negatives.tolist() == [offered - 1, offered - 1], negatives


def test_sampled_negatives_keep_other_rows_positives_and_are_seeded_by_step():
    obj = _objective("sampled", num_negatives=200)
    first = obj.extra_ids(3)
    assert torch.equal(first, obj.extra_ids(3)) and not torch.equal(first, obj.extra_ids(4))
    assert set(first.tolist()) == set(range(1, 9))  # 200 uniform draws over 8 items reach them all
    pop = _objective("sampled", num_negatives=4000, sampling="popularity", counts=np.array([0, 99, 0, 0, 0, 0, 0, 0, 0]))
    share = (pop.extra_ids(0) == 1).float().mean().item()
    assert share == pytest.approx(100 / 108, abs=0.03)  # (99 + 1) / sum(count + 1)


def test_catalogue_cache_refreshes_at_the_configured_step_and_carries_no_gradient():
    cache = CatalogueCache(refresh_steps=3)
    weight = torch.randn(9, 4, requires_grad=True)
    calls = []

    def compute():
        calls.append(1)
        return weight * 1.0  # would carry gradient if the cache did not cut it

    refreshed = [s for s in range(8) if (cache.get(s, compute), cache.refreshed_at == s)[1]]
    assert refreshed == [0, 3, 6] and len(calls) == 3
    assert not cache.table.requires_grad
    fresh = torch.randn(2, 4, requires_grad=True)
    table = CatalogueCache.with_fresh_rows(cache.table, torch.tensor([2, 5]), fresh)
    table.sum().backward()
    assert weight.grad is None  # stale rows: no gradient into what computed them
    assert torch.equal(fresh.grad, torch.ones(2, 4))  # fresh rows: gradient
    resumed = CatalogueCache(refresh_steps=3)
    resumed.get(7, compute)
    assert resumed.refreshed_at == 7  # empty after a resume: filled at once, not at step 9


def test_cache_objective_with_fresh_targets_puts_the_steps_items_in_fresh():
    obj = _objective("cache", cache_refresh_steps=5, cache_targets="fresh")
    stale = torch.randn(9, 4)
    fresh = torch.randn(2, 4, requires_grad=True)
    cands = obj.candidates(0, torch.tensor([3, 6]), fresh, torch.tensor([3]), obj.extra_ids(0),
                           catalogue=lambda: None, item_table=lambda: stale)
    row3 = cands.embeddings[cands.ids.tolist().index(3)]
    torch.testing.assert_close(row3, fresh[0])
    assert cands.embeddings.requires_grad


def test_cache_objective_scores_positives_and_candidates_as_cache_rows_by_default():
    """cache_targets: cached: one encoder version scores the positive and every candidate, so no
    candidate can be told apart by freshness; the gradient reaches the model through the predictions only."""
    obj = _objective("cache", cache_refresh_steps=5)
    assert obj.cfg.cache_targets == "cached"
    stale = torch.randn(9, 4)
    fresh = torch.randn(2, 4, requires_grad=True)
    obj.refresh(0, lambda: stale)
    targets = torch.tensor([[3, 0], [6, 3]])  # 0 = padding
    positives = obj.cached_target_rows(targets)
    torch.testing.assert_close(positives, stale[targets])
    assert not positives.requires_grad
    cands = obj.candidates(0, torch.tensor([3, 6]), fresh, torch.tensor([3, 6]), obj.extra_ids(0),
                           catalogue=lambda: None, item_table=lambda: stale)
    torch.testing.assert_close(cands.embeddings, stale[cands.ids])
    assert not cands.embeddings.requires_grad
    pred = torch.randn(2, 4, requires_grad=True)
    obj.loss(pred, positives[targets > 0][:2], torch.tensor([3, 6]), cands, torch.tensor(5.0)).loss.backward()
    assert fresh.grad is None and pred.grad.abs().sum() > 0
    # other objectives score positives as the step's fresh encodings: asking them for cache rows is a bug
    for other in (_objective("in_batch"), _objective("cache", cache_targets="fresh")):
        assert other.encodes_targets
        with pytest.raises(RuntimeError, match="fresh encodings"):
            other.cached_target_rows(targets)
    with pytest.raises(RuntimeError, match="refresh"):
        _objective("cache").cached_target_rows(targets)


@pytest.mark.parametrize("loss,has_catalogue,field", [
    ({"negatives": "full"}, False, "loss.negatives"),
    ({"negatives": "sampled", "num_negatives": 100}, True, "loss.num_negatives"),
    ({"objective": "discriminative"}, True, "loss.objective"),
    ({"fusion": "early"}, True, "loss.fusion"),
    ({"bce_weight": 0.5}, True, "loss.bce_weight"),
    ({"next_weight": 0.1}, True, "loss.next_weight"),
    ({"hard_negatives": 50}, True, "loss.hard_negatives"),
])
def test_objectives_the_trainer_cannot_run_are_refused_by_name(loss, has_catalogue, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        check_objective(LossConfig(**loss), has_catalogue=has_catalogue, num_items=50)


def test_auto_negatives_full_with_a_catalogue_in_batch_without():
    assert check_objective(LossConfig(), has_catalogue=True, num_items=50) == "full"
    assert check_objective(LossConfig(), has_catalogue=False, num_items=50) == "in_batch"


def test_cache_refresh_of_zero_is_refused_by_name():
    from feature_gen.config import config_from_dict

    with pytest.raises(ConfigError, match="loss.cache_refresh_steps"):
        config_from_dict({"loss": {"cache_refresh_steps": 0}})


@pytest.mark.parametrize("loss,field", [
    ({"num_negatives": 64}, "loss.num_negatives"),
    ({"sampling": "popularity"}, "loss.sampling"),
    ({"negatives": "sampled", "cache_refresh_steps": 7}, "loss.cache_refresh_steps"),
    ({"negatives": "in_batch", "cache_targets": "fresh"}, "loss.cache_targets"),
])
def test_a_field_of_another_kind_of_negatives_is_refused_not_ignored(loss, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        check_objective(LossConfig(**loss), has_catalogue=True, num_items=500)


def test_dot_similarity_matches_cross_entropy_on_inner_products_and_is_refused_for_hllm():
    pred, table, pos_ids = _leaves(seed=4)
    got = softmax_loss(pred, table[pos_ids], Candidates(torch.arange(1, 8), table[1:]), torch.tensor(5.0),
                       positive_ids=pos_ids, threshold=1.0, similarity="dot").loss
    expected = torch.nn.functional.cross_entropy(pred @ table[1:].T, pos_ids - 1)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(ConfigError, match="^loss.similarity"):
        check_objective(LossConfig(similarity="dot"), has_catalogue=True, num_items=50)
    assert check_objective(LossConfig(similarity="dot"), has_catalogue=True, num_items=50, id_model=True) == "full"


def test_catalogue_cache_state_round_trips_for_resume():
    cache = CatalogueCache(refresh_steps=10)
    cache.get(0, lambda: torch.arange(6.0).view(3, 2))
    resumed = CatalogueCache(refresh_steps=10)
    resumed.load_state(cache.state())
    calls = []
    table = resumed.get(4, lambda: calls.append(1) or torch.zeros(3, 2))
    assert not calls and torch.equal(table, torch.arange(6.0).view(3, 2))  # no refresh until step 10
