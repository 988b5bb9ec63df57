"""A speed target is met as "at least" (issue 41, item 2): the layout search aims above the target by the latency
model's error, and dsee-export says whether the measured engine meets the target, or by how much it is short and
what to prune for instead. Latency models with given costs; no test asserts a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_speed_target import linear_model

from dsee_deploy.export.summary import describe_speedup
from dsee_deploy.pruning.search import PREDICTION_ERROR, aim_for, search_layout


@pytest.mark.parametrize(
    ("target", "spread", "aimed"),
    [
        (2.0, 0.0, 2.0 * (1 + PREDICTION_ERROR)),  # the recorded prediction error
        # not the model's spread, the machine's disturbance while it was measured: 43 % put 5x at 7.17x
        (2.0, 0.08, 2.0 * (1 + PREDICTION_ERROR)),
        (5.0, 0.435, 5.0 * (1 + PREDICTION_ERROR)),
        (2.0, float("inf"), 2.0 * (1 + PREDICTION_ERROR)),  # one unconfirmed pass
    ],
)
def test_the_search_aims_above_the_target_by_the_recorded_prediction_error(target, spread, aimed):
    model = linear_model(heads=12, ffn=32)
    model.spread = spread
    assert aim_for(target, model) == pytest.approx(aimed)
    rng = np.random.default_rng(0)
    layout, predicted = search_layout(rng.random((2, 12)), rng.random((2, 32)), model, aim_for(target, model))
    assert predicted >= aimed - 1e-9


TWO_AND_FIVE = [{"predicted": 2.06, "measured": 1.84}, {"predicted": 5.15, "measured": 4.07}]


@pytest.mark.parametrize(
    ("checks", "target", "over"),
    [
        ([], 2.0, 0.0),  # no engine checked yet: the recorded error alone
        ([{"predicted": 2.06, "measured": 1.89}, {"predicted": 3.09, "measured": 3.2}], 2.0, 2.06 / 1.89 - 1),
        (
            [{"predicted": 3.0, "measured": 3.3}],
            2.0,
            0.0,
        ),  # a model that under-predicts: no less than the 3 %
        (TWO_AND_FIVE, 2.0, 2.06 / 1.84 - 1),  # the error of the checked engines near the target
        (TWO_AND_FIVE, 5.0, 5.15 / 4.07 - 1),
        (TWO_AND_FIVE, 3.0, 2.06 / 1.84 - 1),  # none within 25 %: the nearest in ratio (2x)
        (TWO_AND_FIVE, 4.0, 5.15 / 4.07 - 1),  # within 25 % of 5.15x
        # several near: the worst of them (5.15x and 5.69x are within 25 % of 5x, 8x is not)
        (
            [
                {"predicted": 5.15, "measured": 4.85},
                {"predicted": 5.69, "measured": 4.85},
                {"predicted": 8.0, "measured": 5.0},
            ],
            5.0,
            5.69 / 4.85 - 1,
        ),
    ],
)
def test_the_search_also_aims_by_the_error_the_model_showed_on_exported_engines(checks, target, over):
    model = linear_model(heads=12, ffn=32)
    model.checks = checks
    assert model.over_prediction(near=target) == (pytest.approx(over) if checks else None)
    aimed = min(target * (1 + PREDICTION_ERROR) * (1 + over), model.dense_ms / model.floor_ms())
    assert aim_for(target, model) == pytest.approx(aimed)


def test_a_check_is_recorded_with_the_cached_model_of_this_machine_only(tiny_bases, tmp_path, monkeypatch):
    """dsee-export's measurement goes into the cached model it was predicted by (at most MAX_CHECKS, the latest),
    not into one of another machine; a check that is not a pair of speed-ups damages the file (measured again)."""
    from transformers import AutoConfig

    from dsee_deploy.speed.key import SpeedKey
    from dsee_deploy.speed.latency import cached_path, latency_model, record_check
    from dsee_deploy.speed.table import MAX_CHECKS, DamagedLatencyModel, LatencyModel
    from dsee_deploy.tasks import get_task

    monkeypatch.setenv("DSEE_DEPLOY_CACHE", str(tmp_path / "cache"))
    config = AutoConfig.from_pretrained(tiny_bases["bert"])
    speed = SpeedKey(seq_len=16, threads=1)
    model = latency_model(config, get_task("classification"), speed, grid=([0, 4], [0, 48]), log=print)
    assert model.checks == [] and record_check({**model.key, "processor": "another CPU"}, 2.0, 1.8) is None
    for i in range(MAX_CHECKS + 1):
        record_check(model.key, 2.0, 1.8 + i / 100)
    saved = json.loads(cached_path(model.key).read_text())
    assert len(saved["checks"]) == MAX_CHECKS and saved["checks"][-1] == {"predicted": 2.0, "measured": 2.0}
    assert LatencyModel.from_dict(saved).over_prediction() == pytest.approx(2.0 / 1.81 - 1, abs=1e-4)
    with pytest.raises(DamagedLatencyModel, match="checks"):
        LatencyModel.from_dict({**saved, "checks": [{"predicted": 2.0, "measured": 0}]})


def test_the_margin_stops_at_what_the_model_can_reach():
    model = linear_model()  # nothing kept: fixed 2 ms against 2 + 2 * (3 + 2) = 12 ms dense, at most 6x
    reachable = model.dense_ms / model.floor_ms()
    assert aim_for(reachable * 0.99, model) == pytest.approx(reachable)
    assert aim_for(reachable, model) == pytest.approx(reachable)


def record(measured: float, target: float = 3.0) -> dict:
    return {
        "batch": 1,
        "seq_len": 128,
        "threads": 1,
        "engines": {"onnx fp32": {"measured": measured, "dense_ms": 9.0, "ms": 9.0 / measured}},
        "target": target,
        "predicted": 3.09,
        "target_precision": "fp32",
    }


@pytest.mark.parametrize(
    ("measured", "words"),
    [
        (3.12, "target 3x, predicted 3.09x (fp32): meets 3x (3.12x measured)"),
        (3.0, "meets 3x (3.00x measured)"),
        (2.94, "short of 3x by 2.0 % (2.94x measured): prune again with --target-speedup 3.1"),
        (2.5, "short of 3x by 16.7 % (2.50x measured): prune again with --target-speedup 3.6"),
    ],
)
def test_dsee_export_says_whether_the_engine_meets_its_target(measured, words):
    assert words in describe_speedup(record(measured))
