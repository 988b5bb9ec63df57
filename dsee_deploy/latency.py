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

import gc
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .errors import DSEEError

# 1: two one-dimensional series; 2: a table timed by the clock, one pass. What a file holds, not its key: the key
# is hashed into the file's name, so a model of another key (3's num_labels, now its head) is another file.
FORMAT_VERSION = 3
PRECISIONS = ("fp32", "int8")
STEADY = 0.05  # a point's lowest figure is confirmed by a second pass this close to it
MIN_PASSES, MAX_PASSES = 3, 6
# dsee-export's speed-up: each pass lasts at least this long, so that passes spread over a slow stretch of a
# shared machine (seconds) rather than fall inside one; the tests' tiny engines set it to 0
SPEEDUP_PASS_S = 4.0


class DamagedLatencyModel(DSEEError, ValueError):
    """Latency figures that cannot be right: a damaged or edited cache file (measured again), or a bug."""


@dataclass
class LatencyModel:
    key: dict  # what it holds for: architecture, geometry, precision, batch, sequence, threads, machine, runtime
    head_grid: list[int]  # heads kept in every layer
    ffn_grid: list[int]  # FFN neurons kept in every layer
    table_ms: list[list[float]]  # latency of the engine keeping (head_grid[i], ffn_grid[j]) in every layer
    passes: int = 1  # passes of the grid timed
    spread: float = 0.0  # at worst over the grid, how far a point's second-best pass was from its best

    def __post_init__(self) -> None:
        fault = figures_fault(self.key, self.head_grid, self.ffn_grid, self.table_ms, saved=False)
        if fault:
            raise DamagedLatencyModel(f"latency model figures refused: {fault}")
        # Timing noise can make a wider layer look cheaper than a narrower one; a cost that falls as width grows
        # would mislead the search, so the table is made non-decreasing along both axes (running maxima).
        table = np.asarray(self.table_ms, dtype=float)
        table = np.maximum.accumulate(np.maximum.accumulate(table, axis=0), axis=1)
        self.table_ms = table.tolist()
        self._table = table

    @property
    def num_layers(self) -> int:
        return int(self.key["num_layers"])

    @property
    def dense_ms(self) -> float:
        return float(self._table[-1, -1])

    def uniform_ms(self, heads, ffn) -> np.ndarray:
        """T(h, f), bilinear between grid points: the engine keeping `heads` and `ffn` in every layer
        (broadcasting arrays)."""
        h = np.clip(np.asarray(heads, dtype=float), self.head_grid[0], self.head_grid[-1])
        f = np.clip(np.asarray(ffn, dtype=float), self.ffn_grid[0], self.ffn_grid[-1])
        hg, fg = np.asarray(self.head_grid, dtype=float), np.asarray(self.ffn_grid, dtype=float)
        i = np.clip(np.searchsorted(hg, h, side="right") - 1, 0, len(hg) - 2)
        j = np.clip(np.searchsorted(fg, f, side="right") - 1, 0, len(fg) - 2)
        u = (h - hg[i]) / (hg[i + 1] - hg[i])
        v = (f - fg[j]) / (fg[j + 1] - fg[j])
        t = self._table
        return (
            (1 - u) * (1 - v) * t[i, j]
            + u * (1 - v) * t[i + 1, j]
            + (1 - u) * v * t[i, j + 1]
            + u * v * t[i + 1, j + 1]
        )

    def predict_ms(self, heads: list[int], ffn: list[int]) -> float:
        """Predicted latency of an engine keeping heads[i] heads and ffn[i] FFN neurons in layer i."""
        if len(heads) != self.num_layers or len(ffn) != self.num_layers:
            raise DSEEError(
                f"a layout of {len(heads)} layers does not fit this latency model of {self.num_layers} layers"
            )
        return self._checked(float(self.uniform_ms(heads, ffn).mean()), heads, ffn)

    def speedup(self, heads: list[int], ffn: list[int]) -> float:
        return self.dense_ms / self.predict_ms(heads, ffn)

    def floor_ms(self, min_heads: int = 0, min_ffn: int = 0) -> float:
        """The fastest layout's latency: every layer keeping only what it must."""
        return self._checked(float(self.uniform_ms(min_heads, min_ffn)), min_heads, min_ffn)

    def _checked(self, ms: float, heads, ffn) -> float:
        """`ms`, refused unless a finite, positive latency: no speed-up is ever printed or acted on from one
        that is not (the table is checked when built; this catches a layout of counts that are not numbers)."""
        if not (math.isfinite(ms) and ms > 0):
            raise DSEEError(
                f"the latency model predicts {ms} ms for {heads} heads and {ffn} FFN neurons kept, not a finite "
                f"positive latency, so no speed-up can be claimed: the counts must be numbers of heads and neurons"
            )
        return ms

    def summary(self) -> str:
        k = self.key
        return (
            f"{k['architecture']} {k['num_layers']} layers, {k['precision']}, batch {k['batch']}, sequence "
            f"{k['seq_len']}, {k['threads']} threads: dense {self.dense_ms:.2f} ms, nothing kept "
            f"{self.floor_ms():.2f} ms (at most {self.dense_ms / self.floor_ms():.1f}x)"
        )

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "head_grid": self.head_grid,
            "ffn_grid": self.ffn_grid,
            "table_ms": self.table_ms,
            "passes": self.passes,
            "spread": self.spread,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyModel:
        """The model saved by to_dict; DamagedLatencyModel, saying what is wrong, where `data` cannot be one."""
        if not isinstance(data, dict):
            raise DamagedLatencyModel(f"a JSON {type(data).__name__}, not an object")
        data = dict(data)
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise DamagedLatencyModel(
                f"format version {version}, where this dsee-deploy reads {FORMAT_VERSION}"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(data) if n not in ("passes", "spread"))
        if missing or set(data) - names:
            raise DamagedLatencyModel(f"fields {sorted(data)}, where a latency model has {sorted(names)}")
        if not isinstance(data["key"], dict):
            raise DamagedLatencyModel(f"a key {data['key']!r} that is not an object")
        fault = figures_fault(data["key"], data["head_grid"], data["ffn_grid"], data["table_ms"], saved=True)
        if fault:  # checked before __post_init__ smooths the table, which would hide a falling one
            raise DamagedLatencyModel(fault)
        return cls(**data)


def figures_fault(key: dict, head_grid, ffn_grid, table_ms, saved: bool) -> str | None:
    """What makes these figures impossible for a latency model of `key`, or None. The grids must rise from 0 to
    the key's full head count and FFN width (the grid it names, where it names one), the table be head_grid by
    ffn_grid of finite, positive latencies. A `saved` table must also never fall as a count grows: a measured
    one may (timing noise, which __post_init__ smooths away before it is saved), so in a file one that falls
    was altered after it was written."""
    named = key.get("grid")
    named = named if isinstance(named, list) and len(named) == 2 else [None, None]
    for name, grid, full, what, wanted in (
        ("head_grid", head_grid, key.get("num_heads"), "heads", named[0]),
        ("ffn_grid", ffn_grid, key.get("ffn_width"), "FFN neurons", named[1]),
    ):
        fault = grid_fault(grid, full, what)
        if fault:
            return f"{name} {grid!r}, which {fault}"
        if wanted is not None and list(grid) != list(wanted):
            return f"{name} {grid}, where the key names {wanted}"
    try:
        table = np.asarray(table_ms, dtype=float)  # (heads, ffn)
    except (TypeError, ValueError):
        return "a table_ms that is not a table of numbers"
    if table.shape != (len(head_grid), len(ffn_grid)):
        shape = " x ".join(str(n) for n in table.shape)
        return f"a table_ms of shape {shape}, not head_grid by ffn_grid ({len(head_grid)} x {len(ffn_grid)})"
    for bad, what in (
        (~np.isfinite(table), "not a finite latency"),
        (~(table > 0), "not a positive latency"),
    ):
        if bad.any():
            i, j = np.argwhere(bad)[0]
            return (
                f"{table[i, j]} ms in table_ms for {head_grid[i]} heads and {ffn_grid[j]} FFN neurons, {what} "
                f"({int(bad.sum())} such of {table.size})"
            )
    if saved:
        for axis, name in ((0, "heads"), (1, "FFN neurons")):
            falls = np.argwhere(np.diff(table, axis=axis) < 0)
            if len(falls):
                i, j = falls[0]
                nxt = (i + 1, j) if axis == 0 else (i, j + 1)
                return (
                    f"a table_ms that falls from {table[i, j]} to {table[nxt]} ms as {name} grow from "
                    f"{head_grid[i] if axis == 0 else ffn_grid[j]} to "
                    f"{head_grid[i + 1] if axis == 0 else ffn_grid[j + 1]}, which a saved table never does"
                )
    return None


def grid_fault(grid, full: int | None, what: str) -> str | None:
    """What makes `grid` no grid of counts from 0 to `full` (None: any end), or None."""
    if not isinstance(grid, (list, tuple)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in grid
    ):
        return "is not a list of whole numbers"
    if len(grid) < 2:
        return "has fewer than 2 counts to interpolate between"
    if grid[0] != 0:
        return f"does not start at 0 {what}"
    if any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        return "does not rise strictly"
    if full is not None and grid[-1] != full:
        return f"ends at {grid[-1]} {what}, not at the model's {full}"
    return None


def cache_dir() -> Path:
    root = os.environ.get("DSEE_DEPLOY_CACHE") or Path.home() / ".cache" / "dsee-deploy"
    return Path(root) / "latency"


def measured_task(task_spec):
    """The task whose engines a latency model of `task_spec` times. An encoder's task head (a classifier, a
    regressor, a sentence embedding's pooling) is one small matrix over one pooled vector, a fraction of a per
    cent of the encoder's cost, so every encoder task is timed with the classification head and shares one
    model; a language model's head is a hidden x vocabulary matrix at every position, a large share of its cost,
    so it is timed with it."""
    from .tasks import Classification, get_task

    return task_spec if task_spec.language_model else get_task(Classification.kind)


def latency_key(
    model_config, task_spec, precision: str, batch: int, seq_len: int, threads: int, provider: str
) -> dict:
    """Everything a latency model's figures depend on, and nothing else: change any and it is measured again."""
    import onnxruntime

    from .architectures import get_spec
    from .bench.harness import machine

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
        "precision": precision,
        "batch": int(batch),
        "seq_len": int(seq_len),
        "threads": int(threads),
        "provider": provider,
        "processor": host["processor"],
        "cpu_count": host["cpu_count"],
        "cpu_flags": host["cpu_flags"],
        "onnxruntime": onnxruntime.__version__,
    }


def latency_model(
    model_config,
    task_spec,
    precision: str = "fp32",
    batch: int = 1,
    seq_len: int = 128,
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
    *,
    cache: bool = True,
    grid: tuple[list[int], list[int]] | None = None,
    rounds: int = 5,
    log=print,
) -> LatencyModel:
    """The latency model of `model_config`'s geometry (a transformers config) for engines of `task_spec`
    (tasks.TaskSpec), from the cache or measured now (a few minutes for a 6-layer model, once)."""
    if precision not in PRECISIONS:
        raise DSEEError(f"latency precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    threads = threads or os.cpu_count() or 1
    seq_len = fitting_length(model_config, seq_len)
    key = latency_key(model_config, task_spec, precision, batch, seq_len, threads, provider)
    if grid:
        for values, full, what in (
            (grid[0], key["num_heads"], "heads"),
            (grid[1], key["ffn_width"], "FFN neurons"),
        ):
            fault = grid_fault(list(values), full, what)
            if fault:
                raise DSEEError(
                    f"the latency grid of {what} {list(values)} {fault}: give the counts to measure, "
                    f"from 0 to {full}"
                )
        key["grid"] = [list(grid[0]), list(grid[1])]
    path = cache_dir() / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"
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
        heads_grid, ffn_grid = grid or default_grid(key["num_heads"], key["ffn_width"])
        log(
            f"measuring the latency of {len(heads_grid) * len(ffn_grid)} {precision} engines of this geometry "
            f"on this machine (batch {batch}, sequence {seq_len}, {threads} threads); cached in {path.parent}"
        )
        measured, passes, spread = measure(
            model_config,
            task_spec,
            precision,
            batch,
            seq_len,
            threads,
            provider,
            heads_grid,
            ffn_grid,
            rounds,
        )
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
        if cache:
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(model.to_dict(), indent=1))
            tmp.replace(path)  # a reader never sees half a file
    log(model.summary())
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


@contextmanager
def _quiet_optimum():
    """optimum warns about the opset on every export; these exports are ours, and many."""
    quiet = logging.getLogger("optimum")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def fitting_length(model_config, seq_len: int) -> int:
    """`seq_len`, or the model's longest input where that is shorter (a speed target at 128 tokens of a model
    with 64 positions is one at 64)."""
    from .architectures import get_spec

    return min(int(seq_len), get_spec(model_config.model_type).max_tokens(model_config))


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


def uniform_layout(num_layers: int, heads: int, ffn: int) -> list[dict]:
    return [{"kept_heads": list(range(heads)), "kept_ffn": list(range(ffn))} for _ in range(num_layers)]


def build_engine(
    model_config, task_spec, layout: list[dict] | None, precision: str, out: Path, seed: int = 0
) -> Path:
    """An engine of `model_config`'s geometry pruned to `layout` (None: dense), with random weights, exported,
    fused and (int8) quantized as dsee-export makes them, with the head of measured_task(task_spec). Returns the
    .onnx path."""
    import torch

    from .architectures import get_spec
    from .bench.synthetic import _tokenizer
    from .export.config import ExportConfig
    from .export.onnx import export_onnx
    from .export.optimize import optimize_for_cpu
    from .export.precision import quantize_int8
    from .surgery import apply_structure

    spec = get_spec(model_config.model_type)
    task_spec = measured_task(task_spec)
    model_config = model_config.__class__.from_dict(model_config.to_dict())
    model_config.pruned_heads = {}  # a pruned model's config lists its pruned heads; from_config would prune them
    if not task_spec.language_model:  # one engine for every encoder task: the same head whatever the labels
        model_config.num_labels, model_config.problem_type = 2, None
    torch.manual_seed(seed)
    model = task_spec.model_class().from_config(model_config).eval()
    with torch.no_grad():
        for p in model.parameters():  # distinct tensors, as trained weights are (see bench.synthetic)
            p.add_(0.02 * torch.randn(p.shape))
    if layout is not None:
        apply_structure(model, layout, spec)
    out.mkdir(parents=True, exist_ok=True)
    graph = export_onnx(model, _tokenizer(), task_spec, out, ExportConfig().opset)  # dsee-export's opset
    del model
    optimize_for_cpu(graph, spec.ort_model_type, fuse_skip_layernorm=False)
    # onnxruntime.transformers' optimizer leaves its graph behind in reference cycles (the model and its fusions
    # point at each other; four copies of the ModelProto, 68 MB each for MiniLM, 440 MB for BERT-base). Python's
    # cycle collector counts objects, not bytes, so with transformers loaded its full collection comes seldom:
    # building a grid's engines one after another, each left up to 2 GB (BERT-base) until then, and resident
    # memory grew by 120-350 MB per engine (benchmarks/latency/memory). Collected here, it stays flat.
    gc.collect()
    if precision == "int8":
        quantized = out / "model_int8.onnx"
        quantize_int8(graph, quantized)
        gc.collect()
        return quantized
    return graph


class Runner:
    """One inference of an engine on a fixed input, as dsee-bench runs it; `session` is its ORT session, closed
    when the last reference to it goes."""

    def __init__(self, session, feeds: dict) -> None:
        self.session, self.feeds = session, feeds

    def __call__(self):
        return self.session.run(None, self.feeds)


def runners_of(
    paths: dict, architecture: str, vocab_size: int, batch: int, seq_len: int, threads: int, provider: str
) -> dict[str, Runner]:
    """A runner of each engine of `paths` ({name: .onnx path}), every one on the same input (token ids from a
    fixed seed), in the order of `paths`."""
    from .architectures import get_spec
    from .runtime import make_session

    vocab = int(vocab_size)
    ids = np.random.default_rng(0).integers(
        min(5, vocab - 1), min(1000, vocab), size=(batch, seq_len), dtype=np.int64
    )  # (batch, seq_len)
    runners = {}
    for name, path in paths.items():
        session = make_session(path, threads=threads, providers=[provider], spin_us=100, sequential=True)
        names = [i.name for i in session.get_inputs()]
        runners[name] = Runner(session, get_spec(architecture).feeds(names, ids, np.ones_like(ids)))
    return runners


def held(runners: dict):
    """A group opener (see relative_pass) over runners already open: for a few engines, or callables."""
    return lambda names: nullcontext({name: runners[name] for name in names})


@contextmanager
def group_sessions(paths: dict, kept, *session_args):
    """A group opener (see relative_pass) over the engines of `paths`, which opens a group's sessions when it is
    timed and closes them after, so that only one group is in memory at a time rather than the grid (MiniLM's 143
    engines open together took 14 GB, BERT-base's would take over 24 GB). The engine `kept` (the dense one, in
    every group) stays open throughout. `session_args`: runners_of's after `paths`."""
    held_open = runners_of({kept: paths[kept]}, *session_args)

    @contextmanager
    def open_group(names: list):
        group = runners_of({n: paths[n] for n in names if n not in held_open}, *session_args)
        group = {n: held_open[n] if n in held_open else group[n] for n in names}
        try:
            yield group
        finally:
            group.clear()  # the caller's name for the group stays bound after its `with`: this closes them

    try:
        yield open_group
    finally:
        held_open.clear()


def relative_pass(runners, dense, groups: list[list], rounds: int, opened=None) -> tuple[dict, list[float]]:
    """One pass over the grid: each group timed interleaved with the dense engine; an engine's figure is the
    median over rounds of its best time over the dense engine's best in the same round. Returns those ratios and
    the dense engine's best times (s).

    `runners`: {name: runner} of every engine, or a group opener: called with a group's names (dense first), a
    context manager giving {name: runner} for them while it is open (group_sessions). `opened`: called with
    those runners as each group is opened."""
    from .bench.timing import interleave

    open_group = runners if callable(runners) else held(runners)
    ratios, dense_best = {dense: 1.0}, []
    for group in groups:
        with open_group([dense, *[g for g in group if g != dense]]) as group_runners:
            if opened:
                opened(group_runners)
            timings = interleave(group_runners, rounds=rounds, warmup=1, target_block_s=0.1)
        reference = np.asarray(timings[dense].best)
        dense_best.extend(timings[dense].best)
        for name in group:
            if name != dense:
                ratios[name] = float(np.median(np.asarray(timings[name].best) / reference))
    return ratios, dense_best


def steady_ratios(passes: list[dict]) -> tuple[dict, float]:
    """Each engine's lowest ratio over the passes (the machine undisturbed: what else runs only slows an engine),
    and how far from it, at worst over the engines, the second-lowest pass was (relative; infinite for a single
    pass: nothing confirms it)."""
    names = list(passes[0])
    combined = {n: float(min(p[n] for p in passes)) for n in names}
    if len(passes) < 2:
        return combined, float("inf")
    spread = max(sorted(p[n] for p in passes)[1] / combined[n] - 1 for n in names)
    return combined, float(spread)


def confirmed_passes(
    one_pass, least: int = MIN_PASSES, most: int = MAX_PASSES, progress=None
) -> tuple[list[dict], dict, float]:
    """Calls one_pass(i) (a pass's time ratios, {name: engine over its reference}) at least `least` times, then
    until every engine's lowest ratio is confirmed by a second pass within STEADY, at most `most` times; after each
    pass, progress(passes so far, spread). Returns every pass's ratios, the lowest and the spread
    (steady_ratios)."""
    timed, lowest, spread = [], {}, float("inf")
    while len(timed) < least or (spread > STEADY and len(timed) < most):
        timed.append(one_pass(len(timed)))
        lowest, spread = steady_ratios(timed)
        if progress:
            progress(len(timed), spread)
    return timed, lowest, spread


def time_grid(
    runners,
    dense,
    groups: list[list],
    rounds: int,
    progress=None,
    passes: tuple[int, int] = (MIN_PASSES, MAX_PASSES),
    opened=None,
) -> tuple[dict, list[dict], float]:
    """Latency (ms) of every engine of `groups`, timed against `dense` in confirmed passes (confirmed_passes,
    at least passes[0], at most passes[1]), the groups in reverse order every other pass so that no group always
    runs at the same moment of a pass. An engine's latency is its lowest ratio times the dense engine's lowest
    median time of a pass. `runners` and `opened`: relative_pass's. Returns the latencies, each pass's ratios
    and the spread (steady_ratios)."""
    dense_best = []

    def one_pass(i: int) -> dict:
        order = groups if i % 2 == 0 else groups[::-1]
        ratios, best = relative_pass(runners, dense, order, rounds, opened)
        dense_best.append(float(np.median(best)))
        return ratios

    timed, lowest, spread = confirmed_passes(one_pass, *passes, progress=progress)
    dense_ms = min(dense_best) * 1000  # the dense engine undisturbed, as its ratios are
    return {name: ratio * dense_ms for name, ratio in lowest.items()}, timed, spread


def measure(
    model_config,
    task_spec,
    precision,
    batch,
    seq_len,
    threads,
    provider,
    heads_grid,
    ffn_grid,
    rounds,
    *,
    opened=None,
) -> tuple[dict, int, float]:
    """Latency (ms) of the uniform layouts (h heads and f neurons in every layer) of the grid, the passes timed
    and their spread (time_grid). `opened`: called with each group's runners as its sessions are opened."""
    shapes = [(h, f) for h in heads_grid for f in ffn_grid]
    with _quiet_optimum():
        return _measure(
            model_config, task_spec, precision, batch, seq_len, threads, provider, rounds, shapes, opened
        )


def _measure(model_config, task_spec, precision, batch, seq_len, threads, provider, rounds, shapes, opened):
    from tqdm.auto import tqdm

    from .architectures import get_spec

    spec = get_spec(model_config.model_type)
    n_layers, n_heads, width = (
        spec.num_layers(model_config),
        spec.num_heads(model_config),
        spec.ffn_width(model_config),
    )
    dense = (n_heads, width)
    with tempfile.TemporaryDirectory(prefix="dsee-latency-") as tmp:
        # Every engine is built first and kept on disk, then the passes open one group at a time: what is timed
        # is what it was when every session stayed open (the grid in passes, each group against the dense
        # engine), at the cost of opening each group's sessions again in every pass.
        paths = {}
        for h, f in tqdm(shapes, desc="latency model: building engines", leave=False):
            layout = None if (h, f) == dense else uniform_layout(n_layers, h, f)
            paths[(h, f)] = str(
                build_engine(model_config, task_spec, layout, precision, Path(tmp) / f"h{h}-f{f}")
            )
        if dense not in paths:
            paths[dense] = str(build_engine(model_config, task_spec, None, precision, Path(tmp) / "dense"))
        heads = sorted({h for h, _ in shapes})
        groups = [[s for s in shapes if s[0] == h] for h in heads]  # one head count, every FFN width
        bar = tqdm(total=MIN_PASSES, desc="latency model: timing passes", leave=False)

        def progress(done, spread):
            if done >= MIN_PASSES and spread > STEADY and done < MAX_PASSES:
                bar.total = done + 1  # another pass
            bar.update(1)
            bar.set_postfix_str(f"best figures confirmed within {spread:.1%}")

        session_args = (model_config.model_type, model_config.vocab_size, batch, seq_len, threads, provider)
        try:
            with group_sessions(paths, dense, *session_args) as open_group:
                measured, timed, spread = time_grid(
                    open_group, dense, groups, rounds, progress, opened=opened
                )
            return measured, len(timed), spread
        finally:
            bar.close()


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
    from .bench.timing import interleave
    from .export.precision import quantize_int8

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
