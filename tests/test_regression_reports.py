"""Regression is reported in its own terms everywhere a metric is: dsee-export --validate-data, dsee-bench's
results.json, report.md and plots carry Pearson and Spearman, agreement counts predictions within 0.01 (never an
argmax of a single output), and a promised plot that is not drawn is explained in report.md. Real engines: the
tiny DistilBERT regression checkpoint of conftest's `engines`, exported to int8 here."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import dsee_deploy as dd
from dsee_deploy.bench.report import write_markdown
from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.export import main as export
from dsee_deploy.tasks import get_task

CORRELATIONS = ("pearson", "spearman")


@pytest.fixture(scope="module")
def int8_export(engines, tmp_path_factory) -> dict:
    """dsee-export --quantize int8 --validate-data of the tuned regression checkpoint: its directory, the data
    (40 sentence pairs with float scores) and what the command printed."""
    root = engines["regression"].parent
    out = tmp_path_factory.mktemp("regression-int8") / "engine"
    data = root / "sts.tsv"
    argv = [root / "regression-ckpt", "--output", out, "--quantize", "int8", "--validate-data", data]
    # A 32-wide model tuned for 4 steps loses a few points of Pearson to int8 on 40 pairs: the gate is not what
    # these tests check, the words and numbers around it are.
    argv += ["--max-metric-drop", "100"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = export([str(a) for a in argv])
    assert code == 0, printed.getvalue()
    return {"engine": out, "data": data, "stdout": printed.getvalue()}


def test_validate_data_scores_every_run_by_pearson_and_spearman(int8_export):
    report = json.loads((int8_export["engine"] / "manifest.json").read_text())["validate_data"]
    assert report["metric"] == "pearson" and report["metrics"] == list(CORRELATIONS)
    assert report["examples"] == 40 and "majority" not in report  # scores have no most frequent label
    results = report["results"]
    assert set(results) == {"pytorch", "onnx fp32", "onnx int8"}
    for entry in results.values():
        assert set(CORRELATIONS) <= set(entry) and "accuracy" not in entry
        assert entry["metric"] == entry["pearson"] and all(-100 <= entry[m] <= 100 for m in CORRELATIONS)


def test_validate_data_counts_predictions_within_0_01_and_says_so(int8_export):
    results = json.loads((int8_export["engine"] / "manifest.json").read_text())["validate_data"]["results"]
    assert results["onnx fp32"]["within_0.01_of_pytorch"] == "40/40"  # fp32 ONNX is PyTorch to ~1e-6
    assert {"within_0.01_of_pytorch", "within_0.01_of_onnx_fp32"} <= set(results["onnx int8"])
    assert not any(key.startswith("agreement") for entry in results.values() for key in entry)
    stdout = int8_export["stdout"]
    line = next(line for line in stdout.splitlines() if " examples of " in line)
    assert line.startswith("pearson on 40 examples of ")
    assert "onnx fp32 " in line and ", spearman " in line and "within 0.01 of pytorch 40/40" in line
    assert "within 0.01 of onnx fp32 " in line


def test_int8_validation_shapes_are_judged_within_0_01_not_by_argmax(int8_export):
    manifest = json.loads((int8_export["engine"] / "manifest.json").read_text())
    checks = manifest["validation_reduced"]["checks"]
    assert checks and all("within_0.01" in c and "argmax_agreement" not in c for c in checks)
    # One count per input row of each validation shape (batch 1, 2 and 4): one output each.
    assert [c["within_0.01"].split("/")[1] for c in checks] == ["1", "2", "4"]
    assert "outputs within 0.01 of PyTorch's " in int8_export["stdout"]
    assert "argmax" not in int8_export["stdout"]


@pytest.fixture(scope="module")
def regression_bench(engines, int8_export, tmp_path_factory):
    """dsee-bench of the int8 regression engine against the fp32 one, with --eval-data and --output."""
    out = tmp_path_factory.mktemp("regression-bench") / "bench"
    argv = [
        "--baseline", f"fp32={engines['regression']}", "--engine", f"int8={int8_export['engine']}",
        "--batch-sizes", "1", "--seq-lens", "8", "--rounds", "3", "--warmup", "1", "--threads", "1",
        "--no-torch", "--eval-data", int8_export["data"], "--output", out,
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = bench([str(a) for a in argv])
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


def test_bench_results_carry_pearson_and_spearman_per_variant(regression_bench):
    out, _ = regression_bench
    accuracy = json.loads((out / "results.json").read_text())["accuracy"]
    assert set(accuracy) == {"fp32", "int8"}
    for entry in accuracy.values():
        assert entry["metric"] == "pearson" and entry["value"] == entry["pearson"]
        assert all(-100 <= entry[m] <= 100 for m in CORRELATIONS) and "accuracy" not in entry


def test_bench_report_tables_show_the_correlations_in_their_metric_columns(regression_bench):
    out, stdout = regression_bench
    report = (out / "report.md").read_text()
    accuracy = json.loads((out / "results.json").read_text())["accuracy"]
    assert "| FFN / layer | pearson | spearman | task metric |" in report
    row = next(line for line in report.splitlines() if line.startswith("| int8 | onnxruntime |"))
    cells = [c.strip() for c in row.strip("|").split("|")][-3:]
    int8 = accuracy["int8"]
    assert cells == [f"{int8['pearson']:.2f}", f"{int8['spearman']:.2f}", f"pearson {int8['pearson']:.2f}"]
    assert "| accuracy |" not in report and "argmax" not in report + stdout


def test_bench_draws_accuracy_vs_speedup_by_pearson_for_regression(regression_bench):
    out, stdout = regression_bench
    assert {"latency.png", "speedup_vs_flops.png", "accuracy_vs_speedup.png"} <= {
        p.name for p in out.iterdir()
    }
    assert "accuracy_vs_speedup.png" in stdout.splitlines()[-1]  # the CLI's "wrote ..." line
    assert "not drawn" not in (out / "report.md").read_text()


def test_speed_target_table_shows_the_correlations(regression_bench, tmp_path):
    """The recorded run with its int8 variant marked as pruned to a 1.5x target (what dsee-prune --target-speedup
    records): the speed-target table scores it by Pearson and Spearman."""
    out, _ = regression_bench
    results = json.loads((out / "results.json").read_text())
    int8 = next(v for v in results["variants"] if v["name"] == "int8")
    int8.update(target_speedup=1.5, predicted_speedup=1.4)
    write_markdown(results, tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text()
    assert "| variant | precision | target | predicted | measured | pearson | spearman |" in report
    row = next(line for line in report.splitlines() if line.startswith("| int8 | int8 | 1.5x |"))
    scores = results["accuracy"]["int8"]
    assert row.endswith(f"| {scores['pearson']:.2f} | {scores['spearman']:.2f} |")


def test_report_says_in_one_line_why_accuracy_vs_speedup_is_missing(engines, int8_export, tmp_path):
    config = dd.BenchConfig(
        batch_sizes=[1], seq_lens=[8], rounds=3, warmup=1, threads=1, torch_variants=False
    )
    out = tmp_path / "bench"
    dd.bench([f"int8={int8_export['engine']}"], [f"fp32={engines['regression']}"], config, output=out)
    assert not (out / "accuracy_vs_speedup.png").exists() and (out / "latency.png").exists()
    lines = [line for line in (out / "report.md").read_text().splitlines() if "not drawn" in line]
    assert lines == [
        "accuracy_vs_speedup.png is not drawn: no --eval-data was given (pass labelled data to plot the task "
        "metric against the speed-up)."
    ]


@pytest.mark.parametrize(
    "kind, got, want, agreement, words, against_pytorch",
    [
        # Two inputs of three logits: the argmax agrees on the first only, however far the values moved.
        (
            "classification",
            [[0.1, 2.0, 0.3], [1.0, 0.0, 0.9]],
            [[0.0, 1.0, 0.5], [0.0, 0.1, 0.2]],
            "1/2",
            "argmax agreement",
            "agreement with pytorch",
        ),
        # Three inputs of one value: 0.005 and 0.009 apart are within 0.01, 0.12 apart is not.
        (
            "regression",
            [[0.5], [1.009], [2.12]],
            [[0.505], [1.0], [2.0]],
            "2/3",
            "outputs within 0.01 of PyTorch's",
            "within 0.01 of pytorch",
        ),
    ],
)
def test_each_task_counts_and_words_agreement_its_own_way(kind, got, want, agreement, words, against_pytorch):
    spec = get_task(kind)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert spec.output_agreement(got, want) == agreement
    assert spec.agreement(spec.predictions(got), spec.predictions(want)) == agreement
    assert spec.output_agreement_words == words and spec.agreement_with("pytorch") == against_pytorch
