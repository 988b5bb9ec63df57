"""The measured speed-up of exported engines: each timed against a dense engine of the same geometry and
precision on this machine, in confirmed passes as a latency model's grid is (dsee-export records it in the
manifest)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .engines import _quiet_optimum, build_engine, runners_of
from .latency import fitting_length
from .passes import confirmed_passes

# dsee-export's speed-up: each pass lasts at least this long, so that passes spread over a slow stretch of a
# shared machine (seconds) rather than fall inside one; the tests' tiny engines set it to 0
SPEEDUP_PASS_S = 4.0


def measured_speedup(
    model_config,
    task_spec,
    engines: dict,
    batch: int = 1,
    seq_len: int = 128,
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
    rounds: int = 4,
    pass_s: float | None = None,
) -> dict:
    """Each engine of `engines` ({name: path}, name ending in its precision, fp32 or int8) timed against a dense
    engine of the same geometry and precision, exported alike with random weights, all interleaved in one run.
    A pass of `rounds` rounds (more where needed for it to last `pass_s` seconds, default SPEEDUP_PASS_S) gives
    each engine the median over rounds of its best time over the dense engine's; passes are timed as the latency
    model's grid is (time_grid), so the figure kept is the machine's undisturbed one, comparable with the model's
    prediction. int8 engines are also timed against dense fp32."""
    from ..export.precision import quantize_int8
    from .timing import interleave

    threads = threads or os.cpu_count() or 1
    seq_len = fitting_length(model_config, seq_len)
    architecture = model_config.model_type
    references = {}  # what each figure is timed against
    for name in engines:
        precision = "int8" if name.endswith("int8") else "fp32"
        references[name] = (name, f"dense {precision}")
        if precision == "int8":
            references[f"{name} against dense fp32"] = (name, "dense fp32")
    with _quiet_optimum(), tempfile.TemporaryDirectory(prefix="dsee-speedup-") as tmp:
        dense = {"dense fp32": build_engine(model_config, task_spec, None, "fp32", Path(tmp) / "dense")}
        if any(name.endswith("int8") for name in engines):
            dense["dense int8"] = Path(tmp) / "dense" / "model_int8.onnx"
            quantize_int8(dense["dense fp32"], dense["dense int8"])
        paths = {**{k: str(v) for k, v in dense.items()}, **{k: str(v) for k, v in engines.items()}}
        runners = runners_of(paths, architecture, model_config.vocab_size, batch, seq_len, threads, provider)
        dense_ms, all_ratios = {k: [] for k in dense}, {k: [] for k in references}

        def one_pass(i: int) -> dict:
            nonlocal rounds
            started = time.perf_counter()
            timings = interleave(runners, rounds=rounds, warmup=0 if i else 2, target_block_s=0.1)
            if i == 0:  # a pass of a few engines takes a second, a slow stretch longer: passes are spread out
                wanted = SPEEDUP_PASS_S if pass_s is None else pass_s
                rounds = max(rounds, math.ceil(rounds * wanted / (time.perf_counter() - started)))
            ratios = {}
            for key, (name, against) in references.items():
                over = np.asarray(timings[name].best) / np.asarray(timings[against].best)
                ratios[key] = float(np.median(over))
                all_ratios[key].extend((1 / over).tolist())
            for k in dense:
                dense_ms[k].append(float(np.median(timings[k].best)) * 1000)
            return ratios

        passes, best, spread = confirmed_passes(one_pass)
    result: dict = {}
    for name in engines:
        against = references[name][1]
        reference_ms = min(dense_ms[against])
        entry = {
            "measured": round(1 / best[name], 4),
            "range": [round(min(all_ratios[name]), 4), round(max(all_ratios[name]), 4)],
            "ms": round(reference_ms * best[name], 4),
            "dense_ms": round(reference_ms, 4),
        }
        if f"{name} against dense fp32" in best:
            entry["against_dense_fp32"] = round(1 / best[f"{name} against dense fp32"], 4)
        result[name] = entry
    return {
        "batch": batch,
        "seq_len": seq_len,
        "threads": threads,
        "provider": provider,
        "rounds": rounds,
        "passes": len(passes),
        "confirmed_within": round(spread, 4),
        "against": "a dense engine of the same geometry and precision (random weights, exported alike), timed "
        "interleaved in the same run; the best pass's speed-up, confirmed by a second within 5 % where the "
        "machine allowed (confirmed_within)",
        "engines": result,
    }
