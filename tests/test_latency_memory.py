"""Measuring a latency model in bounded memory, once per geometry (issue 41, item 6): the grid is timed one group
(a head count with its FFN widths, and the dense engine) at a time, only that group's sessions open; the model is
keyed by what changes an engine's latency, so an encoder's classification, regression and feature-extraction
checkpoints of one geometry share one measured model, while a language model's head keeps its own. Peak memory
on MiniLM and BERT-base geometry: benchmarks/latency/memory (tiny models here; no test asserts a time)."""

from __future__ import annotations

import weakref

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification

from dsee_deploy.speed.key import SpeedKey
from dsee_deploy.speed.latency import cache_dir, latency_key, latency_model
from dsee_deploy.speed.passes import measure
from dsee_deploy.tasks import task_of_model

# A small grid of the tiny BERT (4 heads, 48 FFN neurons): 6 engines in 3 groups, measured in seconds.
GRID = ([0, 2, 4], [0, 48])


def checkpoint(base, out, **head) -> str:
    """A checkpoint of the tiny BERT with a sequence head (`head`: num_labels, problem_type), as dsee-tune saves
    one."""
    AutoModelForSequenceClassification.from_pretrained(base, **head).save_pretrained(out)
    return str(out)


def test_classification_regression_and_embedding_checkpoints_of_one_geometry_share_one_measured_model(
    tiny_bases, tmp_path, monkeypatch
):
    monkeypatch.setenv("DSEE_DEPLOY_CACHE", str(tmp_path / "cache"))
    paths = {
        "classification": checkpoint(tiny_bases["bert"], tmp_path / "sst", num_labels=3),
        "regression": checkpoint(
            tiny_bases["bert"], tmp_path / "stsb", num_labels=1, problem_type="regression"
        ),
        "feature-extraction": str(tiny_bases["bert"]),  # a bare encoder: sentence embeddings
    }
    models, measured = {}, {}
    for kind, path in paths.items():
        config = AutoConfig.from_pretrained(path)
        task = task_of_model(config)  # the task dsee-prune's speed target measures the model for
        assert task.kind == kind
        lines: list[str] = []
        models[kind] = latency_model(
            config, task, SpeedKey(seq_len=16, threads=1), grid=GRID, log=lines.append
        )
        measured[kind] = [line for line in lines if line.startswith("measuring the latency of")]
    # Only the first measured: the others read its figures from the cache, one file.
    assert [len(m) for m in measured.values()] == [1, 0, 0]
    assert len(list(cache_dir().glob("*.json"))) == 1
    first = models["classification"].to_dict()
    assert models["regression"].to_dict() == first and models["feature-extraction"].to_dict() == first
    assert "num_labels" not in first["key"] and first["key"]["head"] == "classification"


def test_a_language_models_head_is_in_its_latency_key(tiny_bases):
    """A causal LM's head (hidden x vocabulary at every position) is much of its cost: its key names it, so a
    sequence classifier of the same geometry is measured apart."""
    from dsee_deploy.tasks import get_task

    config = AutoConfig.from_pretrained(tiny_bases["gpt2"])
    keys = {
        kind: latency_key(config, get_task(kind), SpeedKey(seq_len=16, threads=1))
        for kind in ("causal-lm", "classification", "regression")
    }
    assert keys["causal-lm"]["head"] == "causal-lm" and keys["classification"]["head"] == "classification"
    assert keys["causal-lm"] != keys["classification"] and keys["classification"] == keys["regression"]


def test_only_the_group_being_timed_has_its_sessions_open(tiny_bases):
    """Each group's ONNX Runtime sessions are opened when it is timed and closed before the next group's are:
    weak references to the sessions of every group timed before are dead when a group opens. The dense engine,
    timed in every group, keeps one session throughout, closed at the end."""
    from dsee_deploy.tasks import get_task

    config = AutoConfig.from_pretrained(tiny_bases["bert"])
    dense = (4, 48)
    before: list[weakref.ref] = []  # the sessions of the groups opened so far, but the dense engine's
    dense_session: list[weakref.ref] = []
    groups: list[list] = []
    all_sessions: list[weakref.ref] = []

    def opened(runners: dict) -> None:
        assert [ref() for ref in before] == [None] * len(before), "an earlier group's session is still open"
        names = list(runners)
        assert names[0] == dense  # timed against the dense engine
        groups.append(names)
        if not dense_session:
            dense_session.append(weakref.ref(runners[dense].session))
        assert runners[dense].session is dense_session[0](), "the dense engine's session was opened again"
        for name, runner in runners.items():
            all_sessions.append(weakref.ref(runner.session))
            if name != dense:
                before.append(weakref.ref(runner.session))

    speed = SpeedKey(seq_len=16, threads=1)
    figures, passes, _ = measure(config, get_task("classification"), speed, *GRID, 2, opened=opened)
    assert sorted(figures) == [(h, f) for h in GRID[0] for f in GRID[1]]
    # Every group of every pass opened (one head count's FFN widths, with the dense engine), never more at once.
    assert len(groups) == 3 * passes
    assert sorted({tuple(g) for g in groups}) == sorted(
        [(dense, (0, 0), (0, 48)), (dense, (2, 0), (2, 48)), (dense, (4, 0))]
    )
    assert all(ref() is None for ref in all_sessions)  # every session closed once measured


@pytest.mark.parametrize("kind", ["regression", "feature-extraction"])
def test_every_encoder_task_builds_the_classifiers_engine(kind, tiny_bases, tmp_path):
    """What makes the shared model right: an encoder task's engine for the latency model is the classifier's
    (the same graph, node for node), whatever its labels."""
    import onnx

    from dsee_deploy.speed.engines import build_engine
    from dsee_deploy.tasks import get_task

    config = AutoConfig.from_pretrained(tiny_bases["bert"], num_labels=1 if kind == "regression" else 5)
    graphs = {}
    for task in ("classification", kind):
        path = build_engine(config, get_task(task), None, "fp32", tmp_path / task)
        graph = onnx.load(str(path)).graph
        graphs[task] = (
            [n.op_type for n in graph.node],
            [
                (o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
                for o in graph.output
            ],
        )
    assert graphs[kind] == graphs["classification"]
