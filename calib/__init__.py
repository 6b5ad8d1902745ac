"""Calibration: images for INT8 quantisation, read and prepared exactly as at run time."""

from edgead.calib.dataset import CalibrationSet

__all__ = ["CalibrationSet", "always_float"]

#: families whose head turns features into a log-likelihood (sums of squares and exponentials of its own
#: outputs): INT8 noise there is amplified into the score itself, and the head is a small share of the FLOPs
DENSITY_FAMILIES = ("nf", "gmm")


def always_float(family: str) -> tuple[str, ...]:
    """Regular expressions (matched at the start of an ONNX node name, as NNCF's ignored scope does) of the nodes
    every INT8 path leaves in float for ``family``: the in-graph postprocessing (blur, top-k), and for the density
    families everything outside the backbone (flow steps, mixture MLPs), so only the backbone is INT8."""
    return (r".*/post/.*",) + ((r"(?!/backbone/).*",) if family in DENSITY_FAMILIES else ())
