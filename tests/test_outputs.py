"""Nothing a user owns is lost (issue 12, items 1-3): an output that is, holds or lies inside an input is refused,
a non-empty output is replaced only with --overwrite, and only once the new one is complete."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, make_checkpoint, run_cli

from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.export import main as export
from dsee_deploy.cli.prune import main as prune
from dsee_deploy.cli.tune import main as tune


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` and its bytes: what "untouched" means."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def checkpoint(tiny_bases, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def one_line(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err


def test_outputs_that_are_hold_or_lie_inside_an_input_are_refused(
    checkpoint, tiny_bases, sst_like, tmp_path, capsys
):
    base = tmp_path / "base"
    shutil.copytree(tiny_bases["bert"], base)
    data = tmp_path / "out-with-data"
    data.mkdir()
    train = data / "train.tsv"
    shutil.copy(sst_like["train"], train)
    before = {p: tree(p) for p in (checkpoint, base, data)}
    train_flags = ["--train", sst_like["train"], *FAST, "--overwrite"]
    cases = [
        (
            prune,
            [
                checkpoint,
                "--prune-heads",
                "0.5",
                "--importance",
                "wabs",
                "--output",
                checkpoint,
                "--overwrite",
            ],
            "is the checkpoint",
        ),
        (
            prune,
            [checkpoint, "--prune-ffn", "0.5", "--importance", "wabs", "--output", tmp_path, "--overwrite"],
            "holds the checkpoint",
        ),
        (tune, ["--resume", checkpoint, *train_flags, "--output", checkpoint], "is --resume"),
        (tune, ["--model", base, *train_flags, "--output", base], "is --model"),
        (tune, ["--model", base, *train_flags, "--output", base / "sub"], "lies inside --model"),
        (tune, ["--model", base, "--train", train, *FAST, "--output", data, "--overwrite"], "holds --train"),
        (export, [checkpoint, "--base-model", base, "--output", base, "--overwrite"], "is --base-model"),
        (
            export,
            [checkpoint, "--output", tiny_bases["bert"], "--overwrite"],
            "is --base-model",
        ),  # the recorded one
        (export, [checkpoint, "--output", checkpoint / "engine"], "lies inside the checkpoint"),
    ]
    for cli, argv, expected in cases:
        code, _, err = run_cli(cli, argv, capsys)
        one_line(code, err, expected)
    assert {p: tree(p) for p in (checkpoint, base, data)} == before
    assert not (checkpoint / "engine").exists()


def test_bench_output_is_replaced_only_with_overwrite_and_keeps_a_suites_work(pruned_bert, tmp_path, capsys):
    engines = tmp_path / "engines"
    for name in ("dense", "pruned"):
        code, _, err = run_cli(export, [pruned_bert, "--output", engines / name], capsys)
        assert code == 0, err
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.md").write_text("my notes\n")
    (out / "work").mkdir()
    (out / "work" / "run.txt").write_text("a suite's trained step\n")
    argv = [
        "--baseline",
        engines / "dense",
        "--engine",
        engines / "pruned",
        "--rounds",
        "3",
        "--batch-sizes",
        "1",
    ]
    argv += ["--seq-lens", "8", "--no-torch", "--output", out]
    code, _, err = run_cli(bench, argv, capsys)
    one_line(code, err, "not empty: pass --overwrite")
    assert (out / "notes.md").read_text() == "my notes\n" and not (out / "report.md").exists()
    code, _, err = run_cli(bench, [*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert {"results.json", "report.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "notes.md").exists()  # --overwrite replaces the directory ...
    assert (out / "work" / "run.txt").read_text() == "a suite's trained step\n"  # ... but for a suite's work/
    assert not list(tmp_path.glob(".results*"))


def test_output_checks_happen_before_the_work(checkpoint, tmp_path, capsys, monkeypatch):
    """An output that cannot be used is refused before the model loads, not after an export: asserted as the
    load never being reached (a time limit fails on a loaded machine without a defect: issue 40, item 12)."""
    from dsee_deploy.errors import DSEEError
    from dsee_deploy.pipeline import export as export_run

    loaded = []

    def load_source(src, *args, **kwargs):  # where the work starts; the test needs no engine after it
        loaded.append(Path(src))
        raise DSEEError("the model load was reached")

    monkeypatch.setattr(export_run, "load_source", load_source)
    code, _, err = run_cli(export, [checkpoint, "--output", tmp_path / "fine"], capsys)
    assert loaded == [checkpoint] and "the model load was reached" in err  # a usable output gets that far
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    code, _, err = run_cli(export, [checkpoint, "--output", link, "--overwrite"], capsys)
    one_line(code, err, "is a symbolic link")
    code, _, err = run_cli(export, [checkpoint, "--output", "/proc/x"], capsys)
    one_line(code, err, "cannot be written")
    assert loaded == [checkpoint]  # neither refusal loaded the model


def test_an_interrupted_run_leaves_the_previous_output_and_nothing_complete_looking(
    checkpoint, tiny_bases, sst_like, tmp_path, capsys, monkeypatch
):
    from dsee_deploy.pipeline import tune as tuning

    out = tmp_path / "run"
    code, _, err = run_cli(
        tune, ["--model", tiny_bases["bert"], "--train", sst_like["train"], *FAST, "--output", out], capsys
    )
    assert code == 0, err
    before = tree(out)

    def interrupted(self, epochs, teacher=None):
        assert self.work.parent.name.startswith(".run.partial-")
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning.Session, "train", interrupted)
    argv = [
        "--model",
        tiny_bases["bert"],
        "--train",
        sst_like["train"],
        *FAST,
        "--output",
        out,
        "--overwrite",
    ]
    code, _, err = run_cli(tune, argv, capsys)
    assert code == 130 and "interrupted" in err
    assert tree(out) == before
    assert not list(tmp_path.glob(".run*"))
    # An export that fails its check keeps the working engine and puts the failed one beside it.
    engine = tmp_path / "engine"
    code, _, err = run_cli(export, [checkpoint, "--output", engine], capsys)
    assert code == 0, err
    good = tree(engine)
    code, _, err = run_cli(export, [checkpoint, "--output", engine, "--overwrite", "--atol", "1e-30"], capsys)
    assert code == 1 and "kept in" in err, err
    assert tree(engine) == good
    assert '"status": "failed"' in (tmp_path / "engine.failed" / "manifest.json").read_text()


def test_a_killed_tune_leaves_no_output_and_the_rerun_succeeds(tiny_bases, sst_like, tmp_path):
    """SIGKILL cannot be cleaned up after: the work directory is hidden beside the target and the next run
    removes it."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "dsee_deploy.cli.tune", "--model", str(tiny_bases["bert"]), "--train"]
    argv += [str(sst_like["train"]), "--batch-size", "8", "--max-length", "24", "--output", str(out)]
    proc = subprocess.Popen(
        [*argv, "--max-steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = lambda: list(tmp_path.glob(".run.partial-*/trainer"))  # noqa: E731
    try:
        # The event waited for is training having started; 600 s means hung, not a slow start of torch on a
        # loaded machine, and a run that exits first stops the wait at once.
        deadline = time.monotonic() + 600
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started(), f"training never started (the tune's exit status: {proc.poll()})"
    finally:
        if proc.poll() is None:  # a run that exited is not killed: its pid may be another process's by now
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # nothing under the target's name
    done = subprocess.run([*argv, "--max-steps", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "adapter.safetensors").is_file()
    assert not list(tmp_path.glob(".run.partial-*"))  # the killed run's work directory was removed


def test_a_triton_model_name_is_one_folder_and_overwrite_replaces_only_it(pruned_bert, tmp_path, capsys):
    repo = tmp_path / "repo"
    for name in ("sst", "other"):
        code, _, err = run_cli(
            export, [pruned_bert, "--output", repo, "--format", "triton", "--name", name], capsys
        )
        assert code == 0, err
    (tmp_path / "mine.txt").write_text("a user's file beside the repository\n")
    before = tree(tmp_path)
    for name in ("..", ".", "../x", "a/b"):
        argv = [pruned_bert, "--output", repo, "--format", "triton", "--name", name, "--overwrite"]
        code, _, err = run_cli(export, argv, capsys)
        one_line(code, err, f"--name '{name}' is not a model name")
    assert tree(tmp_path) == before
    argv = [pruned_bert, "--output", repo, "--format", "triton", "--name", "sst", "--overwrite"]
    code, _, err = run_cli(export, argv, capsys)
    assert code == 0, err
    assert tree(repo / "other") == {
        k[len("repo/other/") :]: v for k, v in before.items() if k.startswith("repo/other/")
    }
    assert 'name: "sst"' in (repo / "sst" / "config.pbtxt").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["other", "sst"]
