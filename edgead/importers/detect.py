"""Recognise which implementation wrote a state dict, so a mismatch is refused naming what was found."""

from __future__ import annotations

import torch

from edgead.errors import ArtifactError
from edgead.importers.common import strip_prefix

#: format -> how a person names it in a message
NAMES = {
    "dinomaly": "an original Dinomaly checkpoint (guojiajeremy/Dinomaly ViTill)",
    "anomalib-dinomaly": "an anomalib Dinomaly checkpoint (bias-free MLPs)",
    "l2bt": "an L2BT / FBFT student checkpoint (FeatureProjectionMLP)",
    "timm": "timm / DINOv2 backbone weights",
    "ader-vitad": "an ADer ViTAD checkpoint (net_t / net_fusion / net_s)",
    "edgead": "an edgead detector state dict",
    "unknown": "a state dict of no known layout",
}


#: Parts of an anomalib Lightning module that are not the model: its post-processor's thresholds (read by the
#: anomalib importer from the checkpoint itself), and ``trainable_modules``, which holds the same tensors as
#: ``model.bottleneck`` and ``model.decoder`` under a second name.
LIGHTNING_PARTS = ("post_processor.", "pre_processor.", "evaluator.", "visualizer.", "trainable_modules.")


def normalise(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrappers' key prefixes (Lightning's ``model.``, DataParallel's ``module.``) and the parts of a
    Lightning module that are not the model."""
    if any(k.startswith("model.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith(LIGHTNING_PARTS)}
    for prefix in ("module.", "model."):
        sd = strip_prefix(sd, prefix)
    return sd


def sniff(sd: dict[str, torch.Tensor]) -> str:
    """The format of a (normalised) state dict: one of ``NAMES``."""
    keys = set(sd)
    if any(k.startswith("net_t.") for k in keys) and any(k.startswith("net_s.") for k in keys):
        return "ader-vitad"
    if any(k.startswith("head.") for k in keys) and any(k.startswith("backbone.") for k in keys):
        return "edgead"
    if "bottleneck.0.fc1.weight" in keys and any(k.startswith("decoder.0.") for k in keys):
        return "dinomaly" if "bottleneck.0.fc1.bias" in keys else "anomalib-dinomaly"
    mlp = {"input.weight", "projection.weight", "output.weight"}
    if mlp <= keys or {f"forward_net.{k}" for k in mlp} <= keys:
        return "l2bt"
    flat = strip_prefix(strip_prefix(sd, "backbone."), "encoder.")
    if "patch_embed.proj.weight" in flat and any(".attn.qkv.weight" in k for k in flat):
        return "timm"
    return "unknown"


def check_format(sd: dict[str, torch.Tensor], expected: str, source: str) -> dict[str, torch.Tensor]:
    """Return the normalised state dict, or refuse when it is not ``expected``."""
    sd = normalise(sd)
    found = sniff(sd)
    if found != expected:
        importable = found in ("dinomaly", "anomalib-dinomaly", "l2bt", "timm")
        hint = f"; import it with --format {found}" if importable else ""
        raise ArtifactError(f"{source}: expected {NAMES[expected]}, found {NAMES[found]}{hint}")
    return sd
