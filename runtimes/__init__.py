"""Runtimes: load an artifact folder and run it through one ``Runner`` interface. Imports no torch.

>>> runner = edgead.runtimes.load("out/openvino-int8")
>>> preds = runner.predict(images)  # uint8 (N, H, W, 3)
"""

from edgead.runtimes.base import Predictions, Runner
from edgead.runtimes.loader import ENGINES, available_engines, load

__all__ = ["ENGINES", "Predictions", "Runner", "available_engines", "load"]
