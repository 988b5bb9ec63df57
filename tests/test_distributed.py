"""Multi-process tuning (issue 12, item 13): a real 2-process torchrun on CPU (gloo) trains data-parallel,
prunes and distils the same way in both processes, and writes one checkpoint whose recorded metrics are those
of the whole eval set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dsee_deploy as dd
from dsee_deploy import load_merged

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun is not installed",
)


def test_torchrun_two_processes_write_one_checkpoint_with_whole_eval_set_metrics(
    tiny_bases, sst_like, tmp_path
):
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m", "dsee_deploy.cli.tune"]
    cmd += [
        "--model",
        str(tiny_bases["bert"]),
        "--train",
        str(sst_like["train"]),
        "--eval",
        str(sst_like["dev"]),
    ]
    cmd += [
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "24",
        "--prune-heads",
        "0.5",
        "--distill",
    ]
    done = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved ") == 1, done.stdout  # one summary
    assert done.stderr.count("DSEE: bert from") == 1 and done.stderr.count("after pruning: trainable") == 1
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in done.stderr  # really data-parallel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one checkpoint, no work directory left
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["train_steps"] == 8  # 4 steps of tuning and 4 of re-tuning, 16 examples a step
    # The same checkpoint evaluated by one process: the recorded metrics are the whole eval set's.
    again = dd.tune(
        sst_like["train"],
        tmp_path / "single",
        eval=sst_like["dev"],
        resume=out,
        config=dd.TuneConfig(epochs=0, batch_size=8),
    )
    assert again.metrics["eval_accuracy"] == recorded["eval_accuracy"]
    assert again.metrics["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-5)  # summation order
    merged, tok = load_merged(out)  # it reloads, shrunk as its pruning.json says
    heads = [len(e["kept_heads"]) for e in json.loads((out / "pruning.json").read_text())["layers"]]
    assert sum(heads) == 4 and merged(**tok(["a good film"], return_tensors="pt")).logits.shape == (1, 2)
