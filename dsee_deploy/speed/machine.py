"""What a figure was measured on: the platform, the CPU's model name and SIMD flags, and the runtimes' versions
(recorded beside every timing; a latency model is keyed by them)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
from pathlib import Path

SIMD = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "neon", "asimd")


def machine() -> dict:
    """The platform, the CPU's model name and its SIMD flags (from /proc/cpuinfo where there is one)."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((set(line.split()) for line in lines if line.startswith(("flags", "Features"))), set())
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return {
        "platform": platform.platform(),
        "processor": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": [f for f in SIMD if f in flags],
        "python": platform.python_version(),
    }


def versions() -> dict:
    import numpy
    import onnxruntime

    out = {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    if importlib.util.find_spec("torch") is not None:
        import torch

        out["torch"] = torch.__version__
    return out
