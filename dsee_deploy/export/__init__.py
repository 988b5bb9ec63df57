"""Export: merged, physically shrunk models to validated ONNX engines."""

from .onnx import export_onnx, onnx_parameter_count
from .validate import ValidationError, validate_onnx

__all__ = ["ValidationError", "export_onnx", "onnx_parameter_count", "validate_onnx"]
