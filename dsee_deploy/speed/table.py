"""A latency model's figures: the table T(h, f) of a geometry's uniform layouts, what it predicts for any layout,
and the checks that refuse figures that cannot be right (speed.latency measures and caches it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from ..errors import DSEEError

# 1: two one-dimensional series; 2: a table timed by the clock, one pass. What a file holds, not its key: the key
# is hashed into the file's name, so a model of another key (3's num_labels, now its head) is another file.
FORMAT_VERSION = 3
MAX_CHECKS = 20  # the checks a model keeps, the latest: a machine's state drifts
NEAR = 0.25  # checks predicted within 25 % of a target (in ratio) speak for it


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
    # Exported engines checked against it by dsee-export ({"predicted", "measured"} speed-ups, the latest last,
    # at most MAX_CHECKS): how far this model's predictions are from what engines do on its machine.
    checks: list[dict] = field(default_factory=list)

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
            "checks": self.checks,
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
        missing = sorted(n for n in names - set(data) if n not in ("passes", "spread", "checks"))
        if missing or set(data) - names:
            raise DamagedLatencyModel(f"fields {sorted(data)}, where a latency model has {sorted(names)}")
        if not isinstance(data["key"], dict):
            raise DamagedLatencyModel(f"a key {data['key']!r} that is not an object")
        fault = figures_fault(data["key"], data["head_grid"], data["ffn_grid"], data["table_ms"], saved=True)
        if fault:  # checked before __post_init__ smooths the table, which would hide a falling one
            raise DamagedLatencyModel(fault)
        checks = data.get("checks", [])
        if not isinstance(checks, list) or not all(_is_check(c) for c in checks):
            raise DamagedLatencyModel(f"checks {checks!r}: each a {{predicted, measured}} pair of speed-ups")
        return cls(**data)

    def over_prediction(self, near: float | None = None) -> float | None:
        """How far above the measured speed-up of an exported engine this model's prediction was (0.09: predicted
        9 % too fast; an under-prediction counts as 0), None before any check: at worst over the checked engines
        predicted within NEAR of `near` (in ratio: the error grows with the speed-up, 12 % at 2x and 26 % at 5x on
        one BERT-base model), or over the one nearest it where none is that near; at worst over all checks
        without `near`."""
        if not self.checks:
            return None
        checks = self.checks
        if near is not None:
            distance = {id(c): abs(math.log(c["predicted"] / near)) for c in checks}
            close = [c for c in checks if distance[id(c)] <= math.log(1 + NEAR)]
            checks = close or [min(checks, key=lambda c: distance[id(c)])]
        return max(0.0, max(c["predicted"] / c["measured"] - 1 for c in checks))


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


def _is_check(check) -> bool:
    return (
        isinstance(check, dict)
        and all(isinstance(check.get(k), int | float) for k in ("predicted", "measured"))
        and all(math.isfinite(check[k]) and check[k] > 0 for k in ("predicted", "measured"))
    )
