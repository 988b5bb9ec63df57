"""`dsee_deploy.bench`: DSEE engines timed side by side with dense baselines on this machine, with size, FLOPs
bounds and the task metric; optionally written as results.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path

from .config import BenchConfig
from .results import BenchResults


def bench(
    engines: list[str | Path],
    baselines: list[str | Path],
    config: BenchConfig | None = None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
) -> BenchResults:
    """Time `engines` against `baselines` (dsee-export directories, PATH or NAME=PATH; the first baseline is
    the primary one). With `output`, writes results.json, report.md and the plots there."""
    from .harness import run

    config = config or BenchConfig()
    engines, baselines = [str(e) for e in engines], [str(b) for b in baselines]  # paths or NAME=PATH
    target = None
    if output is not None:
        target = bench_output(output, overwrite, engines, baselines, config)
        target.start()  # an unwritable --output fails now, not after the benchmark
    try:
        results = run(engines, baselines, config)
        results.output = Path(output) if output is not None else None
        if target is not None:
            write(results, target.path)
            target.commit()
    finally:
        if target is not None:
            target.abort()  # nothing left to remove after a commit
    return results


def bench_output(output, overwrite: bool, engines: list[str], baselines: list[str], config: BenchConfig):
    """The results directory as an outputs.Output: refused when it holds anything but a suite's work/ (kept
    across --overwrite: the suite reuses the steps it finds there) unless --overwrite, or when it is, holds or
    lies inside an engine or the evaluation data."""
    from ..outputs import Output

    def path(spec: str) -> str:
        return spec.rpartition("=")[2] if not Path(spec).exists() else spec

    return Output(
        output,
        overwrite,
        {
            "--engine": [path(e) for e in engines],
            "--baseline": [path(b) for b in baselines],
            "--eval-data": config.eval_data,
        },
        keep=("work",),
    )


def write(results: BenchResults, out: Path) -> list[str]:
    """results.json, report.md and the plots; the names of the files written."""
    from .plots import write_plots
    from .report import write_json, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    data = results.to_dict()
    write_json(data, out / "results.json")
    write_markdown(data, out / "report.md")
    return ["results.json", "report.md", *write_plots(data, out)]
