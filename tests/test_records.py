"""The typed records (pruning.json, results.json, a manifest's speed target) read what older versions wrote,
under today's names, and refuse what they cannot read in one line."""

from __future__ import annotations

import json

import pytest

from dsee_deploy.bench.results import BenchResults
from dsee_deploy.errors import DSEEError
from dsee_deploy.manifest import speed_target_of
from dsee_deploy.pruning.record import PruningRecord, SpeedTarget
from dsee_deploy.speed.key import SpeedKey

KEY = {"architecture": "bert", "precision": "int8", "batch": 1, "seq_len": 64, "threads": 2, "processor": "x"}
RECORD_V2 = {
    "format_version": 2,
    "config": {"target_speedup": 2.0},
    "structured": True,
    "unstructured": False,
    "importance": {"structured": "taylor", "unstructured": None},
    "num_layers": 1,
    "num_heads": 4,
    "head_size": 8,
    "hidden_size": 32,
    "ffn_width": 64,
    "layers": [{"kept_heads": [0, 2], "kept_ffn": [1, 5, 9], "sparsity": {}}],
    "target": {"speedup": 2.0, "aimed_speedup": 2.1, "predicted_speedup": 2.13, "latency_model": KEY},
    "parameters": {"encoder_dense": 100, "encoder_pruned": 40, "encoder_nonzero": 40},
    "flops": {"seq_len": 128, "encoder_dense": 10, "encoder_pruned": 4, "encoder_ratio": 0.4},
}


def test_a_version_2_pruning_record_reads_under_todays_names_and_saves_as_version_3(tmp_path):
    record = PruningRecord.from_dict(RECORD_V2)
    assert record.target == SpeedTarget(2.0, 2.13, KEY, aimed_speedup=2.1)
    assert record.kept == ([2], [3])
    assert record.target.speed == SpeedKey("int8", 1, 64, 2)
    record.save(tmp_path / "pruning.json")
    saved = json.loads((tmp_path / "pruning.json").read_text())
    assert (
        saved["format_version"] == 3
        and saved["target"]["target_speedup"] == 2.0
        and "speedup" not in saved["target"]
    )
    assert PruningRecord.read(tmp_path / "pruning.json") == record
    assert "aimed at 2.10x" in record.target.describe()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 9}, "format version 9"),
        ({"heads_kept": 3}, "unknown fields \\['heads_kept'\\]"),
        ({"layers": None, "num_layers": None, "flops": None, "parameters": None, "num_heads": None}, None),
    ],
)
def test_a_pruning_record_that_cannot_be_read_is_refused_in_one_line(change, message, tmp_path):
    data = {**RECORD_V2, **change}
    if message is None:  # fields missing
        data = {k: v for k, v in data.items() if v is not None}
        message = "not a complete pruning record"
    (tmp_path / "pruning.json").write_text(json.dumps(data))
    with pytest.raises(DSEEError, match=message):
        PruningRecord.read(tmp_path / "pruning.json")


def test_results_of_schema_1_read_with_the_speed_target_under_todays_names():
    old = {
        "schema": "dsee-bench/1",
        "machine": {},
        "threads": 1,
        "versions": {},
        "method": {},
        "primary_baseline": "dense",
        "variants": [{"name": "x", "target": 1.5, "predicted": 1.61}],
        "timings": [],
        "speedups": [{"variant": "x", "baseline": "dense", "batch": 1, "seq": 8, "median": 1.7}],
    }
    results = BenchResults.from_dict(old)
    assert results.variants == [{"name": "x", "target_speedup": 1.5, "predicted_speedup": 1.61}]
    assert results.to_dict()["schema"] == "dsee-bench/2" and results.speedup("x") == 1.7
    with pytest.raises(DSEEError, match="schema 'dsee-bench/0'"):
        BenchResults.from_dict({**old, "schema": "dsee-bench/0"})


def test_a_manifests_speed_target_reads_in_either_naming():
    new = {"target_speedup": 3.0, "predicted_speedup": 3.2, "precision": "int8", "batch": 1}
    old = {"target": 3.0, "predicted": 3.2, "target_precision": "int8", "batch": 1}
    assert (
        speed_target_of(new)
        == speed_target_of(old)
        == {"target_speedup": 3.0, "predicted_speedup": 3.2, "precision": "int8"}
    )
    assert speed_target_of({"batch": 1}) is None and speed_target_of(None) is None
