"""The bundle's late-fusion click head as the ranker consumes it: `click_score` for the training set
and for serving through one function.

    head = click_head_for(fc, "outputs/bundles/hllm-…")   # None unless fc has a late_fusion feature
    ts = build_training_set(labels, cfg.store, version, fc, click_head=head)
    scorer = RequestScorer(ranker, store, fc, click_head=head)
    head(user [m, D], item [m, D]) -> logits [m]            # what assemble_features calls on both sides

Only the head is loaded (heads.safetensors' `late_head.*`, its widths from the manifest's
`fusion_head`), never the LLMs: the score reads the user and item embeddings the store already
serves, so it costs one small MLP per candidate. The bundle is verified (checksums) first, and a head
is tied to its bundle version: the training set and the scorer refuse a head of another version than
the embeddings they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from feature_gen.model.bundle import verify_bundle
from feature_gen.model.losses import LateFusionHead
from ranker_integration.feature_config import FeatureConfig

PREFIX = "late_head."  # the head's keys in heads.safetensors (HLLM.late_head)


class ClickHeadError(ValueError):
    """A bundle whose click head cannot score the contract's late_fusion feature; names the field."""


@dataclass
class ClickHead:
    """The bundle's late-fusion head: user [m, D], item [m, D] float32 -> click logits [m] float32
    (unnormalised; sigmoid = click probability)."""

    module: LateFusionHead
    bundle_version: str

    @property
    def dim(self) -> int:
        return self.module.dim

    @torch.no_grad()
    def __call__(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        user = torch.as_tensor(np.asarray(user, dtype=np.float32))
        item = torch.as_tensor(np.asarray(item, dtype=np.float32))
        if user.shape != item.shape or user.ndim != 2 or user.shape[1] != self.dim:
            raise ValueError(f"click head of {self.bundle_version}: user and item must both be [m, {self.dim}]; "
                             f"got {tuple(user.shape)} and {tuple(item.shape)}")
        # each row pairs one user with one candidate: a request of one candidate per row
        return self.module(user, item.unsqueeze(1)).squeeze(1).numpy()


def load_click_head(bundle_dir: str | Path) -> ClickHead:
    """The late-fusion head of a verified bundle; ClickHeadError naming manifest.fusion_head when the
    bundle has none (a generative or early-fusion bundle) or its weights do not fit its widths."""
    path = Path(bundle_dir)
    manifest = verify_bundle(path)
    spec = manifest.get("fusion_head") or {}
    if spec.get("fusion") != "late":
        raise ClickHeadError(f"{path}: manifest.fusion_head is {spec.get('fusion', 'none')!r}; the click_score "
                             "feature needs a late-fusion head (train with loss.objective discriminative, loss.fusion late)")
    module = LateFusionHead(int(spec["item_dim"]), int(spec["hidden"]))
    tensors = {k[len(PREFIX):]: v for k, v in load_file(str(path / "heads.safetensors")).items() if k.startswith(PREFIX)}
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ClickHeadError(f"{path}: heads.safetensors {PREFIX}* does not fit manifest.fusion_head {spec}: {first}") from None
    return ClickHead(module.eval(), manifest["version"])


def needs_click_head(fc: FeatureConfig) -> list[str]:
    """Names of the features of `fc` computed by the click head (function late_fusion)."""
    return [f.name for f in fc.features if f.source == "request" and f.function == "late_fusion"]


def click_head_for(fc: FeatureConfig, bundle_dir: str | Path) -> ClickHead | None:
    """The bundle's head when the feature config asks for it, else None (nothing is loaded)."""
    return load_click_head(bundle_dir) if needs_click_head(fc) else None


def check_click_head(fc: FeatureConfig, click_head, bundle_version: str, where: str) -> None:
    """Refuse, before any row is assembled, a config that needs the head without one, or a head of
    another bundle version than the embeddings `where` reads."""
    names = needs_click_head(fc)
    if names and click_head is None:
        raise ClickHeadError(f"{where}: feature {names[0]} (function late_fusion) needs the bundle's click head: "
                             f"pass click_head=click_head_for(fc, bundle_dir)")
    version = getattr(click_head, "bundle_version", None)
    if names and version is not None and version != bundle_version:
        raise ClickHeadError(f"{where}: the click head is bundle {version}'s, the embeddings are {bundle_version}'s")
