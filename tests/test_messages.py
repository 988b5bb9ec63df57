"""One line instead of a traceback, and messages that name the cause (issue 12, items 11 and 12)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import FAST, make_checkpoint, run_cli, sentences, write_tsv

from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.export import main as export
from dsee_deploy.cli.prune import main as prune
from dsee_deploy.cli.tune import main as tune
from dsee_deploy.errors import DSEEError
from dsee_deploy.serve import Engine


def last_error(err: str) -> str:
    """The error line (progress bars may precede it); it must be the only one and the last."""
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


DATA = {
    "empty": ("train.tsv", "", r"is empty: it needs a header line and rows"),
    "header-only": ("train.tsv", "sentence\tlabel\n", r"has a header \(sentence, label\) and no rows"),
    "non-utf8": ("train.tsv", b"sentence\tlabel\ngood\t1\ncaf\xe9 bad\t0\n", r"line 3 is not UTF-8"),
    "ragged": (
        "train.tsv",
        "sentence\tlabel\ngood\t1\nbad\t0\textra\n",
        r"line 3: expected 2 fields .*saw 3",
    ),
    "empty-label": (
        "train.tsv",
        "sentence\tlabel\ngood\t1\nbad\t\ndull\t0\n",
        r"without a label .*\(line 3\)",
    ),
    "nan-label": ("train.csv", "sentence,label\ngood,1\nbad,nan\n", r"without a label .*\(line 3\)"),
    "label-as-text": (
        "train.tsv",
        "sentence\tlabel\ngood\t1\nbad\t0\n",
        r"--text-column 'label' .* holds int",
    ),
}


@pytest.mark.parametrize("case", sorted(DATA))
def test_bad_training_data_names_the_file_the_line_and_the_cause(case, tiny_bases, tmp_path, capsys):
    name, content, expected = DATA[case]
    train = write(tmp_path / name, content)
    extra = ["--text-column", "label"] if case == "label-as-text" else []
    argv = ["--model", tiny_bases["bert"], "--train", train, "--output", tmp_path / "out", *FAST, *extra]
    code, _, err = run_cli(tune, argv, capsys)
    assert code == 2
    line = last_error(err)
    assert re.search(expected, line) and str(train) in line, line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--lr", "0"], "learning rate must be > 0"),
        (["--num-sparse", "1000000"], r"--num-sparse 1000000 is more than the 1,024 entries"),
    ],
)
def test_bad_tuning_numbers_are_one_line(flags, expected, tiny_bases, sst_like, tmp_path, capsys):
    argv = [
        "--model",
        tiny_bases["bert"],
        "--train",
        sst_like["train"],
        "--output",
        tmp_path / "o",
        *FAST,
        *flags,
    ]
    code, _, err = run_cli(tune, argv, capsys)
    assert code == 2 and re.search(expected, last_error(err))


def test_a_tab_separated_txt_file_is_read_as_a_table(tiny_bases, tmp_path, capsys):
    rows = [(s, ["neg", "pos"][y]) for s, y in sentences(48, seed=7)]
    train = write_tsv(tmp_path / "train.txt", ["sentence", "label"], rows)
    argv = ["--model", tiny_bases["bert"], "--train", train, "--output", tmp_path / "out", *FAST]
    code, _, err = run_cli(tune, argv, capsys)
    assert code == 0, err
    assert "reading it as a .tsv table" in err
    task = json.loads((tmp_path / "out" / "dsee_config.json").read_text())["task"]
    assert task["kind"] == "classification" and task["label_names"] == ["neg", "pos"]


def test_damaged_checkpoints_are_one_line_in_export_and_prune(tiny_bases, tmp_path, capsys):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    truncated = tmp_path / "truncated-tokenizer"
    shutil.copytree(tmp_path / "ckpt", truncated)
    text = (truncated / "tokenizer.json").read_text()
    (truncated / "tokenizer.json").write_text(text[: len(text) // 2])
    no_record = tmp_path / "no-record"
    shutil.copytree(tmp_path / "ckpt", no_record)
    (no_record / "dsee_config.json").unlink()
    cases = [
        (export, [truncated, "--output", tmp_path / "e1"], "could not load the tokenizer"),
        (
            prune,
            [truncated, "--prune-heads", "0.5", "--importance", "wabs", "--output", tmp_path / "p1"],
            "could not load the tokenizer",
        ),
        (export, [no_record, "--output", tmp_path / "e2"], "has adapter.safetensors but no dsee_config.json"),
    ]
    for cli, argv, expected in cases:
        code, _, err = run_cli(cli, argv, capsys)
        assert code == 2 and expected in last_error(err), err
        assert not (tmp_path / "e1").exists() and not (tmp_path / "p1").exists()


def test_engine_load_refuses_a_bad_max_length_in_one_line(classifier, engines):
    for value, expected in ((-5, "max_length=-5 is too short"), ("64", "is not a token count")):
        with pytest.raises(DSEEError, match=expected):
            Engine.load(engines["classification"], max_length=value)


def test_dsee_bench_bad_engines_are_one_line_before_the_benchmark(engines, tmp_path, capsys):
    cls = engines["classification"]

    def variant(name, damage):
        path = tmp_path / name
        shutil.copytree(cls, path)
        damage(path)
        return path

    no_config = variant("no-config", lambda p: (p / "config.json").unlink())
    truncated = variant(
        "truncated", lambda p: write(p / "model.onnx", (p / "model.onnx").read_bytes()[:1000])
    )
    tokenizer = variant("tokenizer", lambda p: write(p / "tokenizer.json", "{"))
    bad_json = variant("bad-json", lambda p: write(p / "manifest.json", "{not json"))
    eval_data = write_tsv(tmp_path / "eval.tsv", ["sentence", "label"], [("good", "positive")])
    base = ["--baseline", cls, "--rounds", "3", "--batch-sizes", "1", "--seq-lens", "8", "--no-torch"]
    cases = [
        ([*base, "--engine", no_config, "--output", tmp_path / "o"], "is missing config.json"),
        (
            [*base, "--engine", truncated, "--output", tmp_path / "o"],
            "model.onnx is not the file that was exported",
        ),
        (
            [*base, "--engine", tokenizer, "--eval-data", eval_data, "--output", tmp_path / "o"],
            "tokenizer.json is not the file",
        ),
        (
            [*base, "--engine", bad_json, "--output", tmp_path / "o"],
            f"'{bad_json / 'manifest.json'}' is not readable JSON",
        ),
        ([*base, "--engine", cls, "--output", "/proc/x"], "cannot be written"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(bench, argv, capsys)
        assert code == 2 and expected in last_error(err), (argv, err)
    assert not (tmp_path / "o").exists()


def test_dsee_bench_refuses_a_pickle_only_dense_source_in_one_line(tiny_bases, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    source = tmp_path / "dense-model"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bases["bert"], num_labels=2)
    model.save_pretrained(source)
    shutil.copy(tiny_bases["bert"] / "tokenizer.json", source)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bases["bert"] / name).is_file():
            shutil.copy(tiny_bases["bert"] / name, source)
    code, _, err = run_cli(export, [source, "--output", tmp_path / "dense"], capsys)
    assert code == 0, err
    model.save_pretrained(source, safe_serialization=False)  # the source now holds pickle weights only
    (source / "model.safetensors").unlink()
    argv = ["--baseline", tmp_path / "dense", "--engine", tmp_path / "dense", "--rounds", "3"]
    argv += ["--batch-sizes", "1", "--seq-lens", "8", "--output", tmp_path / "o"]
    code, _, err = run_cli(bench, [*argv[:3], "pruned=" + str(tmp_path / "dense"), *argv[4:]], capsys)
    assert code == 2 and "has no safetensors weights (pickle weights are never loaded)" in last_error(err), (
        err
    )


def test_label_names_and_the_majority_class_score(tiny_bases, tmp_path, capsys):
    """Imbalanced 0/1 data: the engine answers the given names, and the majority-class score stands beside the
    metric (a model that learnt nothing matches it)."""
    rows = [(s, 0 if i % 4 else 1) for i, (s, _) in enumerate(sentences(96, seed=8))]  # 75 % zeros
    train = write_tsv(tmp_path / "train.tsv", ["sentence", "label"], rows)
    dev = write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], rows[:40])
    out = tmp_path / "run"
    argv = ["--model", tiny_bases["bert"], "--train", train, "--eval", dev, "--output", out, *FAST]
    code, stdout, err = run_cli(tune, [*argv, "--label-names", "negative,positive"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_majority_accuracy"] == pytest.approx(30 / 40)
    assert metrics["eval_majority_f1"] == 0.0  # the majority class is not the positive one
    assert "(majority class 0.7500)" in stdout
    code, stdout, err = run_cli(
        export, [out, "--output", tmp_path / "engine", "--validate-data", dev], capsys
    )
    assert code == 0, err  # the data's 0/1 labels map onto the names
    assert "always answering the most frequent label ('negative') would score accuracy 75.00" in stdout
    argv_bench = [
        "--baseline",
        f"a={tmp_path / 'engine'}",
        "--engine",
        f"b={tmp_path / 'engine'}",
        "--no-torch",
    ]
    argv_bench += ["--rounds", "3", "--batch-sizes", "1", "--seq-lens", "8", "--eval-data", dev]
    code, _, err = run_cli(bench, [*argv_bench, "--output", tmp_path / "bench"], capsys)
    assert code == 0, err
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "most frequent label of the evaluation data ('negative') would score accuracy 75.00" in report
    predictions = Engine.load(tmp_path / "engine").predict(["a good film"])
    assert predictions[0]["label"] in ("negative", "positive")
    code, _, err = run_cli(tune, [*argv, "--label-names", "a,b,c", "--overwrite"], capsys)
    assert code == 2 and "gives 3 names, but" in last_error(err)
