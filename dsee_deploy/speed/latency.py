"""A latency model of the target runtime: what the engine of a layout (heads and FFN neurons kept in each layer)
costs on this machine, measured rather than counted in FLOPs (ZipLM's point: a layer's cost is not linear in its
width at small widths, and the fixed costs grow in share as the model shrinks).

It is built from engines of the model's own geometry with random weights (speed does not depend on their values),
exported, fused and quantized as dsee-export does, and timed interleaved as dsee-bench does: a table T(h, f) of
the engines in which every layer keeps h heads and f FFN neurons, over a grid of both (zero included).

Such an engine costs the fixed part C (embeddings, norms, the task head, per-run overhead) plus L times one
layer's cost c(h, f), so a layout whose layer i keeps (h_i, f_i) costs C + sum_i c(h_i, f_i) = the mean over its
layers of T(h_i, f_i): the table predicts every layout without C being known. Between grid points T is
interpolated bilinearly. A layer's cost is taken as a function of both counts, not a sum of an attention and an
FFN cost: measured on MiniLM, the sum under-predicted the speed-up of layouts without heads by up to 15 %
(benchmarks/latency). The floor of every layout is T(0, 0). Predictions are checked against exported engines
by benchmarks/latency (acceptance: within 10 %).

The grid is timed against the dense engine rather than by the clock: a group of engines (one head count, every FFN
width) runs interleaved with the dense engine for a few seconds, and each engine's cost is the median over rounds
of its time over the dense engine's in the same round, so that a machine that slows down as a whole slows both
alike. A shared machine also slows unevenly: on a 2-core AMD EPYC VM, for stretches of a few seconds to a minute,
the small engines ran 1.6x slower (the engine keeping nothing 2x) while the dense one ran 1.15x slower, so the
same layout measured 6.2x and then 4.4x (per-operator thread hand-offs, which small engines are made of, wait on
a busy host). Each point keeps its lowest figure over several passes of the grid: the machine undisturbed, since
what else runs only slows an engine. Passes are timed until that lowest figure is confirmed, every point having
a second pass within 5 % of it (at least three passes, at most six); how far the second-best pass stayed from
the best at worst is recorded with the model, and warned of when over 5 %.

The engines are built one after another onto disk, and each group's ONNX Runtime sessions are opened when it is
timed and closed after (the dense engine's stays open): memory holds one group, not the grid (BERT-base's 143
engines open at once passed 18 GB; benchmarks/latency/memory records the peaks).

Measured once per geometry, machine, runtime, precision, batch, sequence length and threads, and for every
encoder task alike (their heads cost next to nothing: measured_task), and cached as JSON under
$DSEE_DEPLOY_CACHE (default ~/.cache/dsee-deploy)/latency. A cached model is checked when it is read (its grids
those of the key's geometry, every figure a finite, positive latency, the table never falling as a count grows):
a damaged or edited file is measured again, with a warning naming it and what is wrong, so that no layout is ever
chosen from figures that cannot be right.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from ..errors import DSEEError
from .engines import measured_task
from .key import DEFAULT_SPEED, SpeedKey
from .machine import machine
from .passes import STEADY, measure
from .table import MAX_CHECKS, DamagedLatencyModel, LatencyModel, grid_fault


def cache_dir() -> Path:
    root = os.environ.get("DSEE_DEPLOY_CACHE") or Path.home() / ".cache" / "dsee-deploy"
    return Path(root) / "latency"


def latency_key(model_config, task_spec, speed: SpeedKey) -> dict:
    """Everything a latency model's figures depend on, and nothing else: change any and it is measured again.
    `speed` as measured (SpeedKey.on: its threads and sequence resolved for the model and machine)."""
    import onnxruntime

    from ..architectures import get_spec

    spec = get_spec(model_config.model_type)
    host = machine()
    return {
        "architecture": model_config.model_type,
        "num_layers": int(spec.num_layers(model_config)),
        "hidden_size": int(spec.hidden_size(model_config)),
        "num_heads": int(spec.num_heads(model_config)),
        "ffn_width": int(spec.ffn_width(model_config)),
        "vocab_size": int(model_config.vocab_size),
        "head": measured_task(task_spec).kind,  # not the label count: see measured_task
        **speed.to_dict(),
        "processor": host["processor"],
        "cpu_count": host["cpu_count"],
        "cpu_flags": host["cpu_flags"],
        "onnxruntime": onnxruntime.__version__,
    }


def latency_model(
    model_config,
    task_spec,
    speed: SpeedKey = DEFAULT_SPEED,
    *,
    cache: bool = True,
    grid: tuple[list[int], list[int]] | None = None,
    rounds: int = 5,
    log=print,
) -> LatencyModel:
    """The latency model of `model_config`'s geometry (a transformers config) for engines of `task_spec`
    (tasks.TaskSpec) at `speed`, from the cache or measured now (a few minutes for a 6-layer model, once)."""
    speed = speed.on(model_config)
    key = latency_key(model_config, task_spec, speed)
    if grid:
        _check_grid(grid, key)
        key["grid"] = [list(grid[0]), list(grid[1])]
    path = cached_path(key)
    warned: list[str] = []

    def warn(message: str) -> None:  # the file is read twice (before and after the lock): one warning
        if message not in warned:
            warned.append(message)
            log(message)

    found = _cached(path, key, warn) if cache else None
    if found:
        return found
    with _measuring(path, log) if cache else nullcontext():
        found = _cached(path, key, warn) if cache else None  # measured by the process this one waited for
        if found:
            return found
        model = _measure(model_config, task_spec, speed, key, grid, rounds, path, log)
        if cache:
            _write(path, model)
    log(model.summary())
    return model


def _check_grid(grid: tuple[list[int], list[int]], key: dict) -> None:
    for values, full, what in (
        (grid[0], key["num_heads"], "heads"),
        (grid[1], key["ffn_width"], "FFN neurons"),
    ):
        fault = grid_fault(list(values), full, what)
        if fault:
            raise DSEEError(
                f"the latency grid of {what} {list(values)} {fault}: give the counts to measure, from 0 to {full}"
            )


def _measure(model_config, task_spec, speed: SpeedKey, key: dict, grid, rounds: int, path: Path, log):
    """The latency model of `key`, measured now (the grid of engines timed against the dense one)."""
    heads_grid, ffn_grid = grid or default_grid(key["num_heads"], key["ffn_width"])
    log(
        f"measuring the latency of {len(heads_grid) * len(ffn_grid)} {speed.precision} engines of this geometry "
        f"on this machine (batch {speed.batch}, sequence {speed.seq_len}, {speed.threads} threads); cached in "
        f"{path.parent}"
    )
    measured, passes, spread = measure(model_config, task_spec, speed, heads_grid, ffn_grid, rounds)
    model = LatencyModel(
        key,
        list(heads_grid),
        list(ffn_grid),
        [[measured[(h, f)] for f in ffn_grid] for h in heads_grid],
        passes,
        round(spread, 4),
    )
    if spread > STEADY:
        log(
            f"warning: the grid's best timings did not repeat within {spread:.0%} in {passes} passes: this "
            f"machine was not steady, and predictions may be off by as much. To measure again when it is "
            f"quiet, delete {path}"
        )
    return model


def cached_path(key: dict) -> Path:
    """Where the latency model of `key` is cached: its file name is made from the key."""
    return cache_dir() / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def _write(path: Path, model: LatencyModel) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(model.to_dict(), indent=1))
    tmp.replace(path)  # a reader never sees half a file


def record_check(key: dict, predicted: float, measured: float, log=print) -> LatencyModel | None:
    """Record with the cached latency model of `key` that an engine it predicted `predicted` times faster than
    dense measured `measured` (dsee-export calls it): the layout search then aims above a target by the error
    this model has shown on this machine (pruning.search.aim_for). Returns the model recorded into, or None
    where no usable model of `key` is cached (nothing is measured for it)."""
    host = machine()
    if any(key.get(k) != host[k] for k in ("processor", "cpu_count", "cpu_flags")):
        return None  # measured on another machine than the model's: not this model's error
    path = cached_path(key)
    with _measuring(path, log):
        model = _cached(path, key, warn=lambda message: None)
        if model is None:
            return None
        check = {"predicted": round(float(predicted), 4), "measured": round(float(measured), 4)}
        model.checks = [*model.checks, check][-MAX_CHECKS:]
        _write(path, model)
    return model


def _cached(path: Path, key: dict, warn=print) -> LatencyModel | None:
    """The latency model cached at `path` for `key`, or None: none there, or one that cannot be used (truncated,
    not JSON, of another format or key, figures that cannot be right), which is measured again after a one-line
    warning naming the file and what is wrong with it."""
    if not path.is_file():
        return None
    try:
        found = LatencyModel.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        how = f"is not readable JSON ({exc})"
    except DamagedLatencyModel as exc:
        how = f"holds {exc}"
    except (TypeError, ValueError, KeyError) as exc:  # anything else a damaged file may hold
        how = f"cannot be read as a latency model ({type(exc).__name__}: {exc})"
    else:
        if found.key == key:
            return found
        how = "holds the figures of another model or machine (its key is not the one its name is made from)"
    warn(f"warning: the cached latency model {path} {how}; measuring it again")
    return None


@contextmanager
def _measuring(path: Path, log):
    """One measurement per key at a time: two tunes started together on one machine would otherwise time their
    engines against each other and cache a model of a machine under load (MiniLM on a 2-core AMD EPYC: dense
    33.9 ms against 17.7 ms alone, and other layouts chosen). The second waits and then reads the first's figures."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_suffix(".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another process is measuring this latency model ({lock.lock_file}); waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def default_grid(num_heads: int, ffn_width: int) -> tuple[list[int], list[int]]:
    """Every head count (few enough to measure each); FFN widths denser at the small end, where per-operator
    overhead bends the cost away from linear."""
    heads = (
        list(range(num_heads + 1))
        if num_heads <= 16
        else sorted(set(np.linspace(0, num_heads, 13).round().astype(int)))
    )
    fractions = [0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1]
    ffn = sorted({round(f * ffn_width) for f in fractions})
    return [int(h) for h in heads], [int(f) for f in ffn]
