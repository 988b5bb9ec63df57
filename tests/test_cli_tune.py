"""dsee-tune end to end on tiny models and data, and its answers to bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, SAME_FUNCTION, run_cli, sentences, write_tsv

from dsee_deploy import load_dsee, load_merged
from dsee_deploy.cli.tune import main as tune
from dsee_deploy.tuning import dsee_layers


def run(argv, capsys) -> tuple[int, str]:
    code, _, err = run_cli(tune, argv, capsys)
    return code, err


def test_tune_writes_a_checkpoint_that_loads_merged(tiny_bases, sst_like, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run(
        [
            "--model",
            tiny_bases["bert"],
            "--train",
            sst_like["train"],
            "--eval",
            sst_like["dev"],
            "--test",
            sst_like["dev"],
            "--output",
            out,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert {"dsee_config.json", "adapter.safetensors", "config.json", "metrics.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "trainer").exists()  # Trainer's full-model checkpoints are removed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "trainable_parameters",
        "total_parameters",
        "eval_accuracy",
        "test_accuracy",
        "train_wall_time_s",
    ):
        assert key in metrics
    assert metrics["trainable_parameters"] < metrics["total_parameters"]
    model, tok, _ = load_dsee(out)
    merged, _ = load_merged(out)
    batch = tok(["the film was good", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, **SAME_FUNCTION)
    assert merged.config.id2label == {0: "0", 1: "1"}


def test_training_changes_only_the_updates_and_the_head(tiny_bases, sst_like, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert (
        run(["--model", tiny_bases["bert"], "--train", sst_like["train"], "--output", out, *FAST], capsys)[0]
        == 0
    )
    base = load_file(str(tiny_bases["bert"] / "model.safetensors"))
    model, _, _ = load_dsee(out)
    state = model.state_dict()
    # frozen: every base tensor is bit-identical after training
    for name, tensor in base.items():
        key = next(k for k in state if k.replace(".base_layer", "").endswith(name))
        assert torch.equal(state[key], tensor), key
    assert any(layer.updates["query"].lora_B.abs().sum() > 0 for _, layer in dsee_layers(model))


def test_pairs_with_string_labels_from_jsonl(tiny_bases, tmp_path, capsys):
    rows = [
        {"question": a, "sentence": b, "label": ["entailment", "not_entailment"][y]}
        for (a, y), (b, _) in zip(sentences(40, 3), sentences(40, 4), strict=True)
    ]
    path = tmp_path / "qnli.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    code, err = run(
        ["--model", tiny_bases["roberta"], "--train", path, "--eval", path, "--output", out, *FAST], capsys
    )
    assert code == 0, err
    task = json.loads((out / "dsee_config.json").read_text())["task"]
    assert (task["text_column"], task["text_pair_column"]) == ("question", "sentence")
    assert task["label_names"] == ["entailment", "not_entailment"]
    merged, _ = load_merged(out)
    assert merged.config.label2id == {"entailment": 0, "not_entailment": 1}


def test_regression_on_float_labels_reports_correlations(tiny_bases, tmp_path, capsys):
    rows = [
        (a, b, round(1.7 * y + 0.3 * i % 3, 2))
        for i, ((a, y), (b, _)) in enumerate(zip(sentences(40, 5), sentences(40, 6), strict=True))
    ]
    path = write_tsv(tmp_path / "sts.tsv", ["sentence1", "sentence2", "score"], rows)
    out = tmp_path / "run"
    code, err = run(
        ["--model", tiny_bases["distilbert"], "--train", path, "--eval", path, "--output", out, *FAST], capsys
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_pearson" in metrics and "eval_spearman" in metrics
    assert json.loads((out / "dsee_config.json").read_text())["task"]["kind"] == "regression"


def test_gpt2_causal_lm_on_a_text_file(tiny_bases, tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(s for s, _ in sentences(200, 7)))
    out = tmp_path / "run"
    code, err = run(
        ["--model", tiny_bases["gpt2"], "--train", path, "--eval", path, "--output", out, *FAST], capsys
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_perplexity"] > 1
    model, tok, info = load_dsee(out)
    assert info["task"]["kind"] == "causal-lm"
    layers = list(dsee_layers(model))
    # the default targets, all six: the packed c_attn of each block carries three updates (the query, key and
    # value rows), and each of attn.c_proj, mlp.c_fc and mlp.c_proj one
    updates = {name: set(layer.updates) for name, layer in layers}
    assert len(updates) == 8 and sum(u == {"query", "key", "value"} for u in updates.values()) == 2
    assert sorted(n.split(".", 3)[-1] for n, u in updates.items() if u != {"query", "key", "value"}) == [
        "attn.c_proj",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_fc",
        "mlp.c_proj",
        "mlp.c_proj",
    ]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-train", "--train file '.*nope.tsv' does not exist"),
        ("unknown-column", "--text-column 'review' is not a column of .* pass one of them"),
        (
            "unknown-arch",
            "unknown architecture 'albert': supported model types are bert, distilbert, electra, gpt2",
        ),
        ("existing-output", "already exists and is not empty: pass --overwrite"),
        ("unknown-target", "unknown target module 'qkv'"),
        ("missing-model", "model directory '.*missing-model' does not exist"),
        ("bad-label-in-eval", "has label 'maybe', which the training data does not have"),
    ],
)
def test_bad_input_gets_one_clear_line_and_exit_2(case, expected, tiny_bases, sst_like, tmp_path, capsys):
    import re

    from transformers import AlbertConfig, AlbertModel

    args = {"--model": tiny_bases["bert"], "--train": sst_like["train"], "--output": tmp_path / "out"}
    extra: list = []
    if case == "missing-train":
        args["--train"] = tmp_path / "nope.tsv"
    elif case == "unknown-column":
        extra = ["--text-column", "review"]
    elif case == "unknown-arch":
        albert = tmp_path / "albert"
        AlbertModel(
            AlbertConfig(
                vocab_size=50,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=16,
                embedding_size=8,
            )
        ).save_pretrained(albert)
        args["--model"] = albert
    elif case == "existing-output":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "mine.txt").write_text("user data")
    elif case == "unknown-target":
        extra = ["--target-modules", "query,qkv"]
    elif case == "missing-model":
        args["--model"] = tmp_path / "missing-model"
    elif case == "bad-label-in-eval":
        args["--eval"] = write_tsv(tmp_path / "eval.tsv", ["sentence", "label"], [("good film", "maybe")])
    code, err = run([x for kv in args.items() for x in kv] + extra + FAST, capsys)
    assert code == 2
    # progress bars may precede it; the error itself is one line, and the last
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    assert re.search(expected, errors[0]), errors[0]
    if case == "existing-output":
        assert (tmp_path / "out" / "mine.txt").read_text() == "user data"  # nothing overwritten


def test_console_script_exits_non_zero_with_the_message(tmp_path):
    exe = Path(sys.executable).with_name("dsee-tune")
    proc = subprocess.run(
        [str(exe), "--train", str(tmp_path / "absent.tsv"), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --train file")


def test_without_the_tune_extra_the_cli_names_the_extra_to_install(tmp_path):
    # torch made unimportable in a real subprocess: what a serving-only install (core + serve) would see
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from dsee_deploy.cli.tune import main\n"
        f"sys.exit(main(['--train', 'x.tsv', '--output', {str(tmp_path / 'o')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: this needs the 'tune' extra (torch is not installed): pip install 'dsee-deploy[tune]'"
    )


def test_checkpoint_of_a_relative_model_path_loads_from_another_directory(
    tiny_bases, sst_like, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tiny_bases["bert"].parent)
    out = tmp_path / "run"
    assert run(["--model", "bert", "--train", sst_like["train"], "--output", out, *FAST], capsys)[0] == 0
    monkeypatch.chdir(tmp_path)
    merged, _ = load_merged(out)
    assert merged.config.model_type == "bert"
