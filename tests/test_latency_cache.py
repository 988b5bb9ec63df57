"""A damaged latency cache (issue 40, item 6): a cached latency model is checked when it is read, and one that is
truncated, not JSON, of another format or key, or whose figures cannot be right (not finite, not positive, a grid
that is not the model's, a table that falls) is measured again after a one-line warning naming the file and what
is wrong; no layout is chosen from it, and no prediction that is not a finite number is ever given."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsee_deploy.errors import DSEEError
from dsee_deploy.pruning.search import search_layout
from dsee_deploy.speed import latency
from dsee_deploy.speed.key import SpeedKey
from dsee_deploy.speed.latency import cache_dir, latency_model
from dsee_deploy.speed.table import DamagedLatencyModel, LatencyModel


def stand_in_figures(heads_grid, ffn_grid) -> dict:
    """What measuring the tiny BERT (2 layers, 4 heads, 48 FFN neurons) gives, in ms: a fixed cost plus a share
    per head and per neuron (dense 5.4 ms, nothing kept 1 ms: at most 5.4x)."""
    return {(h, f): 1.0 + 0.5 * h + 0.05 * f for h in heads_grid for f in ffn_grid}


@pytest.fixture
def cached(tiny_bases, tmp_path, monkeypatch):
    """A latency model of the tiny BERT on its default grid (5 head counts by 11 FFN widths), cached in
    tmp_path, and `again()`: the latency model asked for once more, returning it, the lines it logged and how
    many times it was measured. Measuring is a stand-in giving stand_in_figures: timing 55 engines takes minutes
    on a shared 2-core machine (test_speed_target times real ones), and what is tested here is what is read back
    from the cache, the real file in the real directory."""
    from transformers import AutoConfig

    from dsee_deploy.tasks import get_task

    monkeypatch.setenv("DSEE_DEPLOY_CACHE", str(tmp_path))
    config = AutoConfig.from_pretrained(tiny_bases["bert"])
    config.num_labels = 2
    measured = []

    def measure(model_config, task_spec, speed, heads, ffn, rounds):
        measured.append((list(heads), list(ffn)))
        return stand_in_figures(heads, ffn), 3, 0.01

    monkeypatch.setattr(latency, "measure", measure)

    def again():
        lines, before = [], len(measured)
        model = latency_model(
            config, get_task("classification"), SpeedKey(seq_len=16, threads=1), log=lines.append
        )
        return model, lines, len(measured) - before

    good, _, times = again()
    assert times == 1 and good.head_grid == [0, 1, 2, 3, 4] and good.ffn_grid[-1] == 48
    (path,) = cache_dir().glob("*.json")
    return path, good, again


def edit(change):
    """A damage made by editing the saved JSON object: change(data) alters it in place."""

    def damage(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data)

    return damage


def setitem(name, value):
    return edit(lambda d: d.__setitem__(name, value))


def table(change):
    """A damage to the table alone: change(t) alters the (5, 11) array of ms in place."""

    def on(d):
        t = np.asarray(d["table_ms"])
        change(t)
        d["table_ms"] = t.tolist()

    return edit(on)


def entry(i, j, value):
    return table(lambda t: t.__setitem__((i, j), value))


def grids(heads=None, ffn=None, rows=None, cols=None):
    """head_grid and ffn_grid replaced, and the table cut to `rows` and `cols` (index lists) to fit them."""

    def on(d):
        t = np.asarray(d["table_ms"])
        t = t[rows] if rows is not None else t
        t = t[:, cols] if cols is not None else t
        d.update(table_ms=t.tolist())
        if heads is not None:
            d["head_grid"] = heads
        if ffn is not None:
            d["ffn_grid"] = ffn

    return edit(on)


ALL_FFN = [0, 2, 3, 6, 12, 18, 24, 30, 36, 42, 48]  # default_grid(4, 48)'s widths

# (damage to the cached file's text, what the warning says is wrong)
DAMAGE = {
    "truncated": (lambda text: text[: len(text) // 2], "is not readable JSON"),
    "garbage": (lambda text: "\x00\x9f\ufffd garbage }{", "is not readable JSON"),
    "not text": (lambda text: bytes(range(256)), "is not readable JSON ('utf-8' codec can't decode"),
    "not an object": (lambda text: "[1, 2, 3]", "holds a JSON list, not an object"),
    "wrong version": (setitem("format_version", 2), "format version 2, where this dsee-deploy reads 3"),
    "a field missing": (edit(lambda d: d.pop("table_ms")), "holds fields"),
    "negative numbers": (table(lambda t: np.negative(t, out=t)), "not a positive latency (55 such of 55)"),
    "one negative number": (entry(1, 1, -2.0), "-2.0 ms in table_ms for 1 heads and 2 FFN neurons"),
    "a NaN": (entry(2, 6, float("nan")), "nan ms in table_ms for 2 heads and 24 FFN neurons, not a finite"),
    "an infinity": (entry(4, 10, float("inf")), "inf ms in table_ms for 4 heads and 48 FFN neurons"),
    "all zeros": (
        table(lambda t: t.fill(0.0)),
        "0.0 ms in table_ms for 0 heads and 0 FFN neurons, not a pos",
    ),
    "words in the table": (
        edit(lambda d: d["table_ms"][0].__setitem__(0, "fast")),
        "a table_ms that is not a table of numbers",
    ),
    "a shortened head grid": (
        grids(heads=[0, 1, 2], rows=[0, 1, 2]),
        "head_grid [0, 1, 2], which ends at 2 heads, not at the model's 4",
    ),
    "a head grid longer than the model's heads": (
        grids(heads=[0, 1, 2, 3, 4, 5], rows=[0, 1, 2, 3, 4, 4]),
        "ends at 5 heads, not at the model's 4",
    ),
    "a head grid without 0": (
        grids(heads=[1, 2, 3, 4], rows=[1, 2, 3, 4]),
        "which does not start at 0 heads",
    ),
    "a head grid out of order": (
        grids(heads=[0, 2, 1, 3, 4]),
        "head_grid [0, 2, 1, 3, 4], which does not rise",
    ),
    "a head grid that does not fit the table": (
        grids(heads=[0, 1, 3, 4]),
        "a table_ms of shape 5 x 11, not head_grid by ffn_grid (4 x 11)",
    ),
    "a shortened FFN grid": (
        grids(ffn=ALL_FFN[:-1], cols=list(range(10))),
        "ends at 42 FFN neurons, not at the model's 48",
    ),
    "an FFN grid that does not fit the table": (
        grids(ffn=[0, 12, 24, 36, 48]),
        "a table_ms of shape 5 x 11, not head_grid by ffn_grid (5 x 5)",
    ),
    "a table that falls": (entry(3, 5, 1.5), "to 1.5 ms as heads grow from 2 to 3"),
    "another key": (edit(lambda d: d["key"].__setitem__("threads", 2)), "of another model or machine"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latency_cache_is_measured_again_with_a_one_line_warning(cached, damage):
    path, good, again = cached
    change, expected = DAMAGE[damage]
    damaged = change(path.read_text())
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    model, lines, measured = again()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert measured == 1, lines  # measured again, not used
    assert len(warnings) == 1 and "\n" not in warnings[0], lines
    assert str(path) in warnings[0] and expected in warnings[0] and "measuring it again" in warnings[0]
    # The layout is chosen from the new figures, which replaced the damaged file.
    assert model.to_dict() == good.to_dict()
    assert LatencyModel.from_dict(json.loads(path.read_text())).to_dict() == good.to_dict()
    layout, predicted = search_layout(np.ones((2, 4)), np.ones((2, 48)), model, 2.0)
    assert math.isfinite(predicted) and predicted >= 2.0 and len(layout) == 2


def test_an_intact_latency_cache_is_read_without_measuring_or_warning(cached):
    path, good, again = cached
    model, lines, measured = again()
    assert measured == 0 and not lines and model.to_dict() == good.to_dict()


def model_of(table_ms, head_grid=(0, 2, 4), ffn_grid=(0, 24, 48)) -> LatencyModel:
    return LatencyModel(
        {"num_layers": 2, "num_heads": 4, "ffn_width": 48}, list(head_grid), list(ffn_grid), table_ms
    )


GOOD = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize(
    "table_ms, expected",
    [
        ([[1.0, 2.0, 3.0], [2.0, float("nan"), 4.0], [3.0, 4.0, 5.0]], "not a finite latency"),
        ([[0.0] * 3] * 3, "not a positive latency"),
        ([[-1.0, -2.0, -3.0]] * 3, "not a positive latency"),
        (GOOD[:2], "shape 2 x 3"),
    ],
    ids=["a NaN", "zeros", "negative", "a row short"],
)
def test_figures_that_cannot_be_right_build_no_latency_model(table_ms, expected):
    with pytest.raises(DamagedLatencyModel, match=expected):
        model_of(table_ms)


def test_no_prediction_that_is_not_a_finite_number_is_given():
    model = model_of(GOOD)
    assert model.speedup([4, 4], [48, 48]) == pytest.approx(1.0)
    with pytest.raises(DSEEError, match=r"predicts nan ms .* not a finite positive latency"):
        model.speedup([float("nan"), 4], [48, 48])
    with pytest.raises(DSEEError, match="a speed-up target must be a finite number above 1, got nan"):
        search_layout(np.ones((2, 4)), np.ones((2, 48)), model, float("nan"))
    # A measured table may dip (timing noise): it is smoothed, not refused; a saved one never dips.
    dipping = model_of([[1.0, 2.0, 3.0], [2.0, 1.5, 4.0], [3.0, 4.0, 5.0]])
    assert dipping.table_ms[1][1] == 2.0
    saved = {**model_of(GOOD).to_dict(), "table_ms": [[1.0, 2.0, 3.0], [2.0, 1.5, 4.0], [3.0, 4.0, 5.0]]}
    with pytest.raises(DamagedLatencyModel, match="falls from 2.0 to 1.5 ms as heads grow from 0 to 2"):
        LatencyModel.from_dict(saved)


def test_a_latency_grid_that_is_not_the_models_is_refused_before_measuring(tiny_bases, tmp_path, monkeypatch):
    from transformers import AutoConfig

    from dsee_deploy.tasks import get_task

    monkeypatch.setenv("DSEE_DEPLOY_CACHE", str(tmp_path))
    config = AutoConfig.from_pretrained(tiny_bases["bert"])
    with pytest.raises(
        DSEEError, match=r"latency grid of heads \[0, 2\] ends at 2 heads, not at the model's 4"
    ):
        latency_model(config, get_task("classification"), grid=([0, 2], [0, 48]), log=lambda m: None)
