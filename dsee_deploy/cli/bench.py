"""dsee-bench: DSEE engines against dense baselines, timed side by side on this machine, with size, FLOPs and
accuracy; writes results.json, report.md and plots."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import DSEEError
from . import run_cli


def _ints(flag: str):
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, e.g. 1,8,32") from None

    return parse


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
    p.add_argument("--batch-sizes", type=_ints("--batch-sizes"), default=None, help="Default 1,8,32.")
    p.add_argument("--seq-lens", type=_ints("--seq-lens"), default=None, help="Default 32,128.")
    p.add_argument(
        "--threads", type=int, default=None, help=f"Intra-op threads (default: all {os.cpu_count()} cores)."
    )
    p.add_argument("--rounds", type=int, default=None, help="Interleaved rounds per shape (default 20).")
    p.add_argument("--warmup", type=int, default=None, help="Warm-up runs per variant and shape (default 3).")
    p.add_argument(
        "--spin-us",
        type=int,
        default=None,
        help="How long idle ONNX Runtime threads busy-wait for work, in microseconds (default 100, as "
        "dsee-serve; 0: never). ORT's own default spins on after a run and takes the next variant's cores.",
    )
    p.add_argument("--eval-data", help="Labelled data (.tsv/.csv/.jsonl): accuracy of every variant.")
    p.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Also time PyTorch eager on the dense model and PyTorch with the DSEE branch (default on).",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="Also profile each ONNX engine at the first shape with ONNX Runtime's profiler (time per op type).",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bench(argv))


def bench(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..bench.harness import BenchOptions, run
    from ..bench.report import write_json, write_markdown, write_plots

    out = Path(args.output)
    if (out / "results.json").exists() and not args.overwrite:
        raise DSEEError(f"--output '{out}' already holds results.json: pass --overwrite to replace it")
    settings: dict = {}
    if args.suite:
        from ..bench import suite as suites

        overrides = dict(_pair(v) for v in args.var)
        spec = suites.load(args.suite, Path(args.work) if args.work else out / "work", overrides)
        suites.run_steps(spec)
        settings = dict(spec["bench"])
        settings.setdefault("title", spec.get("title", ""))
    elif not args.engine or not args.baseline:
        raise DSEEError("pass --engine and --baseline (dsee-export directories), or --suite FILE")
    cli = {
        "engines": args.engine or None,
        "baselines": args.baseline or None,
        "batch_sizes": args.batch_sizes,
        "seq_lens": args.seq_lens,
        "threads": args.threads,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "spin_us": args.spin_us,
        "eval_data": args.eval_data,
        "torch_variants": args.torch,
        "profile": args.profile or None,
    }
    settings.update({k: v for k, v in cli.items() if v is not None})
    unknown = set(settings) - set(BenchOptions.__dataclass_fields__)
    if unknown:
        raise DSEEError(f"the suite's [bench] has unknown keys {sorted(unknown)}: see dsee-bench --help")
    options = BenchOptions(**settings)
    results = run(options)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    write_markdown(results, out / "report.md")
    plots = write_plots(results, out)
    print((out / "report.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {', '.join(plots)}")
    return 0


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise DSEEError(f"--var '{text}' is not NAME=VALUE")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
