"""dsee-export beyond fp32 ONNX: int8 on the fused graph with --validate-data, fp16, feature extraction, a
Triton repository, TensorRT (where importable), and the bad input of each."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_CONFIGS, make_checkpoint, run_cli

from dsee_deploy.cli.export import main as export
from dsee_deploy.runtime import make_session

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_int8_quantizes_the_fused_graph_and_reports_the_metric(pruned_bert, labelled, tmp_path, capsys):
    out = tmp_path / "int8"
    code, stdout, err = run_cli(
        export, [pruned_bert, "--output", out, "--quantize", "int8", "--validate-data", labelled], capsys
    )
    assert code == 0, err
    manifest = _manifest(out)
    assert manifest["precision"] == "int8" and manifest["optimization"]["fused"]["Attention"] == 1
    # The fused attention itself is quantized, not only the MatMuls around it.
    assert manifest["quantization"]["quantized"]["QAttention"] == 1
    types = {t.data_type for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.INT8 in types
    assert not (out / "model.fp32.onnx").exists()
    assert manifest["parameters"]["onnx"] == manifest["parameters"]["torch"]
    report = manifest["validate_data"]
    results = report["results"]
    assert set(results) == {"pytorch", "onnx fp32", "onnx int8"} and report["examples"] == 64
    assert results["onnx fp32"]["agreement_with_pytorch"] == "64/64"
    assert report["drop"] == pytest.approx(results["onnx fp32"]["metric"] - results["onnx int8"]["metric"])
    # The session answers like PyTorch's predictions: the int8 engine agrees on most inputs.
    agreed = int(results["onnx int8"]["agreement_with_onnx_fp32"].split("/")[0])
    assert agreed >= 56
    assert "not judged by --atol" in stdout and "pt against fp32 (a loss of at most" in stdout


def test_skip_layernorm_fuses_on_request_and_the_unfused_form_survives_session_load(
    pruned_bert, tmp_path, capsys
):
    fused, unfused = tmp_path / "fused", tmp_path / "unfused"
    for out, extra in ((fused, ["--skip-layernorm", "fuse"]), (unfused, [])):
        code, _, err = run_cli(export, [pruned_bert, "--output", out, *extra], capsys)
        assert code == 0, err
    assert _manifest(fused)["optimization"]["fused"]["SkipLayerNormalization"] == 4
    # The session's own optimizer must not merge the unfused residual norms back into SkipLayerNormalization.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(unfused / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "session.onnx")).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 4


def test_fp16_engine_runs_and_is_judged_by_agreement(pruned_bert, tmp_path, capsys):
    out = tmp_path / "fp16"
    code, _, err = run_cli(export, [pruned_bert, "--output", out, "--fp16"], capsys)
    assert code == 0, err
    manifest = _manifest(out)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert manifest["precision"] == "fp16" and manifest["validation"]["passed"]
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in graph.initializer}
    assert [i.type.tensor_type.elem_type for i in graph.output] == [onnx.TensorProto.FLOAT]  # fp32 I/O
    checks = manifest["validation_reduced"]["checks"]
    assert checks and all(c["max_abs_diff"] < 0.05 for c in checks)


def test_feature_extraction_from_a_bare_encoder(tiny_bases, tmp_path, capsys):
    out = tmp_path / "embed"
    code, _, err = run_cli(export, [tiny_bases["bert"], "--output", out], capsys)
    assert code == 0, err
    manifest = _manifest(out)
    assert manifest["task"] == "feature-extraction" and manifest["pooling"] == "mean"
    assert manifest["outputs"] == ["last_hidden_state", "sentence_embedding"]
    session = make_session(out / "model.onnx")
    ids = np.array([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    hidden, pooled = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids})
    # Mean over the real tokens only: padding must not move the embedding.
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert np.allclose(pooled, expected, atol=1e-5)  # fp32 sums over 5 tokens in ORT's order and numpy's
    from transformers import AutoModel

    with torch.no_grad():
        ref = AutoModel.from_pretrained(tiny_bases["bert"])(
            input_ids=torch.from_numpy(ids[1:, :3])
        ).last_hidden_state
    # the graph's padded row against PyTorch on the unpadded tokens: the fp32 validation's tolerance
    assert np.allclose(pooled[1], ref.mean(1)[0].numpy(), atol=1e-4)


def test_feature_extraction_of_a_checkpoint_with_cls_pooling(pruned_bert, tmp_path, capsys):
    out = tmp_path / "embed"
    argv = [pruned_bert, "--output", out, "--task", "feature-extraction", "--pooling", "cls", "--normalize"]
    code, _, err = run_cli(export, argv, capsys)
    assert code == 0, err
    manifest = _manifest(out)
    assert (manifest["pooling"], manifest["normalize"]) == ("cls", True)
    assert manifest["validation"]["passed"]  # against the PyTorch encoder with the same pooling
    session = make_session(out / "model.onnx")
    ids = np.array([[2, 7, 8, 3]], dtype=np.int64)
    _, pooled = session.run(
        None, {"input_ids": ids, "attention_mask": 1 + 0 * ids, "token_type_ids": 0 * ids}
    )
    assert np.allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-5)  # unit length, to fp32 rounding


def test_triton_repository_parses_with_tritons_schema(pruned_bert, tmp_path, capsys):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "models"
    code, _, err = run_cli(
        export, [pruned_bert, "--output", repo, "--format", "triton", "--name", "sst"], capsys
    )
    assert code == 0, err
    config = text_format.Parse((repo / "sst" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("sst", "onnxruntime_onnx", 32)
    assert [i.name for i in config.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.data_type == model_config_pb2.TYPE_INT64 and list(i.dims) == [-1] for i in config.input)
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [2])]
    assert config.HasField("dynamic_batching") and not config.instance_group
    assert (repo / "sst" / "1" / "model.onnx").is_file() and not (repo / "sst" / "model.onnx").exists()
    assert _manifest(repo / "sst")["engine"] == "1/model.onnx"
    # A second model joins the same repository; an int8 one is pinned to CPU kernels.
    argv = [pruned_bert, "--output", repo, "--format", "triton", "--name", "sst-int8", "--quantize", "int8"]
    code, _, err = run_cli(export, argv, capsys)
    assert code == 0, err
    config = text_format.Parse(
        (repo / "sst-int8" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert (
        run_cli(export, [pruned_bert, "--output", repo, "--format", "triton", "--name", "sst"], capsys)[0]
        == 2
    )


@pytest.mark.skipif(
    HAS_TENSORRT, reason="tensorrt is installed here: the missing-package message is not reachable"
)
def test_tensorrt_missing_is_one_line(pruned_bert, tmp_path, capsys):
    code, _, err = run_cli(
        export, [pruned_bert, "--output", tmp_path / "trt", "--format", "tensorrt"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "pip install 'dsee-deploy[tensorrt]'" in lines[0]
    assert not (tmp_path / "trt").exists()


@pytest.mark.skipif(
    not HAS_TENSORRT, reason="tensorrt is not installed (pip install 'dsee-deploy[tensorrt]')"
)
def test_tensorrt_plan_is_built_with_the_profile(pruned_bert, tmp_path, capsys):
    out = tmp_path / "trt"
    argv = [pruned_bert, "--output", out, "--format", "tensorrt", "--fp16", "--max-shape", "4x64"]
    code, _, err = run_cli(export, argv, capsys)
    assert code == 0, err
    manifest = _manifest(out)
    assert manifest["engine"] == "model.plan" and (out / "model.plan").stat().st_size > 0
    assert manifest["tensorrt"]["profile"]["max-shape"] == [4, 64]
    assert not manifest["optimization"]["applied"]  # TensorRT gets the standard-op graph and fuses it itself


def test_export_bad_options_are_one_line(pruned_bert, labelled, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    cases = [
        (["--output", blocker / "engine"], "cannot be created"),
        (["--output", tmp_path / "e", "--quantize", "int8", "--fp16"], "exclude each other"),
        (["--output", tmp_path / "e", "--format", "tensorrt", "--max-shape", "big"], "--max-shape 'big'"),
        (["--output", tmp_path / "e", "--validate-data", tmp_path / "none.tsv"], "does not exist"),
        (["--output", tmp_path / "e", "--task", "ner"], "--task 'ner'"),
        (["--output", pruned_bert / "engine", "--overwrite"], "lies inside the checkpoint"),
        (["--output", pruned_bert, "--overwrite"], "is the checkpoint"),
        (
            ["--output", tmp_path / "e", "--task", "feature-extraction", "--validate-data", labelled],
            "is scored on pairs of texts",
        ),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(export, [pruned_bert, *argv], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, err)
    assert blocker.read_text() == "mine" and not (tmp_path / "e").exists()
    assert (pruned_bert / "dsee_config.json").is_file()  # --overwrite never reaches the checkpoint itself
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run_cli(export, [pruned_bert, "--output", locked / "engine"], capsys)
        assert code == 2 and "cannot be created" in err


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_int8_works_on_every_architecture(model_type, tiny_bases, tmp_path, capsys):
    make_checkpoint(model_type, tiny_bases[model_type], tmp_path / "ckpt")
    code, _, err = run_cli(
        export, [tmp_path / "ckpt", "--output", tmp_path / "int8", "--quantize", "int8"], capsys
    )
    assert code == 0, err
    manifest = _manifest(tmp_path / "int8")
    quantized = manifest["quantization"]["quantized"]
    assert sum(quantized.values()) >= 4, quantized  # attention (fused or not) and FFN in both layers
    checks = manifest["validation_reduced"]["checks"]
    shapes = 6 if model_type == "gpt2" else 3  # the KV-cache decoder: 3 runs at each of 2 shapes
    assert [c["output"] for c in checks] == ["logits"] * shapes  # names and shapes hold on every one


def test_mean_pooling_takes_the_mask_back_when_the_graph_dropped_it(tmp_path):
    """A sentence-embedding model pruned of every head attends to nothing, and the exporter drops the unused
    attention_mask input (found pruning MiniLM to 2x with --head-share 0.2); mean pooling adds it back."""
    import onnx
    from onnx import TensorProto, helper

    from dsee_deploy.export.pooling import add_sentence_embedding

    table = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
        "no-attention",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel())],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    add_sentence_embedding(path, "mean", True)
    ids = np.array([[1, 2, 3], [4, 5, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
    session = make_session(path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    pooled = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    expected = (table[ids] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(pooled, expected, atol=1e-6)
