"""Suites (benchmarks/suites/*.toml): the steps that make the engines (train, prune, export, or a synthetic
model), then the bench itself, so that one command reproduces a results table.

    title = "..."
    [vars]                      # {name} in any string below; --var name=value overrides; {work} is OUTPUT/work
    data = "../shared/data/sst2"
    [[step]]                    # run in order; skipped when `creates` already exists (re-runs resume)
    run = "dsee-export"         # dsee-tune, dsee-prune, dsee-export, or "synthetic" (args: a table)
    args = ["{work}/ckpt", "--output", "{work}/engines/fp32"]
    creates = "{work}/engines/fp32"
    [bench]                     # dsee-bench options: engines, baselines, batch_sizes, seq_lens, rounds, ...
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import DSEEError

STEPS = ("dsee-tune", "dsee-prune", "dsee-export", "synthetic")


def load(path: str, work: Path, overrides: dict[str, str]) -> dict:
    file = Path(path)
    if not file.is_file():
        raise DSEEError(f"--suite '{path}' does not exist: see benchmarks/suites/ for the shipped suites")
    try:
        suite = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DSEEError(f"--suite '{path}' is not valid TOML ({exc}): fix the file") from exc
    variables = {k: str(v) for k, v in suite.get("vars", {}).items()} | overrides
    variables = {k: v.replace("{work}", str(work)) for k, v in variables.items()} | {"work": str(work)}
    for i, step in enumerate(suite.get("step", [])):
        if step.get("run") not in STEPS:
            raise DSEEError(
                f"--suite '{path}' step {i + 1} runs '{step.get('run')}': use one of {', '.join(STEPS)}"
            )
    if "bench" not in suite:
        raise DSEEError(f"--suite '{path}' has no [bench] table: add engines and baselines")
    return _expand(suite, variables)


def _expand(value, variables: dict):
    if isinstance(value, str):
        try:
            return value.format(**variables)
        except KeyError as exc:
            raise DSEEError(
                f"the suite uses {{{exc.args[0]}}}, which is not set: add it to [vars] or pass --var"
            ) from exc
    if isinstance(value, list):
        return [_expand(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, variables) for k, v in value.items()}
    return value


def run_steps(suite: dict) -> None:
    for step in suite.get("step", []):
        creates = step.get("creates")
        if creates and Path(creates).exists():
            print(f"[suite] {step['run']}: {creates} exists, skipped", flush=True)
            continue
        print(f"[suite] {step['run']} {' '.join(map(str, step.get('args', [])))}", flush=True)
        if step["run"] == "synthetic":
            from .synthetic import build

            build(**step["args"])
            continue
        main = _entry_point(step["run"])
        code = main([str(a) for a in step.get("args", [])])
        if code:
            raise DSEEError(f"suite step '{step['run']}' failed with exit code {code}: see its message above")


def _entry_point(name: str):
    if name == "dsee-tune":
        from ..cli.tune import main
    elif name == "dsee-prune":
        from ..cli.prune import main
    else:
        from ..cli.export import main
    return main
