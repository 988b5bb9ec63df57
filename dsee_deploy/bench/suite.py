"""Suites (benchmarks/suites/*.toml): the steps that make the engines (tune, prune, export, or a synthetic
model, each calling the library's verb), then the bench itself, so that one command reproduces a results table.

    title = "..."
    [vars]                      # {name} in any string below; --var name=value overrides; {work} is OUTPUT/work
    data = "../shared/data/sst2"
    [[step]]                    # run in order; skipped when `creates` (default: its output) already exists
    run = "export"              # tune, prune, export, synthetic, or script
    checkpoint = "{work}/ckpt"  # the verb's inputs, by name (see dsee_deploy.export, .tune, .prune)
    output = "{work}/engines/fp32"
    config = { quantize = "int8" }          # the verb's config dataclass, by field (tune: also dsee, prune)
    [bench]                     # engines, baselines, and BenchConfig fields: batch_sizes, seq_lens, rounds, ...
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import DSEEError


def _tune(step: dict) -> None:
    from ..pipeline.tune import tune
    from ..pruning import PruneConfig
    from ..tuning.config import DSEEConfig
    from ..tuning.options import TuneConfig

    tune(
        **_inputs(step, ("train", "output", "eval", "test", "model", "resume", "base_model")),
        config=_config(TuneConfig, step, "config"),
        dsee=_config(DSEEConfig, step, "dsee"),
        prune=_config(PruneConfig, step, "prune"),
    )


def _prune(step: dict) -> None:
    from ..pipeline.prune import prune
    from ..pruning import PruneConfig

    prune(
        step["checkpoint"],
        _config(PruneConfig, step, "config"),
        step["output"],
        **_inputs(step, ("train", "base_model")),
    )


def _export(step: dict) -> None:
    from ..export import ExportConfig
    from ..pipeline.export import export as export_verb

    export_verb(
        step["checkpoint"],
        step["output"],
        _config(ExportConfig, step, "config"),
        **_inputs(step, ("base_model",)),
    )


def _synthetic(step: dict) -> None:
    from .synthetic import build

    build(**step["args"])


def _script(step: dict) -> None:
    """A Python script with its arguments, for what no verb does (preparing a data file, say).

    Run as its own process with this interpreter, so a suite reproduces a table from a fresh clone without a
    step the user must remember to run by hand first.
    """
    import subprocess
    import sys

    script = _script_path(step)
    code = subprocess.run([sys.executable, str(script), *map(str, step.get("args", []))]).returncode
    if code != 0:
        raise DSEEError(f"suite step 'script' {script} exited with status {code}: see its message above")
    if not Path(step["creates"]).exists():
        raise DSEEError(
            f"suite step 'script' {script} ended without writing {step['creates']} (its `creates`)"
        )


def _script_path(step: dict) -> Path:
    script = Path(step["script"])
    if not script.is_file():
        raise DSEEError(
            f"suite step 'script' runs '{script}', which does not exist: paths are relative to where dsee-bench "
            f"runs (the repository root for the shipped suites)"
        )
    return script


STEPS = {"tune": _tune, "prune": _prune, "export": _export, "synthetic": _synthetic, "script": _script}
# The keys each step takes besides run and creates: the verb's inputs and its config tables.
KEYS = {
    "tune": {"train", "output", "eval", "test", "model", "resume", "base_model", "config", "dsee", "prune"},
    "prune": {"checkpoint", "output", "train", "base_model", "config"},
    "export": {"checkpoint", "output", "base_model", "config"},
    "synthetic": {"args"},
    "script": {"script", "args"},
}


def _check_tune(step: dict) -> None:
    from ..pruning.config import PruneConfig
    from ..tuning.config import DSEEConfig
    from ..tuning.options import TuneConfig

    for cls, key in ((TuneConfig, "config"), (DSEEConfig, "dsee"), (PruneConfig, "prune")):
        _config(cls, step, key)


def _check_prune(step: dict) -> None:
    from ..pruning.config import PruneConfig

    _config(PruneConfig, step, "config")


def _check_export(step: dict) -> None:
    from ..export.config import ExportConfig

    _config(ExportConfig, step, "config")


def _check_synthetic(step: dict) -> None:
    import inspect

    from .synthetic import build

    try:
        inspect.signature(build).bind(**step.get("args", {}))
    except TypeError as exc:
        raise DSEEError(
            f"its args do not fit the synthetic model builder ({exc}): see bench/synthetic.py"
        ) from exc


def _check_script(step: dict) -> None:
    if not Path(step["creates"]).exists():  # a step that will be skipped needs no script
        _script_path(step)


# What each step's run would refuse, checked for every step before the first one runs.
CHECKS = {
    "tune": _check_tune,
    "prune": _check_prune,
    "export": _check_export,
    "synthetic": _check_synthetic,
    "script": _check_script,
}


def _inputs(step: dict, names: tuple[str, ...]) -> dict:
    return {k: step[k] for k in names if k in step}


def _config(cls, step: dict, key: str):
    """The config dataclass `cls` from the step's table `key`, refusing fields it does not have."""
    from dataclasses import fields

    table = step.get(key, {})
    unknown = sorted(set(table) - {f.name for f in fields(cls)})
    if unknown:
        raise DSEEError(
            f"suite step '{step['run']}' sets {key} {unknown}, which {cls.__name__} does not have: see its fields"
        )
    return cls(**table)


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
                f"--suite '{path}' step {i + 1} runs '{step.get('run')}': use one of {', '.join(STEPS)} (suites "
                f"before this version ran CLIs with args = [...]; a step now names the verb's inputs and its "
                f"config table: see benchmarks/suites/bert-base-geometry.toml)"
            )
        if step["run"] == "script" and not {"script", "creates"} <= set(step):
            raise DSEEError(
                f"--suite '{path}' step {i + 1} (script) needs `script` and `creates` (the file it writes, so that "
                f"a second run skips it)"
            )
        unknown = sorted(set(step) - KEYS[step["run"]] - {"run", "creates"})
        if unknown:
            raise DSEEError(
                f"--suite '{path}' step {i + 1} ({step['run']}) has keys {unknown} it does not take: use "
                f"{', '.join(sorted(KEYS[step['run']]))}"
            )
    if "bench" not in suite:
        raise DSEEError(f"--suite '{path}' has no [bench] table: add engines and baselines")
    suite = _expand(suite, variables)
    check(suite, path)
    return suite


def check(suite: dict, path: str) -> None:
    """Refuse now what a step or the bench would refuse later: every step's config tables and arguments, the
    scripts still to run, and the [bench] settings, so that nothing runs (a script, an hour of training) before
    a mistake further down the file is found."""
    from dataclasses import fields

    from .config import BenchConfig

    for i, step in enumerate(suite.get("step", [])):
        try:
            CHECKS[step["run"]](step)
        except DSEEError as exc:
            raise DSEEError(f"--suite '{path}' step {i + 1} ({step['run']}): {exc}") from exc
    bench = suite["bench"]
    names = {f.name for f in fields(BenchConfig)}
    unknown = sorted(set(bench) - names - {"engines", "baselines"})
    if unknown:
        raise DSEEError(
            f"--suite '{path}' [bench] has unknown keys {unknown}: use engines, baselines and the fields of "
            f"dsee-bench --help ({', '.join(sorted(names))})"
        )
    try:
        BenchConfig(**{k: v for k, v in bench.items() if k in names})
    except DSEEError as exc:
        raise DSEEError(f"--suite '{path}' [bench]: {exc}") from exc


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
        creates = step.get("creates", step.get("output"))
        if creates and Path(creates).exists():
            print(f"[suite] {step['run']}: {creates} exists, skipped", flush=True)
            continue
        shown = {k: v for k, v in step.items() if k not in ("run", "creates")}
        print(f"[suite] {step['run']} {shown}", flush=True)
        STEPS[step["run"]](step)
