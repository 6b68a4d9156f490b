import os

# No hub, ever: a test that tries to download must fail loudly, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from feature_gen.config import HLLMConfig  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config(**sections) -> HLLMConfig:
    """Tiny random Llamas for both LLMs (item hidden 64, user hidden 32 so the projection is exercised)."""
    raw = {
        "item_text": {"max_item_tokens": 96},  # the byte tokenizer spends 49 tokens on the default prompt
        "item_llm": {"source": "tiny_random", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                                        "num_kv_heads": 2, "intermediate_size": 128}},
        "user_llm": {"source": "tiny_random", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                                        "num_kv_heads": 2, "intermediate_size": 64, "seed": 1}},
        "loss": {"num_negatives": 16},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return HLLMConfig.model_validate(raw)


@pytest.fixture
def tiny_cfg() -> HLLMConfig:
    return tiny_config()


def build_tiny_bundle(folder, init_seed: int = 0):
    """A frozen tiny-random HLLM bundle (item hidden 64, user hidden 32, timestamps on) saved under
    `folder`. `init_seed` fixes the torch RNG before the model is built: the Llamas' own seeds do not
    set every weight (the user projection), and without it those came from whatever RNG state the tests
    that ran first left, so the same test saw other weights alone than in the whole suite."""
    from feature_gen.model.bundle import save_bundle
    from feature_gen.model.hllm import build_hllm

    torch.manual_seed(init_seed)
    cfg = tiny_config(user_llm={"use_timestamps": True}, data={"max_seq_len": 20})
    model, tok = build_hllm(cfg)
    torch.manual_seed(7)
    with torch.no_grad():
        model.item_llm.item_token.normal_()
        model.user_llm.time_embedding.weight.normal_(std=0.1)
    return save_bundle(model.eval(), tok, cfg, folder, data_fingerprint="tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """build_tiny_bundle's bundle (init seed 0): the input of the Spark, streaming and export tests.
    Weights are random, so only equality checks make sense."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def encoders(tiny_bundle):
    """The tiny bundle's encoders with one torch thread, as `hllm refresh` runs (stream.torch_threads):
    two threads stall each other on a busy 2-core machine."""
    from feature_gen.inference.encoders import load_encoders

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoders(tiny_bundle)
    torch.set_num_threads(threads)


from tests.redis_fixture import redis_server  # noqa: E402,F401  (a real redis-server per test session)
