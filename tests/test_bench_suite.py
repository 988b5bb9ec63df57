"""A dsee-bench suite is checked whole before its first step runs: a mistake anywhere in the file (a [bench]
setting, a later step's config) is refused before a script has run or a model has trained."""

from __future__ import annotations

import pytest
from conftest import run_cli

from dsee_deploy.cli.bench import main as bench

# Each case: what follows the script step in the suite file, and what the one-line refusal says.
INVALID = [
    pytest.param(
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\nrounds = 1\n",
        "[bench]: --rounds must be at least 3",
        id="bench-value",
    ),
    pytest.param(
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\nround = 5\n",
        "[bench] has unknown keys ['round']",
        id="bench-unknown-key",
    ),
    pytest.param(
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\nbatch_sizes = '1,8'\n",
        "--batch-sizes must be positive integers",
        id="bench-type",
    ),
    pytest.param(
        "[[step]]\nrun = 'export'\ncheckpoint = 'c'\noutput = '{work}/e'\nconfig = { int8 = true }\n"
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\n",
        "step 2 (export): suite step 'export' sets config ['int8'], which ExportConfig does not have",
        id="later-step-config",
    ),
    pytest.param(
        "[[step]]\nrun = 'export'\ncheckpoint = 'c'\noutput = '{work}/e'\nconfig = { quantize = 'int9' }\n"
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\n",
        "step 2 (export): --quantize",
        id="later-step-value",
    ),
    pytest.param(
        "[[step]]\nrun = 'synthetic'\nargs = { output = '{work}/m', geometry = 'bert-base', heads = [1] }\n"
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\n",
        "step 2 (synthetic): its args do not fit",
        id="later-step-args",
    ),
]


@pytest.mark.parametrize("rest, expected", INVALID)
def test_suite_is_checked_whole_before_any_step_runs(rest, expected, tmp_path, capsys):
    marker = tmp_path / "marker"
    script = tmp_path / "touch.py"
    script.write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('ran')\n")
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"[[step]]\nrun = 'script'\nscript = '{script}'\nargs = ['{marker}']\ncreates = '{marker}'\n{rest}"
    )
    code, _, err = run_cli(bench, ["--suite", suite, "--output", tmp_path / "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert f"--suite '{suite}'" in lines[0]
    assert not marker.exists(), "the script step ran before the suite was refused"
    assert not (tmp_path / "out").exists()


def test_a_valid_suite_still_runs_its_script(tmp_path, capsys):
    """The control: the same script step runs when the rest of the suite is sound (the bench itself then
    refuses the engines, which do not exist)."""
    marker = tmp_path / "marker"
    script = tmp_path / "touch.py"
    script.write_text("import pathlib, sys\npathlib.Path(sys.argv[1]).write_text('ran')\n")
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"[[step]]\nrun = 'script'\nscript = '{script}'\nargs = ['{marker}']\ncreates = '{marker}'\n"
        "[bench]\nbaselines = ['d=x']\nengines = ['e=y']\nrounds = 3\n"
    )
    code, _, err = run_cli(bench, ["--suite", suite, "--output", tmp_path / "out"], capsys)
    assert marker.read_text() == "ran"
    assert code == 2 and len(err.strip().splitlines()) == 1, err
