"""Starting a run from a frozen bundle (`train.init_bundle`): the one loader every trainer uses.

A bundle carries its own backbones and its own config; the run brings the data, the objective and the
training settings. What decides how an item's text becomes tokens, how a sequence becomes the User LLM's
input and how an embedding is pooled and centered must be the same in both, or the run trains on inputs
the bundle never saw (a text template or padding side that differs tokenises the catalogue differently,
with no error). Those fields are compared here, and a mismatch fails before training, naming the field.
"""

from __future__ import annotations

from feature_gen.config import ConfigError, HLLMConfig

# dotted config fields that must agree between the run and the bundle it starts from
MUST_AGREE = (
    "item_text",
    "item_llm.pooling",
    "item_llm.center",
    "item_llm.padding_side",
    "user_llm.use_timestamps",
    "user_llm.num_time_buckets",
)
# may differ only one way: a run adds a fresh adapter to a bundle trained without one (identity at
# first, so the bundle's embeddings are where training starts); any other difference is refused
ADAPTER = "item_llm.adapter"


def _field(cfg: HLLMConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _leaves(value, name: str):
    """(dotted name, value) of every leaf field under `name` (a config section expands to its fields)."""
    if hasattr(value, "model_fields"):
        for field in type(value).model_fields:
            yield from _leaves(getattr(value, field), f"{name}.{field}")
    else:
        yield name, value


def check_bundle_agrees(cfg: HLLMConfig, bundle_cfg: HLLMConfig, source: str) -> None:
    """Raise ConfigError naming the first leaf field under MUST_AGREE where `cfg` and the bundle's
    config differ (e.g. `item_text.max_item_tokens: 32 but the init_bundle ... was trained with 96`)."""
    for section in MUST_AGREE:
        theirs = dict(_leaves(_field(bundle_cfg, section), section))
        for name, mine in _leaves(_field(cfg, section), section):
            if mine != theirs[name]:
                raise ConfigError(f"{name}: {mine!r} but the init_bundle {source} was trained with {theirs[name]!r}; "
                                  "set it to the bundle's value (or train from the base models)")
    mine, theirs = _field(cfg, ADAPTER), _field(bundle_cfg, ADAPTER)
    if mine != theirs and theirs != "none":
        raise ConfigError(f"{ADAPTER}: {mine!r} but the init_bundle {source} was trained with {theirs!r}; set it "
                          f"to {theirs!r} (a run may add an adapter to a bundle without one, not replace or drop one)")


def load_init_bundle(cfg: HLLMConfig):
    """The bundle at cfg.train.init_bundle, checked against `cfg`, with every weight trainable again
    (the trainer decides per stage what it freezes) and, where `cfg` asks for an item adapter the
    bundle lacks, a fresh one. Raises ConfigError (a field disagrees) or
    BundleError (not a readable bundle)."""
    from feature_gen.model.bundle import load_bundle

    bundle = load_bundle(cfg.train.init_bundle)
    check_bundle_agrees(cfg, bundle.cfg, str(cfg.train.init_bundle))
    if bundle.model.item_llm.adapter is None and cfg.item_llm.adapter != "none":
        bundle.model.item_llm.add_adapter(cfg.item_llm.adapter)
    for p in bundle.model.parameters():
        p.requires_grad_(True)
    return bundle
