"""A Triton Inference Server model repository entry for the onnxruntime backend:
REPOSITORY/NAME/config.pbtxt and REPOSITORY/NAME/1/model.onnx."""

from __future__ import annotations

import json
from pathlib import Path

# ONNX element types to Triton's data types.
TYPES = {7: "TYPE_INT64", 6: "TYPE_INT32", 1: "TYPE_FP32", 10: "TYPE_FP16"}


def write_config(
    model_dir: Path, name: str, max_batch_size: int, queue_delay_us: int, cpu_only: bool
) -> Path:
    """config.pbtxt of model `name` for the graph in `model_dir`/1/model.onnx (the folder is written under
    another name and moved into the repository when complete): dynamic batching, dims from the graph (the batch
    axis left to max_batch_size, every other symbolic axis -1)."""
    import onnx

    graph = onnx.load(str(model_dir / "1" / "model.onnx"), load_external_data=False).graph

    def tensors(values) -> str:
        entries = []
        for v in values:
            kind = v.type.tensor_type
            dims = ", ".join(
                str(d.dim_value) if d.HasField("dim_value") else "-1" for d in kind.shape.dim[1:]
            )
            entries.append(
                f'  {{\n    name: "{v.name}"\n    data_type: {TYPES[kind.elem_type]}\n    dims: [ {dims} ]\n  }}'
            )
        return ",\n".join(entries)

    lines = [
        f"name: {json.dumps(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"input [\n{tensors(graph.input)}\n]",
        f"output [\n{tensors(graph.output)}\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}",
    ]
    if cpu_only:  # int8 engines use CPU-only kernels (QAttention, DynamicQuantizeMatMul)
        lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    path = model_dir / "config.pbtxt"
    path.write_text("\n".join(lines) + "\n")
    return path
