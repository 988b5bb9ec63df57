"""dsee-bench on tiny engines: it runs, results.json holds its schema, and every speed-up is the median of the
per-round ratios of the best times it recorded. No test asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import dsee_deploy as dd
from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.export import main as export
from dsee_deploy.errors import DSEEError
from dsee_deploy.flops import encoder_flops


@pytest.fixture
def engines(pruned_bert, tmp_path):
    """dense (the unpruned checkpoint), pruned, pruned-int8: real dsee-export directories."""
    out = {}
    for name, src, config in (
        ("dense", tmp_path / "dense", dd.ExportConfig()),
        ("pruned", pruned_bert, dd.ExportConfig()),
        ("pruned-int8", pruned_bert, dd.ExportConfig(quantize="int8")),
    ):
        out[name] = tmp_path / "engines" / name
        dd.export(src, out[name], config)
    return out


def test_bench_verb_returns_the_results_it_writes(engines, tmp_path):
    config = dd.BenchConfig(
        batch_sizes=[1], seq_lens=[8], rounds=3, warmup=1, threads=1, torch_variants=False
    )
    results = dd.bench([f"pruned={engines['pruned']}"], [f"dense={engines['dense']}"], config)
    assert isinstance(results, dd.BenchResults) and results.output is None
    row = next(s for s in results.data["speedups"] if s["variant"] == "pruned")
    assert results.speedup("pruned") == row["median"] == results.speedup("pruned", "dense", batch=1, seq=8)
    written = dd.bench([engines["pruned"]], [engines["dense"]], config, output=tmp_path / "b")
    on_disk = json.loads((tmp_path / "b" / "results.json").read_text())
    assert on_disk["speedups"] == written.data["speedups"] and written.output == tmp_path / "b"
    with pytest.raises(dd.DSEEError, match="--overwrite"):
        dd.bench([engines["pruned"]], [engines["dense"]], config, output=tmp_path / "b")


def test_bench_records_timings_speedups_flops_and_accuracy(engines, labelled, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "--baseline", f"dense={engines['dense']}", "--engine", f"pruned={engines['pruned']}",
        "--engine", f"pruned-int8={engines['pruned-int8']}", "--batch-sizes", "1,2", "--seq-lens", "8",
        "--rounds", "4", "--warmup", "1", "--threads", "1", "--spin-us", "50", "--eval-data", labelled,
        "--output", out,
    ]  # fmt: skip
    code, stdout, err = run_cli(bench, argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "dsee-bench/2" and results["threads"] == 1
    assert {"platform", "cpu_count", "cpu_flags"} <= set(results["machine"])
    assert {"onnxruntime", "torch"} <= set(results["versions"])
    assert results["method"]["spin_us"] == 50 and results["method"]["rounds"] == 4
    assert "ONNX Runtime threads spin at most 50 us" in (out / "report.md").read_text()
    names = [v["name"] for v in results["variants"]]
    # PyTorch eager on the dense source and PyTorch with the DSEE branch join by default.
    assert names == ["dense", "pruned", "pruned-int8", "pytorch eager (dense)", "pytorch + DSEE branch"]
    variants = {v["name"]: v for v in results["variants"]}
    assert variants["pruned"]["heads"] == [2, 0] and variants["dense"]["heads"] == [4, 4]
    assert variants["pruned-int8"]["size_bytes"] < variants["pruned"]["size_bytes"]
    assert len(results["timings"]) == 5 * 2
    timings = {(t["variant"], t["batch"]): t for t in results["timings"]}
    for t in results["timings"]:
        assert len(t["round_best_ms"]) == 4 and t["p50_ms"] <= t["p99_ms"]
        assert t["throughput"] == pytest.approx(t["batch"] / t["p50_ms"] * 1000)
    baselines = {v["name"] for v in results["variants"] if v["baseline"]}
    assert baselines == {"dense", "pytorch eager (dense)"}
    for s in results["speedups"]:
        base = np.asarray(timings[(s["baseline"], s["batch"])]["round_best_ms"])
        mine = np.asarray(timings[(s["variant"], s["batch"])]["round_best_ms"])
        assert s["median"] == pytest.approx(float(np.median(base / mine)), rel=1e-3)
        assert s["min"] <= s["median"] <= s["max"]
    pruned = next(s for s in results["speedups"] if (s["variant"], s["baseline"]) == ("pruned", "dense"))
    head = variants["dense"]["head_size"]
    dense_flops = encoder_flops(variants["dense"]["hidden"], head, [4, 4], [48, 48], 8)
    assert pruned["flops_bound"] == pytest.approx(dense_flops / encoder_flops(32, head, [2, 0], [16, 0], 8))
    assert pruned["bound_achieved"] == pytest.approx(pruned["median"] / pruned["flops_bound"])
    accuracy = results["accuracy"]
    assert set(accuracy) == set(names) and all(a["examples"] == 64 for a in accuracy.values())
    # Same weights, same tokens: the dense engine and PyTorch eager on its source agree exactly in accuracy.
    assert accuracy["dense"]["value"] == accuracy["pytorch eager (dense)"]["value"]
    assert accuracy["pruned"]["value"] == accuracy["pytorch + DSEE branch"]["value"]
    report = (out / "report.md").read_text()
    assert "## Batch 2, sequence 8" in report and "| pruned-int8 |" in report
    assert {"latency.png", "speedup_vs_flops.png", "accuracy_vs_speedup.png"} <= {
        p.name for p in out.iterdir()
    }
    # Results are not overwritten without --overwrite.
    code, _, err = run_cli(bench, argv, capsys)
    assert code == 2 and "--overwrite" in err


def test_suite_runs_its_steps_then_the_bench(pruned_bert, tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f"""
title = "tiny"
[vars]
ckpt = "{pruned_bert}"
dense = "{tmp_path / "dense"}"
[[step]]
run = "export"
checkpoint = "{{dense}}"
output = "{{work}}/engines/dense"
[[step]]
run = "export"
checkpoint = "{{ckpt}}"
output = "{{work}}/engines/pruned-int8"
config = {{ quantize = "int8" }}
[bench]
baselines = ["dense={{work}}/engines/dense"]
engines = ["pruned={{work}}/engines/pruned-int8"]
batch_sizes = [1]
seq_lens = [8]
rounds = 3
threads = 1
torch_variants = false
"""
    )
    out = tmp_path / "bench"
    code, stdout, err = run_cli(bench, ["--suite", suite, "--output", out], capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["title"] == "tiny" and [v["name"] for v in results["variants"]] == ["dense", "pruned"]
    assert dd.Manifest.read(out / "work" / "engines" / "pruned-int8").precision == "int8"
    # A second run resumes: steps whose output exists are skipped.
    code, stdout, err = run_cli(bench, ["--suite", suite, "--output", out, "--overwrite"], capsys)
    assert code == 0 and stdout.count("exists, skipped") == 2


SENTENCES_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sst2_sentences.py"


def test_suite_script_step_writes_its_file_once(tmp_path, capsys):
    """A `script` step (the frontier suite's SST-2 sentences file) runs the real script, then is skipped."""
    from dsee_deploy.bench import suite

    train = tmp_path / "train.tsv"
    # "good film" and "dull" are word spans of longer rows: phrases; the other two are whole sentences.
    train.write_text("sentence\tlabel\ngood film\t1\na good film\t1\ndull\t0\na dull and long film\t0\n")
    path = tmp_path / "suite.toml"
    path.write_text(
        f"""
[vars]
train = "{{work}}/train-sentences.tsv"
[[step]]
run = "script"
script = "{SENTENCES_SCRIPT}"
args = ["{train}", "{{train}}", "--rows", "3"]
creates = "{{train}}"
[bench]
"""
    )
    steps = suite.load(str(path), tmp_path / "work", {})
    suite.run_steps(steps)
    written = (tmp_path / "work" / "train-sentences.tsv").read_text().splitlines()
    assert written == ["sentence\tlabel", "a good film\t1", "a dull and long film\t0", "good film\t1"]
    suite.run_steps(steps)
    assert "exists, skipped" in capsys.readouterr().out

    # A script that fails, one that is missing, and a step without `creates` are each one line.
    path.write_text(path.read_text().replace(str(train), str(tmp_path / "absent.tsv")))
    with pytest.raises(DSEEError, match="exited with status 1"):
        suite.run_steps(suite.load(str(path), tmp_path / "other", {}))
    path.write_text(path.read_text().replace(str(SENTENCES_SCRIPT), "no/such/script.py"))
    with pytest.raises(DSEEError, match="'no/such/script.py', which does not exist"):
        suite.run_steps(suite.load(str(path), tmp_path / "other", {}))
    path.write_text(path.read_text().replace('creates = "{train}"', ""))
    with pytest.raises(DSEEError, match="needs `script` and `creates`"):
        suite.load(str(path), tmp_path / "other", {})


def _suite_without_engines(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[bench]\nbaselines = ["x"]\n')
    return path


def test_bench_options_from_a_suite_are_type_checked(tmp_path):
    from dsee_deploy.bench import suite
    from dsee_deploy.errors import DSEEError

    for bad in ("100", 1.5, True):
        with pytest.raises(DSEEError, match="--spin-us .* must be a whole number"):
            dd.BenchConfig(spin_us=bad)
    path = tmp_path / "typo.toml"
    path.write_text('[[step]]\nrun = "export"\ncheckpoint = "c"\noutptu = "o"\n[bench]\n')
    with pytest.raises(DSEEError, match=r"keys \['outptu'\] it does not take"):
        suite.load(str(path), tmp_path, {})
    path.write_text(
        '[[step]]\nrun = "export"\ncheckpoint = "c"\noutput = "o"\nconfig = { int8 = true }\n[bench]\n'
    )
    with pytest.raises(DSEEError, match=r"sets config \['int8'\], which ExportConfig does not have"):
        suite.run_steps(suite.load(str(path), tmp_path, {}))


def test_bench_bad_input_is_one_line(engines, tmp_path, capsys):
    cases = [
        (["--engine", engines["pruned"], "--output", tmp_path / "o"], "--baseline"),
        (
            ["--baseline", tmp_path / "nope", "--engine", engines["pruned"], "--output", tmp_path / "o"],
            "no manifest.json",
        ),
        (["--suite", tmp_path / "none.toml", "--output", tmp_path / "o"], "does not exist"),
        (
            ["--suite", _suite_without_engines(tmp_path), "--output", tmp_path / "o"],
            "needs baselines and engines",
        ),
        (
            ["--baseline", engines["dense"], "--engine", engines["dense"], "--output", tmp_path / "o"],
            "named alike",
        ),
        (
            [
                "--baseline",
                engines["dense"],
                "--engine",
                engines["pruned"],
                "--spin-us",
                "-1",
                "--output",
                tmp_path / "o",
            ],
            "--spin-us 0 or more",
        ),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(bench, argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, err)


def test_bench_takes_plain_model_exports_and_triton_entries(pruned_bert, tiny_bases, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = tmp_path / "plain"
    AutoModelForSequenceClassification.from_pretrained(tiny_bases["bert"], num_labels=2).save_pretrained(
        plain
    )
    AutoTokenizer.from_pretrained(tiny_bases["bert"]).save_pretrained(plain)
    for argv in (
        [plain, "--output", tmp_path / "e" / "plain"],
        [plain, "--output", tmp_path / "e" / "plain-int8", "--quantize", "int8"],
        [pruned_bert, "--output", tmp_path / "repo", "--format", "triton", "--name", "sst"],
    ):
        code, _, err = run_cli(export, argv, capsys)
        assert code == 0, err
    common = ["--batch-sizes", "1", "--seq-lens", "8", "--rounds", "3", "--warmup", "1", "--threads", "1"]
    # No engine comes from a DSEE checkpoint: PyTorch eager joins, the DSEE branch does not.
    argv = ["--baseline", tmp_path / "e" / "plain", "--engine", tmp_path / "e" / "plain-int8", *common]
    code, _, err = run_cli(bench, [*argv, "--output", tmp_path / "b1"], capsys)
    assert code == 0, err
    names = [v["name"] for v in json.loads((tmp_path / "b1" / "results.json").read_text())["variants"]]
    assert names == ["plain", "plain-int8", "pytorch eager (dense)"]
    # A Triton repository entry is an engine too (its graph is in 1/), and its source checkpoint is found.
    argv = ["--baseline", tmp_path / "e" / "plain", "--engine", tmp_path / "repo" / "sst", *common]
    code, _, err = run_cli(bench, [*argv, "--output", tmp_path / "b2"], capsys)
    assert code == 0, err
    variants = json.loads((tmp_path / "b2" / "results.json").read_text())["variants"]
    assert [v["name"] for v in variants] == ["plain", "sst", "pytorch eager (dense)", "pytorch + DSEE branch"]
    assert variants[3]["heads"] == [2, 0]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "suites").glob("*.toml")))
def test_shipped_suites_load(path, tmp_path):
    """Every suite in benchmarks/suites passes the checks dsee-bench makes before it trains for hours."""
    from dsee_deploy.bench import suite

    loaded = suite.load(str(path), tmp_path, {})
    assert loaded["bench"]["engines"] and loaded["bench"]["baselines"]
