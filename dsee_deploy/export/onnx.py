"""ONNX export through optimum-onnx, whose model patchers keep transformers' attention masks and positions
dynamic (a bare torch.onnx trace of transformers 4.57 bakes them in: ~1e-2 errors at other shapes)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path


def export_onnx(model, tokenizer, task, out: Path, opset: int = 17) -> Path:
    """Write `out`/model.onnx (dynamic batch and sequence axes) with the tokenizer and config beside it.
    `task` is the TaskSpec; a feature-extraction export is of the encoder inside the sentence encoder."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    model.eval()
    if task.pooled:
        model = model.encoder
    if task.language_model:
        model.config.use_cache = False  # no KV cache yet: one graph, full sequence in, logits out
    # optimum logs every step at INFO; the CLI reports what matters itself.
    previous = logging.getLogger("optimum").level
    logging.getLogger("optimum").setLevel(max(previous, logging.WARNING))
    try:
        with warnings.catch_warnings():
            # The tracer warns about constants in transformers' mask code; validation checks the result instead.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            onnx_export_from_model(
                model,
                out,
                task=task.exporter_task,
                opset=opset,
                do_validation=False,
                preprocessors=[tokenizer],
            )
    finally:
        logging.getLogger("optimum").setLevel(previous)
    return out / "model.onnx"


def onnx_parameter_count(path: Path) -> int:
    """Weights held by the graph: floating-point and int8 initializers plus constant tensors, not counting the
    scales and zero points that the int8 quantizer adds."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    total = sum(
        numpy_helper.to_array(t).size
        for t in graph.initializer
        if t.data_type in _WEIGHTS and not t.name.endswith(("_scale", "_zero_point"))
    )
    for node in graph.node:
        if node.op_type == "Constant":
            total += sum(
                numpy_helper.to_array(a.t).size
                for a in node.attribute
                if a.name == "value" and a.t.data_type in _FLOATS
            )
    return int(total)


_FLOATS = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_WEIGHTS = _FLOATS | {2, 3}  # UINT8, INT8
