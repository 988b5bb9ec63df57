"""Reading a dsee-bench run's figures: each variant's task score, the metric columns a table shows, the frontier a
plot draws, and which promised plot cannot be drawn (report.md and plots.py both read them here)."""

from __future__ import annotations

from ..tasks import Classification, get_task

PLOTS = (
    "latency.png",
    "speedup_vs_flops.png",
    "accuracy_vs_speedup.png",
)  # what docs/commands/dsee-bench.md promises


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
    columns = list(dict.fromkeys(m for kind in tasks for m in get_task(kind).reported))
    scored = list(results.get("accuracy", {}).values())
    if any("metrics" in entry for entry in scored):  # sentence embeddings on a retrieval set: its metrics
        columns = list(dict.fromkeys(m for entry in scored for m in entry.get("metrics", columns)))
    return columns


def frontier_shape(results: dict) -> tuple[int, int] | None:
    """The shape the frontier is drawn at: the smallest batch, at its longest sequence."""
    ups = [s for s in results["speedups"] if s["baseline"] == results["primary_baseline"]]
    if not ups:
        return None
    smallest = min(s["batch"] for s in ups)
    return smallest, max(s["seq"] for s in ups if s["batch"] == smallest)


def frontier_metric(results: dict) -> str | None:
    """The metric accuracy_vs_speedup.png draws: the one that selected the checkpoints where the tables show it
    (pearson or spearman), else the first the tables show (accuracy beside F1)."""
    columns = metric_columns(results)
    selected = [a.get("metric") for a in results.get("accuracy", {}).values()]
    return next((m for m in selected if m in columns), columns[0] if columns else None)


def frontier(results: dict) -> tuple[str | None, dict[str, tuple[float, float]]]:
    """(metric, {variant: (speed-up against the primary baseline at the frontier shape, score)}): the points
    of accuracy_vs_speedup.png, for every variant with both."""
    metric, shape = frontier_metric(results), frontier_shape(results)
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
    metric, points = frontier(results)
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
