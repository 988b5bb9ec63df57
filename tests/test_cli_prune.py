"""dsee-tune with pruning, dsee-prune and --report, --resume, on tiny models; and their bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST, SAME_FUNCTION, run_cli

from dsee_deploy import load_dsee, load_merged
from dsee_deploy.checkpoint import MASKS_FILE, PRUNING_FILE
from dsee_deploy.cli.prune import main as prune
from dsee_deploy.cli.tune import main as tune
from dsee_deploy.pruning import save_masks


def test_tune_prune_retune_in_one_command_with_distillation(tiny_bases, sst_like, tmp_path, capsys):
    out = tmp_path / "s2"
    code, _, err = run_cli(
        tune,
        [
            "--model",
            tiny_bases["distilbert"],
            "--train",
            sst_like["train"],
            "--eval",
            sst_like["dev"],
            "--output",
            out,
            "--prune-heads",
            "0.5",
            "--prune-ffn",
            "0.5",
            "--retune-epochs",
            "1",
            "--distill",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((out / PRUNING_FILE).read_text())
    assert sum(len(e["kept_heads"]) for e in record["layers"]) == 4  # half of 2 x 4
    assert sum(len(e["kept_ffn"]) for e in record["layers"]) == 48  # half of 2 x 48
    assert record["importance"]["structured"] == "taylor"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_accuracy" in metrics["before_pruning"] and metrics["pruning"]["flops_ratio"] < 0.6
    model, tok, _ = load_dsee(out)
    merged, _ = load_merged(out)
    batch = tok(["the film was good", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, **SAME_FUNCTION)


def test_prune_then_resume_then_report(tuned, sst_like, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    code, out, err = run_cli(
        prune, [tuned, "--prune-heads", "0.5", "--prune-ffn", "0.5", "--output", pruned], capsys
    )
    assert code == 0, err
    assert "encoder FLOPs at sequence length 128" in out and "dsee-tune --resume" in out
    # unstructured on top of structured is compatible; the masks file appears
    both = tmp_path / "both"
    code, _, err = run_cli(prune, [pruned, "--prune-unstructured", "0.3", "--output", both], capsys)
    assert code == 0, err
    assert (both / MASKS_FILE).is_file()
    retuned = tmp_path / "retuned"
    code, _, err = run_cli(
        tune,
        [
            "--resume",
            both,
            "--train",
            sst_like["train"],
            "--eval",
            sst_like["dev"],
            "--output",
            retuned,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    before, after = (
        json.loads((both / PRUNING_FILE).read_text()),
        json.loads((retuned / PRUNING_FILE).read_text()),
    )
    assert after["layers"] == before["layers"]
    code, out, _ = run_cli(prune, [retuned, "--report"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["layer", "heads", "FFN", "unstructured", "sparsity"]
    assert len([line for line in lines if line.strip()[:1].isdigit()]) == 2  # one row per layer
    assert "non-zero" in out and "dense" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--prune-heads", "1.0"], "--prune-heads must be in \\[0, 1\\), got 1.0"),
        (["--prune-ffn", "-0.2"], "--prune-ffn must be in \\[0, 1\\)"),
        (["--prune-unstructured", "0.5", "--importance", "taylor"], "taylor scores heads"),
        ([], "nothing to prune"),
        (["--prune-heads", "0.5"], "pass --output"),
    ],
)
def test_dsee_prune_bad_options(argv, expected, tuned, tmp_path, capsys):
    import re

    code, _, err = run_cli(prune, [tuned, *argv], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(expected, errors[0]), err


def test_pruning_twice_the_same_way_fails_clearly(tuned, tmp_path, capsys):
    assert run_cli(prune, [tuned, "--prune-heads", "0.25", "--output", tmp_path / "p1"], capsys)[0] == 0
    code, _, err = run_cli(
        prune, [tmp_path / "p1", "--prune-ffn", "0.25", "--output", tmp_path / "p2"], capsys
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: this checkpoint's heads / FFN neurons"
    )
    assert not (tmp_path / "p2").exists()


def test_report_of_an_unpruned_checkpoint_says_what_to_do(tuned, capsys):
    code, _, err = run_cli(prune, [tuned, "--report"], capsys)
    assert code == 2 and "is not pruned (no pruning.json): prune it with dsee-prune first" in err


def test_a_mask_file_that_does_not_match_fails_on_resume(tuned, sst_like, tmp_path, capsys):
    pruned = tmp_path / "u"
    assert run_cli(prune, [tuned, "--prune-unstructured", "0.5", "--output", pruned], capsys)[0] == 0
    save_masks({"layer.0.query": torch.ones(3, 3, dtype=torch.bool)}, pruned / MASKS_FILE)
    code, _, err = run_cli(
        tune, ["--resume", pruned, "--train", sst_like["train"], "--output", tmp_path / "r", *FAST], capsys
    )
    assert code == 2
    assert (
        err.strip().splitlines()[-1].startswith("error: ")
        and "masks.safetensors' does not match the model" in err
    )
