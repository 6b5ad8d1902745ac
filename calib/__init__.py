"""Calibration: images for INT8 quantisation, read and prepared exactly as at run time."""

from edgead.calib.dataset import CalibrationSet

__all__ = ["CalibrationSet"]
