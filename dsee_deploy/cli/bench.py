"""dsee-bench: DSEE engines against dense baselines, timed side by side on this machine, with size, FLOPs and
the task metric; writes results.json, report.md and plots."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..bench.config import BenchConfig
from ..errors import DSEEError
from . import run_cli
from .flags import add_fields


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-bench",
        description="Time DSEE engines against dense baselines (interleaved rounds) and report speed-ups, "
        "FLOPs bounds, size and accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--engine", action="append", default=[], help="A dsee-export directory (PATH or NAME=PATH); repeat."
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="A dense engine to compare with (PATH or NAME=PATH); repeat, the first is the main baseline.",
    )
    p.add_argument(
        "--suite", help="A suite file (benchmarks/suites/*.toml): make the engines, then bench them."
    )
    p.add_argument("--var", action="append", default=[], help="NAME=VALUE for a suite's {NAME}; repeat.")
    p.add_argument("--work", help="Where a suite keeps its models and engines ({work}; default OUTPUT/work).")
    p.add_argument("--output", required=True, help="Directory for results.json, report.md and the plots.")
    p.add_argument("--overwrite", action="store_true", help="Replace earlier results in --output.")
    # Unset flags stay unset, so that a suite's [bench] values hold where the command line says nothing.
    add_fields(p, BenchConfig, skip=("target_block_ms", "title"), unset=True)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bench(argv))


def bench(argv: list[str] | None = None) -> int:
    from ..bench.run import bench as bench_verb
    from ..bench.run import bench_output

    args = build_parser().parse_args(argv)
    out = Path(args.output)
    # Before a suite trains for an hour: the output must be free (or --overwrite) and writable.
    bench_output(out, args.overwrite, args.engine, args.baseline, BenchConfig()).probe()
    settings: dict = {}
    engines, baselines = args.engine, args.baseline
    if args.suite:
        from ..bench import suite as suites

        overrides = dict(_pair(v) for v in args.var)
        work = Path(args.work) if args.work else out / "work"
        spec = suites.load(args.suite, work, overrides)
        suites.run_steps(spec)
        settings = dict(spec["bench"])
        settings.setdefault("title", spec.get("title", ""))
        engines = engines or settings.pop("engines", [])
        baselines = baselines or settings.pop("baselines", [])
        settings.pop("engines", None), settings.pop("baselines", None)
    elif not engines or not baselines:
        raise DSEEError("pass --engine and --baseline (dsee-export directories), or --suite FILE")
    names = {f.name for f in fields(BenchConfig)}
    unknown = set(settings) - names
    if unknown:
        raise DSEEError(f"the suite's [bench] has unknown keys {sorted(unknown)}: see dsee-bench --help")
    settings.update({k: v for k, v in vars(args).items() if k in names})  # the command line wins
    bench_verb(engines, baselines, BenchConfig(**settings), output=out, overwrite=args.overwrite)
    print((out / "report.md").read_text())
    plots = ", ".join(sorted(p.name for p in out.glob("*.png")))
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {plots}")
    return 0


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise DSEEError(f"--var '{text}' is not NAME=VALUE")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
