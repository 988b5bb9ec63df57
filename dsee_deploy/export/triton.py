"""A Triton Inference Server model repository entry for the onnxruntime backend:
REPOSITORY/NAME/config.pbtxt and REPOSITORY/NAME/1/model.onnx."""

from __future__ import annotations

import json
from pathlib import Path

# ONNX element types (as onnxruntime names them) to Triton's data types.
TYPES = {
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
}


def write_config(model_dir: Path, max_batch_size: int, queue_delay_us: int, cpu_only: bool) -> Path:
    """config.pbtxt for the graph in `model_dir`/1/model.onnx: dynamic batching, dims from the graph (the
    batch axis left to max_batch_size, every other symbolic axis -1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def tensors(values) -> str:
        entries = []
        for v in values:
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in v.shape[1:])
            entries.append(
                f'  {{\n    name: "{v.name}"\n    data_type: {TYPES[v.type]}\n    dims: [ {dims} ]\n  }}'
            )
        return ",\n".join(entries)

    lines = [
        f"name: {json.dumps(model_dir.name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f"input [\n{tensors(session.get_inputs())}\n]",
        f"output [\n{tensors(session.get_outputs())}\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}",
    ]
    if cpu_only:  # int8 engines use CPU-only kernels (QAttention, DynamicQuantizeMatMul)
        lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    path = model_dir / "config.pbtxt"
    path.write_text("\n".join(lines) + "\n")
    return path
