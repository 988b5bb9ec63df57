"""The plots of a dsee-bench run (matplotlib): latency by variant, speed-up against the FLOPs bound, and the task
metric against speed-up where the run has one."""

from __future__ import annotations

from pathlib import Path

from .scores import (
    frontier,
    frontier_shape,
)


def write_plots(results: dict, out: Path) -> list[str]:
    """latency.png (p50 against batch size), speedup_vs_flops.png, accuracy_vs_speedup.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results["timings"]:  # causal-LM engines: the generation table in report.md is the result
        return []
    written = [_latency(plt, results, out), _speedup(plt, results, out)]
    if frontier(results)[1]:
        written.append(_frontier(plt, results, out))
    plt.close("all")
    return written


def _latency(plt, results: dict, out: Path) -> str:
    seqs = sorted({t["seq"] for t in results["timings"]})
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 4), squeeze=False)
    for ax, seq in zip(axes[0], seqs, strict=True):
        for v in results["variants"]:
            points = sorted(
                (t["batch"], t["p50_ms"])
                for t in results["timings"]
                if t["variant"] == v["name"] and t["seq"] == seq
            )
            ax.plot(*zip(*points, strict=True), marker="o", label=v["name"])
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="batch size",
            ylabel="p50 latency (ms)",
            title=f"sequence {seq}",
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    return "latency.png"


def _speedup(plt, results: dict, out: Path) -> str:
    primary = results["primary_baseline"]
    ups = [s for s in results["speedups"] if s["baseline"] == primary]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name in dict.fromkeys(s["variant"] for s in ups):
        pts = [(s["flops_bound"], s["median"]) for s in ups if s["variant"] == name]
        ax.scatter(*zip(*pts, strict=True), label=name)
    top = max([s["median"] for s in ups] + [s["flops_bound"] for s in ups] + [1.0]) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="= FLOPs bound")
    ax.set(
        xlabel=f"FLOPs bound (vs {primary})", ylabel=f"speed-up (vs {primary})", xlim=(0, top), ylim=(0, top)
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "speedup_vs_flops.png", dpi=120)
    return "speedup_vs_flops.png"


def _frontier(plt, results: dict, out: Path) -> str:
    metric, points = frontier(results)
    primary = results["primary_baseline"]
    # The frontier: the task's metric against the speed-up measured here; engines pruned to a speed target
    # joined by a line per precision, every other variant (full fine-tuning, unpruned DSEE, ratio-pruned) a
    # point.
    shape = frontier_shape(results)
    variants = {v["name"]: v for v in results["variants"]}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for precision, marker in (("fp32", "o"), ("int8", "^"), ("fp16", "s")):
        line = sorted(
            p
            for n, p in points.items()
            if variants[n].get("target_speedup") and variants[n]["precision"] == precision
        )
        if line:
            ax.plot(*zip(*line, strict=True), marker=marker, label=f"speed targets, {precision}")
    for name, (up, acc) in points.items():
        if not variants[name].get("target_speedup"):
            ax.scatter(up, acc, marker="^" if variants[name]["precision"] == "int8" else "o", color="gray")
    _label_points(fig, ax, points)
    ax.set(
        xlabel=f"measured speed-up vs {primary} (batch {shape[0]}, sequence {shape[1]})",
        ylabel="accuracy (%)" if metric == "accuracy" else f"{metric} x 100",
        title=f"{metric} against measured speed-up",
    )
    ax.grid(True, alpha=0.3)
    if any(v.get("target_speedup") for v in variants.values()):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_speedup.png", dpi=120)
    return "accuracy_vs_speedup.png"


def _label_points(fig, ax, points: dict) -> None:
    """Name every point, each label at the first of a few offsets (above, below, further out) where it overlaps
    no label placed before it: reference points often share an accuracy (the eager and ONNX runs of one model)
    and sit close together. A greedy pass over four offsets is all these plots need; adjustText would be a
    dependency for one plot."""
    offsets = [(3, 4), (3, -11), (3, 15), (3, -22)]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for name, (up, acc) in sorted(points.items(), key=lambda item: item[1]):
        for dx, dy in offsets:
            label = ax.annotate(name, (up, acc), fontsize=7, xytext=(dx, dy), textcoords="offset points")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            label.remove()
