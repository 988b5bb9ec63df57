"""dsee-export on every architecture x {dense, unstructured, structured with an emptied layer}: the ONNX engine
passes validation at 1e-4 and holds the pruned parameter count, not the dense one."""

from __future__ import annotations

import json

import pytest
from conftest import LAYOUT, TINY_CONFIGS, make_checkpoint, save_pruned

import dsee_deploy as dd
import dsee_deploy.pruning.prune as prune_module
from dsee_deploy import load_merged
from dsee_deploy.architectures import get_spec
from dsee_deploy.cli.export import main as export
from dsee_deploy.pruning import PruneConfig, prune_model


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("variant", ["dense", "unstructured", "structured"])
def test_export_validates_and_holds_the_pruned_parameters(
    model_type, variant, tiny_bases, tmp_path, monkeypatch
):
    model, tok = make_checkpoint(model_type, tiny_bases[model_type], tmp_path / "dense")
    ckpt = tmp_path / "dense"
    if variant == "structured":  # one layer keeps 2 of 4 heads and 16 of 48 neurons, the other nothing
        layouts = iter([[e["kept_heads"] for e in LAYOUT], [e["kept_ffn"] for e in LAYOUT]])
        monkeypatch.setattr(prune_module, "keep_structured", lambda *a, **k: next(layouts))
        ckpt = save_pruned(
            tmp_path, model, tok, *prune_model(model, PruneConfig(heads=0.5, ffn=0.5, importance="wabs"))
        )
    elif variant == "unstructured":
        ckpt = save_pruned(
            tmp_path, model, tok, *prune_model(model, PruneConfig(unstructured=0.5, importance="wabs"))
        )
    dense_params = sum(p.numel() for p in load_merged(tmp_path / "dense")[0].parameters())
    torch_params = sum(p.numel() for p in load_merged(ckpt)[0].parameters())

    returned = dd.export(ckpt, tmp_path / "engine")
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert returned.to_dict() == manifest  # the verb returns what it wrote
    checks = manifest["validation"]["checks"]
    decoder = model_type == "gpt2"  # a causal LM: the KV-cache decoder, 3 runs at each of 2 shapes
    assert (
        manifest["validation"]["passed"]
        and len(checks) == (6 if decoder else 3)
        and all(c["max_abs_diff"] <= 1e-4 for c in checks)
    )
    assert manifest["outputs"][0] == "logits" and manifest["inputs"][:2] == ["input_ids", "attention_mask"]
    assert all(o.startswith("present.") for o in manifest["outputs"][1:]) and (
        decoder or len(manifest["outputs"]) == 1
    )
    assert {"model.onnx", "config.json"} <= set(manifest["files"])
    assert manifest["parameters"]["torch"] == torch_params
    optimization = manifest["optimization"]
    layers_with_heads = 1 if variant == "structured" else 2
    assert optimization["layers_with_heads"] == layers_with_heads
    if not get_spec(model_type).decoder:  # encoders: every layer with heads gets one fused Attention
        assert optimization["fused"]["Attention"] == layers_with_heads
        # CPU default: residual Add and LayerNormalization kept apart (ORT's CPU SkipLayerNorm kernel is slow).
        assert "SkipLayerNormalization" not in optimization["fused"]
        assert (
            optimization["skip_layernorm"].startswith("unfused")
            and optimization["fused"]["LayerNormalization"] >= 4
        )
    else:  # GPT-2's KV-cache decoder: one MultiHeadAttention per layer that keeps heads, none elsewhere
        assert optimization["fused"].get("MultiHeadAttention", 0) == layers_with_heads
        assert "Attention" not in optimization["fused"] and "fused in all" in optimization["note"]
    # The graph holds the merged model's parameters (the head's zero-initialised biases may be stored once, and a
    # few scalar constants are added), so the pruned count, not the dense one.
    assert abs(manifest["parameters"]["onnx"] - torch_params) <= 64
    if variant == "structured":
        assert manifest["parameters"]["onnx"] < 0.8 * dense_params
        assert [layer["heads"] for layer in manifest["layers"]] == [2, 0]


def test_export_refuses_bad_input_with_one_line(tiny_bases, tmp_path, capsys):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine").write_text("x")
    cases = [
        ([str(tmp_path / "nowhere"), "--output", str(tmp_path / "e1")], "neither a dsee-tune checkpoint"),
        (
            [str(tmp_path / "ckpt"), "--output", str(tmp_path / "e2"), "--format", "coreml"],
            "--format 'coreml'",
        ),
        ([str(tmp_path / "ckpt"), "--output", str(tmp_path / "taken")], "pass --overwrite"),
    ]
    for argv, expected in cases:
        assert export(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    (tmp_path / "ckpt" / "adapter.safetensors").write_bytes(b"\x00" * 16)
    assert export([str(tmp_path / "ckpt"), "--output", str(tmp_path / "e3")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert (tmp_path / "taken" / "mine").read_text() == "x"
