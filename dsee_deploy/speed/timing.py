"""Interleaved timing. Every variant runs the same inputs; in each round every variant runs a block of the same
number of runs and keeps its best time, the order rotating from round to round, so that machine noise hits all
variants alike.
A speed-up is the median over rounds of the ratio of two variants' best times in the same round."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timing:
    """All run times (s) of one variant at one shape, and its best time in each round."""

    runs: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)

    def summary(self, batch: int) -> dict:
        runs = np.asarray(self.runs) * 1000
        p50 = float(np.percentile(runs, 50))
        return {
            "p50_ms": p50,
            "p90_ms": float(np.percentile(runs, 90)),
            "p99_ms": float(np.percentile(runs, 99)),
            "best_ms": float(runs.min()),
            "runs": len(runs),
            "throughput": batch / p50 * 1000,  # sequences per second at the median latency
            "round_best_ms": [b * 1000 for b in self.best],
        }


def block_size(runners: dict[str, Callable[[], None]], target_s: float) -> int:
    """Runs per block, the same for every variant (a best of 17 against a best of 1 would favour the fast
    ones): enough for the slowest variant's block to last about `target_s`, between 3 and 50."""
    slowest = 0.0
    for run in runners.values():
        started = time.perf_counter()
        run()
        slowest = max(slowest, time.perf_counter() - started)
    return max(3, min(50, round(target_s / max(slowest, 1e-6))))


def interleave(
    runners: dict[str, Callable[[], None]],
    rounds: int,
    warmup: int,
    target_block_s: float = 0.25,
    progress: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time every runner `rounds` times, round-robin with a rotating order; returns each one's Timing."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    runs = block_size(runners, target_block_s)
    names = list(runners)
    timings = {name: Timing() for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run, times = runners[name], []
            for _ in range(runs):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            timings[name].runs.extend(times)
            timings[name].best.append(min(times))
        if progress:
            progress()
    return timings


def speedup(baseline: Timing, variant: Timing) -> dict:
    """Median, min and max over rounds of baseline best / variant best (same round)."""
    ratios = np.asarray(baseline.best) / np.asarray(variant.best)
    return {
        "median": float(np.median(ratios)),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
        "rounds": len(ratios),
    }
