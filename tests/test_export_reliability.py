"""What a command leaves when it does not have a machine to itself: two commands writing one output (one says
"saved", the other is refused in one line), and a killed command's leftovers (nothing a later one takes for
complete). Real processes and real exports; the assertions are on what each process printed and left, never on
how long anything took."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_checkpoint, run_cli

from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.export import main as export
from dsee_deploy.cli.prune import main as prune
from dsee_deploy.cli.tune import main as tune
from dsee_deploy.errors import DSEEError
from dsee_deploy.outputs import Output

# The installed console script when there is one, so that a refused command is named as the user typed it.
SCRIPT = Path(sys.executable).parent / "dsee-export"
DSEE_EXPORT = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "dsee_deploy.cli.export"]
PROGRAM = "dsee-export" if SCRIPT.is_file() else "process"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def checkpoint(tiny_bases, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "ckpt"
    make_checkpoint("bert", tiny_bases["bert"], path)
    return path


def _export_process(checkpoint: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*DSEE_EXPORT, str(checkpoint), "--output", str(out), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=600)  # a hung export, not a slow one
    return proc.returncode, stdout, stderr


def test_an_output_being_written_refuses_a_second_export(checkpoint, tmp_path):
    """Deterministic: this process holds the output (as a command does from start to commit) while a real
    dsee-export process tries to write it."""
    out = tmp_path / "engines" / "x"
    holder = Output(out, overwrite=False)
    holder.start()
    try:
        code, stdout, stderr = _finish(_export_process(checkpoint, out))
    finally:
        holder.abort()
    assert code == 2 and "saved" not in stdout, stderr
    assert stderr.strip().splitlines() == [
        f"error: another process (pid {os.getpid()}) is writing --output '{out}': wait for it to finish, or "
        f"pass another --output"
    ]
    assert not out.exists()
    # The holder gave up: the same command now goes through, and leaves its output only (no lock file).
    code, stdout, stderr = _finish(_export_process(checkpoint, out))
    assert code == 0 and stdout.count("saved ") == 1, stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["x"]


def test_two_concurrent_exports_to_one_output_save_once(checkpoint, tmp_path):
    """A real race: two dsee-export processes started together on one new output. Whichever takes the output
    first saves; the other is refused in one line, as still being written or (when it checks only after the
    first finished) as existing without --overwrite. Never two "saved" for one directory."""
    from dsee_deploy.serve import Engine

    out = tmp_path / "engines" / "x"
    procs = [_export_process(checkpoint, out) for _ in range(2)]
    results = [_finish(p) for p in procs]
    saved = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(saved) == 1 and len(refused) == 1, results
    assert saved[0][1].count("saved ") == 1
    code, stdout, stderr = refused[0]
    lines = stderr.strip().splitlines()
    assert code == 2 and "saved" not in stdout and len(lines) == 1, stderr
    winner = procs[results.index(saved[0])].pid
    assert lines[0] in (
        f"error: another {PROGRAM} (pid {winner}) is writing --output '{out}': wait for it to finish, or "
        f"pass another --output",
        f"error: --output '{out}' already exists and is not empty: pass --overwrite to replace it",
    ), lines
    assert len(Engine.load(out, threads=1).predict(["a good film"])) == 1  # the saved engine is whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["x"]


def test_a_command_that_checked_before_another_finished_needs_overwrite(tmp_path):
    """Both checked the output while it did not exist; the first saved it; the second, once it holds the
    output, finds it complete and is refused without --overwrite instead of replacing it."""
    out = tmp_path / "x"
    first, second = Output(out, overwrite=False), Output(out, overwrite=False)
    (first.start() / "model.onnx").write_text("first")
    first.commit()
    with pytest.raises(DSEEError, match=r"already exists and is not empty: pass --overwrite"):
        second.start()
    assert (out / "model.onnx").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    again = Output(out, overwrite=True)  # with --overwrite it is replaced, after the first let go
    (again.start() / "model.onnx").write_text("second")
    again.commit()
    assert (out / "model.onnx").read_text() == "second"


@pytest.mark.parametrize("command", ["dsee-prune", "dsee-tune", "dsee-bench"])
def test_every_command_takes_the_same_lock(command, checkpoint, tiny_bases, sst_like, tmp_path, capsys):
    """tune, prune and bench write through the same Output as export: each is refused while another command
    writes its output (this process holds it; the lock is per open file, so it holds against this process's
    own command too)."""
    out = tmp_path / "out"
    fn, argv = {
        "dsee-prune": (prune, [checkpoint, "--prune-heads", "0.5"]),
        "dsee-tune": (
            tune,
            ["--model", tiny_bases["bert"], "--train", sst_like["train"], "--max-steps", "1"],
        ),
        "dsee-bench": (bench, ["--engine", tmp_path / "e", "--baseline", tmp_path / "b"]),
    }[command]
    holder = Output(out, overwrite=False)
    holder.start()
    try:
        code, stdout, err = run_cli(fn, [*argv, "--output", out], capsys)
    finally:
        holder.abort()
    lines = err.strip().splitlines()
    assert code == 2 and "saved" not in stdout, err
    assert lines[-1] == (
        f"error: another process (pid {os.getpid()}) is writing --output '{out}': wait for it to finish, or "
        f"pass another --output"
    ), err
    assert not out.exists()


KILLED = """
import os, signal, sys
from dsee_deploy.outputs import Output

work = Output(sys.argv[1], overwrite=False).start()
(work / "model.onnx").write_bytes(b"half an engine")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_nothing_taken_for_complete(checkpoint, tmp_path, capsys):
    """SIGKILL while holding the output: the OS lets go of its lock; what it left is hidden beside the target,
    and the next command writes the output without --overwrite and clears those leftovers."""
    out = tmp_path / "x"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, str(out)], env=ENV, capture_output=True, timeout=600
    )
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    assert all(p.name.startswith(".x.") for p in tmp_path.iterdir())  # the lock file and the work directory
    code, stdout, err = run_cli(export, [checkpoint, "--output", out], capsys)
    assert code == 0 and stdout.count("saved ") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


# --- a full disk ------------------------------------------------------------------------------------------------

# Run inside a mount namespace on a small tmpfs (argv: the mount, the old engine, the checkpoint, then the
# dsee-export command): it prints what the exports printed and left, for the test to assert on.
FULL_DISK = """
import json, shutil, subprocess, sys
from pathlib import Path

mnt, old, ckpt, export = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
shutil.copytree(old, mnt / "x")
before = {p.name: p.read_bytes() for p in (mnt / "x").iterdir()}
# 32 KB left: less than the tiny BERT's weights alone (80 KB in fp32), so that the graph's write fails.
(mnt / "filler").write_bytes(b"0" * (shutil.disk_usage(mnt).free - 32 * 1024))
runs = {}
for name, flags in (("y", []), ("x", ["--overwrite"])):
    done = subprocess.run([*export, ckpt, "--output", str(mnt / name), *flags], capture_output=True, text=True)
    runs[name] = [done.returncode, done.stdout, done.stderr]
from dsee_deploy.serve import Engine

print(json.dumps({
    "runs": runs,
    "left": sorted(p.name for p in mnt.iterdir()),
    "unchanged": {p.name: p.read_bytes() for p in (mnt / "x").iterdir()} == before,
    "predicted": len(Engine.load(mnt / "x", threads=1).predict(["a good film"])),
}))
"""


def _tmpfs_namespace(mnt: Path) -> list[str]:
    """The command prefix that runs what follows with a 2 MB tmpfs at `mnt`, in a user and mount namespace of
    its own (no root needed, nothing mounted outside it); skips the test where this system allows none."""
    if shutil.which("unshare") is None:
        pytest.skip(
            "a full disk is made with a tmpfs in a mount namespace: unshare (util-linux) is not installed"
        )
    mnt.mkdir()
    prefix = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        'mount -t tmpfs -o size=2m tmpfs "$1" && shift && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*prefix, str(mnt), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs can be mounted in a user namespace here ({probe.stderr.strip()})")
    return [*prefix, str(mnt)]


def test_a_full_disk_is_one_line_and_keeps_the_old_engine(checkpoint, tmp_path):
    """ENOSPC for real: a tmpfs with 32 KB left. Each export is refused in one line naming the output, the free
    space and what the engine needs; nothing half-written is left (no work directory, lock file or failed
    export), a new output is not created, and the engine already at an output (--overwrite) is as it was and
    loads."""
    import dsee_deploy as dd

    dd.export(checkpoint, tmp_path / "old")
    mnt = tmp_path / "mnt"
    done = subprocess.run(
        [*_tmpfs_namespace(mnt), sys.executable, "-c", FULL_DISK, str(mnt), str(tmp_path / "old")]
        + [str(checkpoint), *DSEE_EXPORT],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=1200,  # two exports; a hang, not a slow machine
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("y", "x"):
        code, stdout, stderr = report["runs"][name]
        lines = stderr.strip().splitlines()
        assert code == 2 and "saved" not in stdout and len(lines) == 1, stderr[-3000:]
        assert lines[0].startswith(
            f"error: no space left on device writing --output '{mnt / name}': '{mnt}' has "
        )
        needs = r" KB free; the engine needs at least [\d.]+ KB \([\d,]+ weights in fp32\): free space there"
        assert re.search(needs, lines[0]), lines[0]
    assert "is unchanged" in report["runs"]["x"][2] and "is unchanged" not in report["runs"]["y"][2]
    assert report["left"] == ["filler", "x"]
    assert report["unchanged"] and report["predicted"] == 1
