"""results.json (schema below), report.md and the plots of a dsee-bench run.

results.json, "schema": "dsee-bench/1":
  machine      platform, processor, cpu_count, cpu_flags (the SIMD ones that matter for int8), python
  threads      intra-op threads of every variant;  versions: onnxruntime, numpy, torch (where installed)
  method       warmup, rounds, target_block_ms, interleaved, spinning, spin_us (the bound on ONNX Runtime's
               threads' busy-wait in us, 0: none; results from before it have spinning: false only), speedup
  variants     [{name, kind, precision, path, baseline, parameters, size_bytes, heads, ffn, flops: {seq: n}}]
  timings      [{variant, batch, seq, p50_ms, p90_ms, p99_ms, best_ms, runs, throughput, round_best_ms}]
  speedups     [{variant, baseline, batch, seq, median, min, max, rounds, flops_bound, bound_achieved}]
  accuracy     {variant: {metric, value, <score by metric name>..., examples, max_length, majority}}   (with
               --eval-data): `metric` is the one that selected the checkpoint and `value` its score; beside them
               every metric the task reports, by name (accuracy for classification; pearson and spearman for
               regression), x 100; `majority`: the scores of always answering the data's most frequent label

Tables show the task's metrics in their metric columns and the plot draws the task's; report.md says in one
line which promised plot was not drawn, and why.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tasks import Classification, get_task

PLOTS = (
    "latency.png",
    "speedup_vs_flops.png",
    "accuracy_vs_speedup.png",
)  # what docs/commands/dsee-bench.md promises


def spin_text(method: dict) -> str:
    """How the run's ONNX Runtime threads spun, in words."""
    spin = method.get("spin_us", 0)  # results from before spin_us ran with spinning off
    return f"ONNX Runtime threads spin at most {spin} us" if spin else "spinning off"


def score_of(entry: dict, metric: str) -> float | None:
    """The score of `metric` in an accuracy entry (results from before every metric was kept by name hold the
    selection metric under `value` only)."""
    if metric in entry:
        return entry[metric]
    return entry.get("value") if entry.get("metric") == metric else None


def accuracy_of(entry: dict) -> float | None:
    """Accuracy of an accuracy entry."""
    return score_of(entry, "accuracy")


def metric_columns(results: dict) -> list[str]:
    """The metrics the tables show beside the task metric: what each benched task reports (accuracy for
    classification; pearson and spearman for regression)."""
    tasks = dict.fromkeys(v.get("task", Classification.kind) for v in results["variants"])
    return list(dict.fromkeys(m for kind in tasks for m in get_task(kind).reported))


def _score_cell(entry: dict, metric: str) -> str:
    value = score_of(entry, metric)
    return "" if value is None else f"{value:.2f}" + (" %" if metric == "accuracy" else "")


def write_markdown(results: dict, path: Path) -> None:
    accuracy = results.get("accuracy", {})
    primary = results["primary_baseline"]
    columns = metric_columns(results)
    lines = [
        f"# dsee-bench: {results.get('title', '')}".rstrip(": "),
        "",
        f"{results['machine']['processor'] or results['machine']['platform']}, {results['threads']} intra-op "
        f"thread{'' if results['threads'] == 1 else 's'}, {results['method']['rounds']} interleaved rounds, {spin_text(results['method'])}; speed-up = "
        f"median over rounds of the per-round ratio of best times.",
        "",
        "## Variants",
        "",
        "| variant | runtime | precision | parameters | on disk | heads / layer | FFN / layer | "
        + "".join(f"{m} | " for m in columns)
        + "task metric |",
        "| --- | --- | --- | ---: | ---: | --- | --- | " + "---: | " * len(columns) + "---: |",
    ]
    for v in results["variants"]:
        entry = accuracy.get(v["name"], {})
        metric = f"{entry['metric']} {entry['value']:.2f}" if entry.get("value") is not None else ""
        lines.append(
            f"| {v['name']} | {v['kind']} | {v['precision']} | {v['parameters'] / 1e6:.2f} M "
            f"| {v['size_bytes'] / 1e6:.1f} MB | {_compact(v['heads'])} | {_compact(v['ffn'])} "
            + "".join(f"| {_score_cell(entry, m)} " for m in columns)
            + f"| {metric} |"
        )
    common = next((a for a in accuracy.values() if a.get("majority")), None)
    if common:
        name, m = common["metric"], common["majority"]
        lines += [
            "",
            f"Always answering the most frequent label of the evaluation data ({m['label']!r}) would score "
            f"{name} {m['metric']:.2f}"
            + (f", accuracy {m['accuracy']:.2f} %" if "accuracy" in m and name != "accuracy" else "")
            + ".",
        ]
    baselines = [v["name"] for v in results["variants"] if v["baseline"]]
    engine_baselines = [
        v["name"] for v in results["variants"] if v["baseline"] and v["kind"] == "onnxruntime"
    ]
    for shape in sorted({(t["batch"], t["seq"]) for t in results["timings"]}):
        batch, seq = shape
        lines += [
            "",
            f"## Batch {batch}, sequence {seq}",
            "",
            "| variant | p50 ms | p90 ms | p99 ms | seq/s | "
            + " | ".join(f"x vs {b}" for b in baselines)
            + " | FLOPs bound | of bound (same precision) |",
            "| --- | ---: | ---: | ---: | ---: | "
            + " | ".join("---:" for _ in baselines)
            + " | ---: | ---: |",
        ]
        for t in (t for t in results["timings"] if (t["batch"], t["seq"]) == shape):
            ups = {
                s["baseline"]: s
                for s in results["speedups"]
                if (s["variant"], s["batch"], s["seq"]) == (t["variant"], batch, seq)
            }
            cells = [
                f"{ups[b]['median']:.2f} ({ups[b]['min']:.2f}-{ups[b]['max']:.2f})" if b in ups else ""
                for b in baselines
            ]
            # The bound is reached against the dense engine of the same precision (int8 against int8).
            me = next(v for v in results["variants"] if v["name"] == t["variant"])
            same = next(
                (b for b in engine_baselines if b in ups and _precision(results, b) == me["precision"]),
                primary,
            )
            main = {} if me["baseline"] else ups.get(same, {})
            bound = f"{main['flops_bound']:.2f} | {main['bound_achieved'] * 100:.0f} %" if main else " | "
            lines.append(
                f"| {t['variant']} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} "
                f"| {t['throughput']:.1f} | " + " | ".join(cells) + f" | {bound} |"
            )
    lines += _generation(results)
    lines += ["", "Speed-up cells: median (min-max over rounds).", ""]
    lines += _targets(results)
    if "profile" in results:
        prof = results["profile"]
        lines += [
            f"## Where the time goes (ONNX Runtime profiler, batch {prof['batch']}, sequence {prof['seq']})",
            "",
            "| engine | kernel ms / run | top operators (ms, share) |",
            "| --- | ---: | --- |",
        ]
        for name, p in prof.items():
            if isinstance(p, dict):
                top = ", ".join(f"{o['op']} {o['ms']:.2f} ({o['share'] * 100:.0f} %)" for o in p["ops"][:6])
                lines.append(f"| {name} | {p['kernel_ms_per_run']:.2f} | {top} |")
        lines.append("")
    for names, why in plots_not_drawn(results).items():
        lines += [f"{names} {'are' if ',' in names else 'is'} not drawn: {why}.", ""]
    path.write_text("\n".join(lines))


def _generation(results: dict) -> list[str]:
    """Causal-LM engines: prompt latency, generation throughput and speed-ups, and perplexity."""
    gen = results.get("generation")
    if not gen:
        return []
    baselines = [v["name"] for v in results["variants"] if v["baseline"]]
    ppl = results.get("perplexity", {})
    lines = [
        "",
        f"## Generation: prompt {gen['prompt_len']} tokens, {gen['new_tokens']} new tokens (greedy)",
        "",
        f"tokens/s = {gen['throughput']}; {gen['rounds']} interleaved rounds.",
        "",
        "| variant | batch | KV cache | prompt ms | generation ms | tokens/s | "
        + " | ".join(f"x vs {b}" for b in baselines)
        + (" | perplexity |" if ppl else " |"),
        "| --- | ---: | --- | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in baselines)
        + (" | ---: |" if ppl else " |"),
    ]
    for t in gen["timings"]:
        ups = {
            s["baseline"]: s
            for s in gen["speedups"]
            if (s["variant"], s["batch"]) == (t["variant"], t["batch"])
        }
        cells = [
            f"{ups[b]['median']:.2f} ({ups[b]['min']:.2f}-{ups[b]['max']:.2f})" if b in ups else ""
            for b in baselines
        ]
        p = ppl.get(t["variant"], {}).get("perplexity")
        lines.append(
            f"| {t['variant']} | {t['batch']} | {t['kv_cache']} | {t['prompt_ms']:.1f} | {t['generate_ms']:.0f} "
            f"| {t['tokens_per_s']:.1f} | "
            + " | ".join(cells)
            + (f" | {p:.2f} |" if ppl and p else (" | |" if ppl else " |"))
        )
    return lines


def _precision(results: dict, name: str) -> str:
    return next(v["precision"] for v in results["variants"] if v["name"] == name)


def _compact(values: list[int]) -> str:
    return f"{values[0]} x {len(values)}" if len(set(values)) == 1 else ", ".join(map(str, values))


def _frontier_shape(results: dict) -> tuple[int, int] | None:
    """The shape the frontier is drawn at: the smallest batch, at its longest sequence."""
    ups = [s for s in results["speedups"] if s["baseline"] == results["primary_baseline"]]
    if not ups:
        return None
    smallest = min(s["batch"] for s in ups)
    return smallest, max(s["seq"] for s in ups if s["batch"] == smallest)


def _targets(results: dict) -> list[str]:
    """The variants pruned to a speed target: the target, the latency model's prediction, the speed-up measured
    here against the primary baseline and the task's metrics (metric_columns)."""
    targeted = [v for v in results["variants"] if v.get("target")]
    shape = _frontier_shape(results)
    if not targeted or shape is None:
        return []
    primary = results["primary_baseline"]
    accuracy = results.get("accuracy", {})
    columns = metric_columns(results)
    lines = [
        f"## Speed targets (batch {shape[0]}, sequence {shape[1]}, against {primary})",
        "",
        "| variant | precision | target | predicted | measured |" + "".join(f" {m} |" for m in columns),
        "| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(columns),
    ]
    for v in targeted:
        up = next(
            (
                s["median"]
                for s in results["speedups"]
                if (s["variant"], s["baseline"], s["batch"], s["seq"]) == (v["name"], primary, *shape)
            ),
            None,
        )
        entry = accuracy.get(v["name"], {})
        lines.append(
            f"| {v['name']} | {v['precision']} | {v['target']:g}x | {v['predicted']:.2f}x (fp32 model) | "
            f"{'' if up is None else f'{up:.2f}x'} |"
            + "".join(f" {_score_cell(entry, m)} |" for m in columns)
        )
    return [*lines, ""]


def write_plots(results: dict, out: Path) -> list[str]:
    """latency.png (p50 against batch size), speedup_vs_flops.png, accuracy_vs_speedup.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if not results["timings"]:  # causal-LM engines: the generation table in report.md is the result
        return written
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
    written.append("latency.png")

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
    written.append("speedup_vs_flops.png")

    metric, points = _frontier(results)
    if points:
        # The frontier: the task's metric against the speed-up measured here; engines pruned to a speed target
        # joined by a line per precision, every other variant (full fine-tuning, unpruned DSEE, ratio-pruned) a
        # point.
        shape = _frontier_shape(results)
        variants = {v["name"]: v for v in results["variants"]}
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for precision, marker in (("fp32", "o"), ("int8", "^"), ("fp16", "s")):
            line = sorted(
                p
                for n, p in points.items()
                if variants[n].get("target") and variants[n]["precision"] == precision
            )
            if line:
                ax.plot(*zip(*line, strict=True), marker=marker, label=f"speed targets, {precision}")
        for name, (up, acc) in points.items():
            if not variants[name].get("target"):
                ax.scatter(
                    up, acc, marker="^" if variants[name]["precision"] == "int8" else "o", color="gray"
                )
        _label_points(fig, ax, points)
        ax.set(
            xlabel=f"measured speed-up vs {primary} (batch {shape[0]}, sequence {shape[1]})",
            ylabel="accuracy (%)" if metric == "accuracy" else f"{metric} x 100",
            title=f"{metric} against measured speed-up",
        )
        ax.grid(True, alpha=0.3)
        if any(v.get("target") for v in variants.values()):
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_speedup.png", dpi=120)
        written.append("accuracy_vs_speedup.png")
    plt.close("all")
    return written


def _frontier_metric(results: dict) -> str | None:
    """The metric accuracy_vs_speedup.png draws: the one that selected the checkpoints where the tables show it
    (pearson or spearman), else the first the tables show (accuracy beside F1)."""
    columns = metric_columns(results)
    selected = [a.get("metric") for a in results.get("accuracy", {}).values()]
    return next((m for m in selected if m in columns), columns[0] if columns else None)


def _frontier(results: dict) -> tuple[str | None, dict[str, tuple[float, float]]]:
    """(metric, {variant: (speed-up against the primary baseline at the frontier shape, score)}): the points
    of accuracy_vs_speedup.png, for every variant with both."""
    metric, shape = _frontier_metric(results), _frontier_shape(results)
    if metric is None or shape is None:
        return metric, {}
    primary = results["primary_baseline"]
    names = {v["name"] for v in results["variants"]}
    points = {}
    for name, entry in results.get("accuracy", {}).items():
        score = score_of(entry, metric)
        if score is None or name not in names:
            continue
        up = (
            1.0
            if name == primary
            else next(
                (
                    s["median"]
                    for s in results["speedups"]
                    if (s["variant"], s["baseline"], s["batch"], s["seq"]) == (name, primary, *shape)
                ),
                None,
            )
        )
        if up is not None:
            points[name] = (up, score)
    return metric, points


def plots_not_drawn(results: dict) -> dict[str, str]:
    """The plots of PLOTS that write_plots leaves out, and why: {names: reason}, one line of report.md each."""
    if not results["timings"]:
        return {
            ", ".join(PLOTS): "no encoder shapes were timed (a causal LM is timed generating text; the "
            "generation table is the result)"
        }
    metric, points = _frontier(results)
    if points:
        return {}
    if "accuracy" not in results:
        why = "no --eval-data was given (pass labelled data to plot the task metric against the speed-up)"
    elif metric is None:
        kinds = ", ".join(dict.fromkeys(v.get("task", Classification.kind) for v in results["variants"]))
        why = f"{kinds} engines have no metric to plot (--eval-data scores labelled tasks)"
    else:
        why = f"no variant has both a {metric} score and a speed-up against {results['primary_baseline']}"
    return {PLOTS[2]: why}


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


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
