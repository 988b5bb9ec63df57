"""Serialized TensorRT engines from the exported ONNX graph, with the `tensorrt` Python API (TensorRT 10+)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DSEEError

SHAPE = re.compile(r"^(\d+)x(\d+)$")


def parse_shape(flag: str, value: str) -> tuple[int, int]:
    """'BATCHxSEQ' (e.g. 8x128) as (batch, seq)."""
    match = SHAPE.match(value.strip())
    if not match or 0 in (int(match[1]), int(match[2])):
        raise DSEEError(f"{flag} '{value}' is not BATCHxSEQ with positive sizes: write it like 8x128")
    return int(match[1]), int(match[2])


def check_profile(shapes: dict[str, tuple[int, int]]) -> None:
    """min <= opt <= max in batch and in sequence length."""
    (lo, opt, hi) = (shapes["--min-shape"], shapes["--opt-shape"], shapes["--max-shape"])
    for axis, name in ((0, "batch"), (1, "sequence")):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise DSEEError(
                f"the {name} sizes of --min-shape, --opt-shape, --max-shape must not decrease "
                f"({lo[axis]}, {opt[axis]}, {hi[axis]}): fix the order"
            )


def require_tensorrt():
    """The tensorrt module, or one line that says what is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise DSEEError(
            "--format tensorrt needs TensorRT's Python package and an NVIDIA GPU (tensorrt is not installed): "
            "pip install 'dsee-deploy[tensorrt]' on a CUDA machine, or export --format onnx"
        ) from exc
    return tensorrt


def build_engine(
    onnx_path: Path, plan_path: Path, shapes: dict[str, tuple[int, int]], workspace_gib: float = 4
):
    """Parse `onnx_path` into a strongly typed network (the precision is the graph's own: fp16 from an fp16
    graph, int8 from Q/DQ nodes), add one optimization profile for every [batch, seq] input, and write the
    serialized engine to `plan_path`. Returns TensorRT's version."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # no CUDA device or driver: the factory returns nullptr
        raise DSEEError(
            f"TensorRT could not start ({exc}): --format tensorrt needs an NVIDIA GPU and driver"
        ) from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DSEEError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, shapes["--min-shape"], shapes["--opt-shape"], shapes["--max-shape"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DSEEError("TensorRT could not build the engine (its log above says why)")
    plan_path.write_bytes(bytes(serialized))
    return trt.__version__
