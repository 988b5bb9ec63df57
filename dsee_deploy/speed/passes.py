"""Timing a latency model's grid: groups of engines interleaved with the dense engine, in passes repeated until
each point's lowest figure is confirmed (speed.latency's docstring says why)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .engines import _quiet_optimum, build_engine, group_sessions, held, uniform_layout

STEADY = 0.05  # a point's lowest figure is confirmed by a second pass this close to it
MIN_PASSES, MAX_PASSES = 3, 6


def relative_pass(runners, dense, groups: list[list], rounds: int, opened=None) -> tuple[dict, list[float]]:
    """One pass over the grid: each group timed interleaved with the dense engine; an engine's figure is the
    median over rounds of its best time over the dense engine's best in the same round. Returns those ratios and
    the dense engine's best times (s).

    `runners`: {name: runner} of every engine, or a group opener: called with a group's names (dense first), a
    context manager giving {name: runner} for them while it is open (group_sessions). `opened`: called with
    those runners as each group is opened."""
    from .timing import interleave

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
    model_config, task_spec, speed, heads_grid, ffn_grid, rounds, *, opened=None
) -> tuple[dict, int, float]:
    """Latency (ms) of the uniform layouts (h heads and f neurons in every layer) of the grid at `speed` (a
    resolved SpeedKey), the passes timed and their spread (time_grid). `opened`: called with each group's
    runners as its sessions are opened."""
    shapes = [(h, f) for h in heads_grid for f in ffn_grid]
    with _quiet_optimum():
        return _measure(model_config, task_spec, speed, rounds, shapes, opened)


def _measure(model_config, task_spec, speed, rounds, shapes, opened):
    from tqdm.auto import tqdm

    from ..architectures import get_spec

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
                build_engine(model_config, task_spec, layout, speed.precision, Path(tmp) / f"h{h}-f{f}")
            )
        if dense not in paths:
            paths[dense] = str(
                build_engine(model_config, task_spec, None, speed.precision, Path(tmp) / "dense")
            )
        heads = sorted({h for h, _ in shapes})
        groups = [[s for s in shapes if s[0] == h] for h in heads]  # one head count, every FFN width
        bar = tqdm(total=MIN_PASSES, desc="latency model: timing passes", leave=False)

        def progress(done, spread):
            if done >= MIN_PASSES and spread > STEADY and done < MAX_PASSES:
                bar.total = done + 1  # another pass
            bar.update(1)
            bar.set_postfix_str(f"best figures confirmed within {spread:.1%}")

        session_args = (
            model_config.model_type,
            model_config.vocab_size,
            speed.batch,
            speed.seq_len,
            speed.threads,
            speed.provider,
        )
        try:
            with group_sessions(paths, dense, *session_args) as open_group:
                measured, timed, spread = time_grid(
                    open_group, dense, groups, rounds, progress, opened=opened
                )
            return measured, len(timed), spread
        finally:
            bar.close()
