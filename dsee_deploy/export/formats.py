"""What differs between engine formats and precisions, as small registered handlers: the export pipeline asks
the handler of the config's format and precision, never tests their names."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DSEEError

FORMATS: dict[str, EngineFormat] = {}
PRECISIONS: dict[str, Precision] = {}
# A Triton model name is one path component: a repository entry, never a path out of it.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _register(table: dict):
    def add(cls):
        table[cls.name] = cls()
        return cls

    return add


class EngineFormat:
    name = ""
    optimizes = True  # ONNX Runtime's fusions apply (TensorRT fuses on its own)

    def check(self, config) -> None:
        """Refuse options this format cannot honour, before anything slow."""

    def target(self, output: Path, config, source: Path) -> Path:
        """The directory the engine is written to."""
        return output

    def finish(self, graph: Path, out: Path, config, manifest) -> None:
        """Turn the validated ONNX graph in `out` into this format's engine; records into `manifest`."""


@_register(FORMATS)
class Onnx(EngineFormat):
    name = "onnx"


@_register(FORMATS)
class TensorRT(EngineFormat):
    name = "tensorrt"
    optimizes = False

    def check(self, config) -> None:
        from .tensorrt import check_profile, require_tensorrt

        if config.quantize:
            raise DSEEError(
                "--format tensorrt with --quantize int8 needs Q/DQ nodes from calibration, which this version "
                "does not make: use --fp16 for TensorRT, or --format onnx --quantize int8 for CPU"
            )
        check_profile(config.shapes())
        require_tensorrt()

    def finish(self, graph: Path, out: Path, config, manifest) -> None:
        from .tensorrt import build_engine

        shapes = config.shapes()
        version = build_engine(graph, out / "model.plan", shapes)
        manifest.engine = "model.plan"
        manifest.tensorrt = {
            "version": version,
            "profile": {flag[2:]: list(shape) for flag, shape in shapes.items()},
        }


@_register(FORMATS)
class Triton(EngineFormat):
    name = "triton"

    def target(self, output: Path, config, source: Path) -> Path:
        name = self.model_name(config, source)
        if not _SAFE_NAME.match(name):
            raise DSEEError(
                f"--name '{name}' is not a model name: Triton names one folder of the repository; use letters, "
                f"digits, '_', '-' and '.', starting with a letter or digit"
            )
        return output / name

    @staticmethod
    def model_name(config, source: Path) -> str:
        return config.name or Path(source).resolve().name

    def finish(self, graph: Path, out: Path, config, manifest) -> None:
        from .triton import write_config

        (out / "1").mkdir()
        graph.replace(out / "1" / "model.onnx")
        cpu_only = PRECISIONS[manifest.precision].cpu_only
        name = self.model_name(config, Path(manifest.source))
        write_config(out, name, config.max_batch_size, config.max_queue_delay_us, cpu_only=cpu_only)
        manifest.engine = "1/model.onnx"
        manifest.triton = {
            "max_batch_size": config.max_batch_size,
            "max_queue_delay_us": config.max_queue_delay_us,
        }


class Precision:
    name = ""
    reduced = True  # made from the validated fp32 graph, judged by agreement and the task metric
    cpu_only = False  # its kernels run on CPU only (Triton's instance group says so)
    bytes_per_weight = 4.0  # the engine's size on disk, per parameter (what a full disk is told it needs)

    def convert(self, fp32: Path, out: Path) -> dict | None:
        """Write the graph at `out` from the fp32 one; returns what the manifest records as `quantization`."""
        raise NotImplementedError


@_register(PRECISIONS)
class Fp32(Precision):
    name = "fp32"
    reduced = False


@_register(PRECISIONS)
class Int8(Precision):
    name = "int8"
    bytes_per_weight = 1.0
    cpu_only = True  # QAttention, DynamicQuantizeMatMul

    def convert(self, fp32: Path, out: Path) -> dict:
        from .precision import quantize_int8

        return quantize_int8(fp32, out)


@_register(PRECISIONS)
class Int4(Precision):
    name = "int4"
    bytes_per_weight = 0.5
    cpu_only = True  # validated on ONNX Runtime's CPU MatMulNBits kernel only

    def convert(self, fp32: Path, out: Path) -> dict:
        from .precision import quantize_int4

        return quantize_int4(fp32, out)


@_register(PRECISIONS)
class Fp16(Precision):
    name = "fp16"
    bytes_per_weight = 2.0

    def convert(self, fp32: Path, out: Path) -> None:
        from .precision import convert_fp16

        convert_fp16(fp32, out)
