"""Where an ONNX Runtime engine spends its time: ONNX Runtime's own profiler, summed per operator type."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..runtime import make_session

WARMUP = 3


def profile(path: str, feeds: dict[str, np.ndarray], threads: int, spin_us: int, runs: int = 20) -> dict:
    """Milliseconds per run for each operator type (and their share), over `runs` runs after a warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(
            path,
            threads=threads,
            providers=["CPUExecutionProvider"],
            spin_us=spin_us,
            profile_prefix=str(Path(tmp) / "profile"),
        )
        inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
        for _ in range(WARMUP + runs):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    # Only the timed runs: the warm-up includes one-time costs (allocations, first touches of the weights).
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first = starts[WARMUP] if len(starts) > WARMUP else 0
    events = [e for e in events if e.get("ts", 0) >= first]
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    total = sum(per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])
    return {
        "runs": runs,
        "kernel_ms_per_run": total,
        "ops": [{"op": op, "ms": ms, "share": ms / total} for op, ms in ranked],
    }
