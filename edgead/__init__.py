"""edgead: transformer anomaly detectors from a PyTorch checkpoint to a verified engine on the line.

This package root imports nothing heavy: the line side (``edgead.runtimes``) must work without PyTorch.
"""

import os

from edgead.errors import ArtifactError, EdgeadError, InputError, MissingDependencyError

__version__ = "0.1.0"

#: Decompression-bomb guard: frames declaring more pixels are refused (edgead.imageio reads the header first).
#: OpenCV reads its own limit once, when cv2 is imported, so it is set here before any edgead module imports cv2.
MAX_PIXELS = int(os.environ.get("EDGEAD_MAX_PIXELS") or (1 << 28))
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

__all__ = ["ArtifactError", "EdgeadError", "InputError", "MissingDependencyError", "__version__"]
