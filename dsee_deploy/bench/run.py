"""`dsee_deploy.bench`: DSEE engines timed side by side with dense baselines on this machine, with size, FLOPs
bounds and the task metric; optionally written as results.json, report.md and plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DSEEError
from .config import BenchConfig


@dataclass
class BenchResults:
    """A dsee-bench run: `data` is results.json (schema dsee-bench/1, see bench/report.py)."""

    data: dict
    output: Path | None = None

    def speedup(
        self, variant: str, baseline: str | None = None, batch: int | None = None, seq: int | None = None
    ) -> float:
        """The median speed-up of `variant` against `baseline` (default: the primary one) at a shape (default:
        the first measured)."""
        baseline = baseline or self.data["primary_baseline"]
        rows = [s for s in self.data["speedups"] if s["variant"] == variant and s["baseline"] == baseline]
        rows = [
            s for s in rows if (batch is None or s["batch"] == batch) and (seq is None or s["seq"] == seq)
        ]
        if not rows:
            raise DSEEError(f"no speed-up of '{variant}' against '{baseline}' at that shape in these results")
        return rows[0]["median"]

    def metric(self, variant: str) -> dict | None:
        """The variant's task metric and accuracy (with eval_data)."""
        return self.data.get("accuracy", {}).get(variant)

    def to_dict(self) -> dict:
        return self.data


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
        results = BenchResults(run(engines, baselines, config), Path(output) if output is not None else None)
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
    write_json(results.data, out / "results.json")
    write_markdown(results.data, out / "report.md")
    return ["results.json", "report.md", *write_plots(results.data, out)]
