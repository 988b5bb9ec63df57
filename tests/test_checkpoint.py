"""Saving and reloading DSEE checkpoints: same outputs unmerged and merged, on every architecture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SAME_FUNCTION, TINY_CONFIGS, batch_for, build_base, make_checkpoint

from dsee_deploy import load_dsee, load_merged
from dsee_deploy.checkpoint import ADAPTER_FILE, CONFIG_FILE
from dsee_deploy.errors import DSEEError
from dsee_deploy.tuning import dsee_layers


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_checkpoint_reloads_to_the_same_outputs_unmerged_and_merged(model_type, tiny_bases, tmp_path):
    model, tok = make_checkpoint(model_type, tiny_bases[model_type], tmp_path / "ckpt")
    batch = batch_for(tok)
    with torch.no_grad():
        expected = model(**batch).logits
        reloaded, _, info = load_dsee(tmp_path / "ckpt")
        assert info["architecture"] == model_type and list(dsee_layers(reloaded))
        torch.testing.assert_close(reloaded(**batch).logits, expected, **SAME_FUNCTION)
        merged, tok2 = load_merged(tmp_path / "ckpt")
        assert not list(dsee_layers(merged)) and type(merged).__module__.startswith("transformers.")
        torch.testing.assert_close(merged(**batch).logits, expected, **SAME_FUNCTION)
    assert tok2(["the film"])["input_ids"] == tok(["the film"])["input_ids"]


def test_adapter_holds_only_what_was_trained(tiny_bases, tmp_path):
    from safetensors.torch import load_file

    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    names = set(load_file(str(tmp_path / "ckpt" / ADAPTER_FILE)))
    assert names and all(".updates." in n or n.startswith("classifier.") for n in names)
    assert any(n.endswith("sparse_indices") for n in names) and any(
        n.endswith("sparse_values") for n in names
    )
    assert not any("base_layer" in n or "embeddings" in n for n in names)
    info = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert info["format_version"] == 1 and len(info["base_model"]["sha256"]) == 64
    assert info["dsee"]["rank"] == 4 and info["task"]["label_names"] == ["neg", "pos"]


def test_loading_against_other_base_weights_names_both_hashes_and_the_fix(tiny_bases, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    other = build_base("bert", tmp_path / "other-bert", seed=1)
    with pytest.raises(DSEEError, match=r"tuned on base weights with sha256 .* pass --base-model") as err:
        load_merged(tmp_path / "ckpt", base_model=str(other))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / ADAPTER_FILE).unlink(), "missing adapter.safetensors"),
        (lambda d: (d / CONFIG_FILE).unlink(), "missing dsee_config.json"),
        (lambda d: (d / ADAPTER_FILE).write_bytes(b"\x00" * 40), "not a readable safetensors file"),
        (lambda d: (d / CONFIG_FILE).write_text("{"), "not valid JSON"),
    ],
    ids=["no-adapter", "no-config", "corrupt-adapter", "corrupt-config"],
)
def test_damaged_checkpoints_fail_with_one_clear_line(damage, message, tiny_bases, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    damage(tmp_path / "ckpt")
    with pytest.raises(DSEEError, match=message) as err:
        load_merged(tmp_path / "ckpt")
    assert "\n" not in str(err.value) and "ckpt" in str(err.value)


def test_adapter_written_for_another_config_is_refused(tiny_bases, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt")
    info = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    info["dsee"]["rank"] = 8
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(info))
    with pytest.raises(DSEEError, match="does not match the model .*lora_A has shape"):
        load_merged(tmp_path / "ckpt")
