"""Detector models (PyTorch): backbones with LayerNorm or DyT, and the FBFT / Dinomaly heads."""

from edgead.models.build import build_detector, detector_spec
from edgead.models.detector import Detector

__all__ = ["Detector", "build_detector", "detector_spec"]
