"""edgead: transformer anomaly detectors from a PyTorch checkpoint to a verified engine on the line.

This package root imports nothing heavy: the line side (``edgead.runtimes``) must work without PyTorch.
"""

from edgead.errors import ArtifactError, EdgeadError, InputError, MissingDependencyError

__version__ = "0.1.0"

__all__ = ["ArtifactError", "EdgeadError", "InputError", "MissingDependencyError", "__version__"]
