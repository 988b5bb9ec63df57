"""Export: merged, physically shrunk models to validated engines.

The mechanisms: ONNX export, fusion, precision, validation, pooling, the engine formats. The verb that drives
them is dsee_deploy.pipeline.export (dd.export):

import dsee_deploy as dd
manifest = dd.export("runs/sst2-s", "engines/sst2-s", dd.ExportConfig(quantize="int8"))
"""

from .config import ExportConfig
from .onnx import export_onnx, onnx_parameter_count
from .validate import ValidationError, validate_onnx

__all__ = [
    "ExportConfig",
    "ValidationError",
    "export_onnx",
    "onnx_parameter_count",
    "validate_onnx",
]
