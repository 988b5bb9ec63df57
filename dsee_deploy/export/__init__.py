"""Export: merged, physically shrunk models to validated engines.

from dsee_deploy.export import ExportConfig, export
manifest = export("runs/sst2-s", "engines/sst2-s", ExportConfig(quantize="int8"))
"""

from .config import ExportConfig
from .onnx import export_onnx, onnx_parameter_count
from .run import ExportFailed, export
from .validate import ValidationError, validate_onnx

__all__ = [
    "ExportConfig",
    "ExportFailed",
    "ValidationError",
    "export",
    "export_onnx",
    "onnx_parameter_count",
    "validate_onnx",
]
