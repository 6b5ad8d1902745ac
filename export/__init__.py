"""Export: PyTorch detector -> one end-to-end ONNX graph, simplified and checked against PyTorch."""

from edgead.export.onnx import ExportReport, export_onnx

__all__ = ["ExportReport", "export_onnx"]
