"""The measured speed-up of exported engines: each timed against a dense engine of the same geometry and
precision on this machine, in confirmed passes as a latency model's grid is (dsee-export records it in the
manifest)."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from ..export.precision import quantize_int8
from .engines import _quiet_optimum, build_engine, runners_of
from .key import DEFAULT_SPEED, SpeedKey
from .passes import confirmed_passes
from .timing import interleave

# dsee-export's speed-up: each pass lasts at least this long, so that passes spread over a slow stretch of a
# shared machine (seconds) rather than fall inside one; the tests' tiny engines set it to 0
SPEEDUP_PASS_S = 4.0


def measured_speedup(
    model_config,
    task_spec,
    engines: dict,
    speed: SpeedKey = DEFAULT_SPEED,
    rounds: int = 4,
    pass_s: float | None = None,
) -> dict:
    """Each engine of `engines` ({name: path}, name ending in its precision, fp32 or int8) timed against a dense
    engine of the same geometry and precision, exported alike with random weights, all interleaved in one run,
    at `speed`'s batch, sequence, threads and provider (its precision: the one a speed target is for).
    A pass of `rounds` rounds (more where needed for it to last `pass_s` seconds, default SPEEDUP_PASS_S) gives
    each engine the median over rounds of its best time over the dense engine's; passes are timed as the latency
    model's grid is (time_grid), so the figure kept is the machine's undisturbed one, comparable with the model's
    prediction. int8 engines are also timed against dense fp32."""
    speed = speed.on(model_config)
    references = {}  # what each figure is timed against
    for name in engines:
        precision = "int8" if name.endswith("int8") else "fp32"
        references[name] = (name, f"dense {precision}")
        if precision == "int8":
            references[f"{name} against dense fp32"] = (name, "dense fp32")
    with _quiet_optimum(), tempfile.TemporaryDirectory(prefix="dsee-speedup-") as tmp:
        dense = _dense_engines(model_config, task_spec, engines, Path(tmp))
        paths = {**{k: str(v) for k, v in dense.items()}, **{k: str(v) for k, v in engines.items()}}
        runners = runners_of(
            paths,
            model_config.model_type,
            model_config.vocab_size,
            speed.batch,
            speed.seq_len,
            speed.threads,
            speed.provider,
        )
        timed = _Passes(runners, references, list(dense), rounds, pass_s)
        passes, best, spread = confirmed_passes(timed.one_pass)
    return {
        **{k: v for k, v in speed.to_dict().items() if k != "precision"},
        "rounds": timed.rounds,
        "passes": len(passes),
        "confirmed_within": round(spread, 4),
        "against": "a dense engine of the same geometry and precision (random weights, exported alike), timed "
        "interleaved in the same run; the best pass's speed-up, confirmed by a second within 5 % where the "
        "machine allowed (confirmed_within)",
        "engines": {name: timed.entry(name, best) for name in engines},
    }


def _dense_engines(model_config, task_spec, engines: dict, tmp: Path) -> dict:
    """The dense engines the named ones are timed against: fp32, and int8 where any of them is int8."""
    dense = {"dense fp32": build_engine(model_config, task_spec, None, "fp32", tmp / "dense")}
    if any(name.endswith("int8") for name in engines):
        dense["dense int8"] = tmp / "dense" / "model_int8.onnx"
        quantize_int8(dense["dense fp32"], dense["dense int8"])
    return dense


class _Passes:
    """Interleaved passes of `runners`: each pass's ratio of every engine to what it is timed against."""

    def __init__(self, runners: dict, references: dict, dense: list[str], rounds: int, pass_s: float | None):
        self.runners, self.references, self.rounds, self.pass_s = runners, references, rounds, pass_s
        self.dense_ms = {k: [] for k in dense}
        self.all_ratios = {k: [] for k in references}

    def one_pass(self, i: int) -> dict:
        started = time.perf_counter()
        timings = interleave(self.runners, rounds=self.rounds, warmup=0 if i else 2, target_block_s=0.1)
        if i == 0:  # a pass of a few engines takes a second, a slow stretch longer: passes are spread out
            wanted = SPEEDUP_PASS_S if self.pass_s is None else self.pass_s
            self.rounds = max(self.rounds, math.ceil(self.rounds * wanted / (time.perf_counter() - started)))
        ratios = {}
        for key, (name, against) in self.references.items():
            over = np.asarray(timings[name].best) / np.asarray(timings[against].best)
            ratios[key] = float(np.median(over))
            self.all_ratios[key].extend((1 / over).tolist())
        for k in self.dense_ms:
            self.dense_ms[k].append(float(np.median(timings[k].best)) * 1000)
        return ratios

    def entry(self, name: str, best: dict) -> dict:
        reference_ms = min(self.dense_ms[self.references[name][1]])
        entry = {
            "measured": round(1 / best[name], 4),
            "range": [round(min(self.all_ratios[name]), 4), round(max(self.all_ratios[name]), 4)],
            "ms": round(reference_ms * best[name], 4),
            "dense_ms": round(reference_ms, 4),
        }
        if f"{name} against dense fp32" in best:
            entry["against_dense_fp32"] = round(1 / best[f"{name} against dense fp32"], 4)
        return entry
