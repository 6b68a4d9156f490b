"""One scoring space: the trainer's model selection, `hllm evaluate` and the demo's evaluate step
rank the same vectors identically (all through feature_gen/evaluation/protocol.py, cosine for model
vectors), and ranking by raw dot product would not."""

import numpy as np
import pytest
import torch
from torch import nn

from feature_gen.config import config_from_dict
from feature_gen.data.sequences import leave_one_out, load_interaction_data
from feature_gen.evaluation import protocol, reference_scorers
from feature_gen.inference.encoders import embed_users
from feature_gen.model.user_llm import UserLLMOutput, last_real_index
from tests.toys import cycle_walks


class MeanUser(nn.Module):
    """A stand-in User model: the user embedding is the last input item's embedding plus the mean."""

    item_dim = 8

    def forward(self, item_embs, attention_mask, timestamps=None):
        m = attention_mask.unsqueeze(-1).float()
        mean = (item_embs * m).sum(1) / m.sum(1).clamp(min=1)
        rows = torch.arange(item_embs.size(0))
        return UserLLMOutput(predictions=item_embs, user_embedding=item_embs[rows, last_real_index(attention_mask)] + mean)


class TableRecommender(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = table
        self.user_model = MeanUser()

    def item_table(self):
        return self.table


@pytest.fixture
def toy(tmp_path):
    items, inter = cycle_walks(tmp_path, num_items=40, num_users=50, length=15)
    cfg = config_from_dict({"data": {"source": "files", "items_path": str(items), "interactions_path": str(inter),
                                     "max_seq_len": 8}, "eval": {"ks": [1, 5, 10]}})
    data = load_interaction_data(cfg.data, cfg.item_text)
    g = torch.Generator().manual_seed(0)
    # rows of very different norms: dot product and cosine rank them differently
    table = torch.randn(data.num_items + 1, 8, generator=g) * torch.rand(data.num_items + 1, 1, generator=g).mul(20).add(0.1)
    table[0] = 0
    return cfg, data, leave_one_out(data), table


def test_trainer_demo_and_cli_rank_identical_vectors_identically(toy, monkeypatch):
    from hllm import demo_pipeline, evaluate_cli
    from trainer.loop import evaluate

    cfg, data, split, table = toy
    rec = TableRecommender(table)
    trainer_metrics = evaluate(rec, split.test, cfg, cfg.data.max_seq_len)

    users = embed_users(rec.user_model, table, split.test.histories, split.test.history_timestamps, cfg.data.max_seq_len)
    demo = demo_pipeline.rank_scorers(torch.from_numpy(users.vectors), table, split, data.num_users, data.num_items, cfg)
    assert demo.loc["HLLM (trained User LLM)"].to_dict() == trainer_metrics.values

    # `hllm evaluate` (content kNN over the same table) and the demo's content row: one protocol call each
    seen = []
    real = protocol.evaluate_vectors
    monkeypatch.setattr(evaluate_cli, "content_item_table", lambda cfg, items: table)
    monkeypatch.setattr(evaluate_cli, "evaluate_vectors", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    assert evaluate_cli.run_evaluate(cfg, "content", "test") == 0
    assert seen[0].values == demo.loc["content kNN (frozen Item LLM)"].to_dict()

    # and the test can fail: ranking the model's vectors by dot product gives other ranks here
    by_dot = protocol.evaluate_vectors(users.vectors, table, split.test, cfg, similarity="dot")
    assert not np.array_equal(by_dot.ranks, trainer_metrics.ranks)

    # the content row scores the table it is given for content (the Item LLM without a trained adapter)
    other = table.clone()
    other[1:] = torch.flip(other[1:], dims=[0])
    split_content = demo_pipeline.rank_scorers(torch.from_numpy(users.vectors), table, split, data.num_users,
                                               data.num_items, cfg, content_table=other)
    assert split_content.loc["HLLM (trained User LLM)"].to_dict() == trainer_metrics.values
    expected = protocol.evaluate_vectors(reference_scorers.content_user_vectors(other, split.test.histories), other,
                                         split.test, cfg, "cosine").values
    assert split_content.loc["content kNN (frozen Item LLM)"].to_dict() == expected
    assert expected != demo.loc["content kNN (frozen Item LLM)"].to_dict()
