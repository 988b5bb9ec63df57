"""ONNX Runtime sessions, made in one place: providers best first, intra-op threads, and how long idle threads
spin. Every `InferenceSession` of the toolkit is constructed by `make_session`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("dsee_deploy.runtime")

# Best first, among those onnxruntime has; CPU is always last, for the nodes the others do not take.
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"
# session.intra_op.spin_duration_us came with onnxruntime PR #27916 (April 2026); this is the first release we
# ran it on. Older releases accept the key without a word and spin as long as they always did.
BOUNDED_SPIN_SINCE = (1, 31)


_threads: int | None = None  # intra-op threads of sessions made without `threads` (use_threads)


def use_threads(threads: int | None) -> None:
    """How many CPU threads this process computes with (None or 0: all cores, the libraries' default): the
    intra-op threads of every ONNX Runtime session made without `threads`, and PyTorch's, where it is installed.
    What dsee-tune's and dsee-export's --threads set, so that jobs can share a machine without OMP_NUM_THREADS."""
    global _threads
    _threads = threads or None
    if threads:
        try:
            import torch
        except ImportError:  # an engine-only install computes with ONNX Runtime alone
            return
        torch.set_num_threads(threads)


def make_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    spin_us: int | None = None,
    sequential: bool = False,
    profile_prefix: str | None = None,
):
    """An InferenceSession on `path`.

    `threads`: intra-op threads (ORT's choice, one per physical core, when None). `providers`: the execution
    providers to try, CPU appended as the fallback; None picks the best onnxruntime has (TensorRT, CUDA, CPU).
    `spin_us`: how long idle intra-op threads busy-wait for work (ORT's unbounded default when None; 0 never).
    `sequential`: one inter-op thread that never spins, as a benchmark wants, so that a session that just ran
    leaves the cores to the next one. `profile_prefix`: write ORT's profile there.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT warns about node placement on every GPU load: noise to users
    threads = threads or _threads
    if threads:
        options.intra_op_num_threads = threads
    if spin_us is not None:
        set_spin(options, spin_us)
    if sequential:
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    chosen = (
        [p for p in providers if p != "-"] if providers else pick_providers(ort.get_available_providers())
    )
    if CPU not in chosen:
        chosen.append(CPU)
    return ort.InferenceSession(str(path), options, providers=[_with_options(p) for p in chosen])


def pick_providers(available: Sequence[str]) -> list[str]:
    return [p for p in PROVIDERS if p in available] or [CPU]


def spin_in_force(spin_us: int) -> int:
    """The spin bound this onnxruntime can honour for a requested `spin_us`: 0 (no spinning) where it cannot
    bound the spin at all, since its unbounded default would take the cores of whatever runs next."""
    import onnxruntime as ort

    version = tuple(int(x) for x in ort.__version__.split(".")[:2] if x.isdigit())
    if spin_us and version < BOUNDED_SPIN_SINCE:
        log.warning(
            "onnxruntime %s cannot bound its threads' spin (%d.%d can): they will not spin at all; "
            "pip install -U onnxruntime for the bounded spin",
            ort.__version__,
            *BOUNDED_SPIN_SINCE,
        )
        return 0
    return spin_us


def set_spin(options, spin_us: int) -> int:
    """Let the intra-op threads of `options`' session busy-wait at most `spin_us` microseconds for work (0:
    never); returns the bound in force (see spin_in_force)."""
    spin_us = spin_in_force(spin_us)
    if spin_us == 0:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return spin_us


def _with_options(provider: str):
    if provider != "TensorrtExecutionProvider":
        return provider
    # TensorRT builds an engine per input shape profile: keep them between runs and processes.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dsee-deploy" / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    return provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
