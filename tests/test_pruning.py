"""Pruning: masked and physically shrunk models agree on every architecture; pruned checkpoints reload."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    LAYOUT,
    SAME_FUNCTION,
    TINY_CONFIGS,
    batch_for,
    make_checkpoint,
    randomize_updates,
    save_pruned,
)

from dsee_deploy import load_dsee, load_merged
from dsee_deploy.architectures import get_spec
from dsee_deploy.checkpoint import (
    ADAPTER_FILE,
    CONFIG_FILE,
    MASKS_FILE,
    PRUNING_FILE,
)
from dsee_deploy.errors import DSEEError
from dsee_deploy.pruning import PruneConfig, load_masks, prune_model, save_masks
from dsee_deploy.pruning.gates import gated, gates_for, structure_sizes
from dsee_deploy.pruning.select import keep_structured, magnitude_masks
from dsee_deploy.surgery import apply_structure
from dsee_deploy.tuning import DSEEConfig, dsee_layers, unwrap_dsee

ALL = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


# Tiny models: 2 layers, 4 heads, FFN width 48. Layer 0 keeps 2 heads and a third of its FFN; layer 1 keeps
# nothing: its attention and FFN both reduce to their output biases.
def _dsee_model(model_type, tiny_bases, tmp_path, targets=ALL):
    from test_tuning import _load_tiny

    from dsee_deploy.tuning import inject_dsee

    model, tok = _load_tiny(model_type, tiny_bases[model_type])
    inject_dsee(
        model, DSEEConfig(rank=4, alpha=8, num_sparse=40, target_modules=targets, sparse_init="random")
    )
    randomize_updates(model)
    return model.eval(), tok


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("layout", [LAYOUT, LAYOUT[::-1]], ids=["empty-last", "empty-first"])
def test_shrunk_model_equals_masked_model_including_empty_layers(model_type, layout, tiny_bases, tmp_path):
    model, tok = _dsee_model(model_type, tiny_bases, tmp_path)
    batch = batch_for(tok)
    _, heads, width = structure_sizes(model)
    head_gates, ffn_gates = gates_for(layout, heads, width)
    shrunk = apply_structure(copy.deepcopy(model), layout)
    with torch.no_grad():
        with gated(model, head_gates, ffn_gates):
            masked = model(**batch).logits
        full = model(**batch).logits
        out = shrunk(**batch).logits
    assert (full - masked).abs().max() > 1e-4  # the pruning matters, so agreement below means something
    torch.testing.assert_close(out, masked, **SAME_FUNCTION)  # fp32: the same sums over fewer terms
    # shapes: every DSEE update sliced with its projection
    spec = get_spec(model_type)
    for _, layer in dsee_layers(shrunk):
        out_f, in_f = layer.out_in_weight.shape
        for update in layer.updates.values():
            assert update.lora_A.shape[1] == in_f and update.row_start + update.out_features <= out_f
            assert (update.sparse_indices < update.out_features * update.in_features).all()
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())
    merged = unwrap_dsee(shrunk)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, masked, **SAME_FUNCTION)
    assert spec.blocks(merged)


def test_global_selection_is_non_uniform_and_exact():
    scores = torch.tensor([[1.0, 2, 3, 4], [10, 20, 30, 40], [0.1, 0.2, 0.3, 50]])
    kept = keep_structured(scores, 0.5, "global", minimum=0)
    assert kept == [[3], [0, 1, 2, 3], [3]]  # the six lowest scores, wherever they are
    # minimum 2 per layer: once layers 0 and 2 are down to 2, the ranking moves on to layer 1
    assert keep_structured(scores, 0.5, "global", minimum=2) == [[2, 3], [2, 3], [2, 3]]
    assert [len(k) for k in keep_structured(scores, 0.5, "layer", minimum=0)] == [2, 2, 2]


def test_unstructured_masks_hit_the_ratio_globally_and_per_matrix():
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(8, 6, generator=gen), "b": 3 * torch.rand(4, 5, generator=gen)}
    total = sum(s.numel() for s in scores.values())
    glob = magnitude_masks(scores, 0.5, "global")
    assert sum(int((~m).sum()) for m in glob.values()) == round(0.5 * total)
    assert (~glob["a"]).sum() > (~glob["b"]).sum()  # global: the low-scoring matrix loses more
    per = magnitude_masks(scores, 0.5, "layer")
    assert [int((~m).sum()) for m in per.values()] == [24, 10]


def test_masks_round_trip_as_packed_bits(tmp_path):
    masks = {"layer.0.query": torch.rand(7, 9) > 0.5, "layer.1.ffn_out": torch.rand(3, 5) > 0.3}
    save_masks(masks, tmp_path / "m.safetensors")
    again = load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(again[k], masks[k]) for k in masks)
    assert (tmp_path / "m.safetensors").stat().st_size < 500  # bits, not bytes or floats


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_unstructured_mask_holds_through_training_and_merging(model_type, tiny_bases, tmp_path):
    model, tok = _dsee_model(model_type, tiny_bases, tmp_path, targets=("query", "value"))
    record, masks = prune_model(model, PruneConfig(unstructured=0.5, importance="wabs"))
    assert record.unstructured and not record.structured
    assert abs(1 - record.parameters["encoder_nonzero"] / record.parameters["encoder_dense"] - 0.5) < 0.15
    layers = dict(dsee_layers(model))
    # a trained update must not revive a pruned weight: move B and S, then merge
    with torch.no_grad():
        for layer in layers.values():
            for u in layer.updates.values():
                u.lora_B.add_(1.0)
                u.sparse_values.add_(1.0)
    batch = batch_for(tok)
    with torch.no_grad():
        unmerged = model(**batch).logits
        merged = unwrap_dsee(model)
        torch.testing.assert_close(merged(**batch).logits, unmerged, **SAME_FUNCTION)
    spec = get_spec(model_type)
    for name, mask in masks.items():
        _, i, target = name.split(".")
        site = spec.site(target)
        module = spec.blocks(merged)[int(i)].get_submodule(site.path)
        w = module.weight.T if module.__class__.__name__ == "Conv1D" else module.weight
        rows = w.shape[0] // site.parts
        assert (w[site.part * rows : (site.part + 1) * rows][~mask] == 0).all(), name


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("importance", ["abs", "wabs", "taylor"])
def test_pruned_checkpoint_reloads_to_the_same_outputs(model_type, importance, tiny_bases, tmp_path):
    model, tok = make_checkpoint(model_type, tiny_bases[model_type], tmp_path / "dense")
    batch = batch_for(tok)
    labels = batch["input_ids"].clone() if get_spec(model_type).decoder else torch.tensor([0, 1, 1])
    batches = [{**batch, "labels": labels}] * 2
    config = PruneConfig(
        heads=0.5, ffn=0.5, unstructured=0.3 if importance != "taylor" else 0.0, importance=importance
    )
    record, masks = prune_model(model, config, batches=batches)
    assert record.flops["encoder_ratio"] < 0.75
    with torch.no_grad():
        expected = model(**batch).logits
    out = save_pruned(tmp_path, model, tok, record, masks)
    reloaded, _, info2 = load_dsee(out)
    assert info2["pruning"]["layers"] == record.layers
    merged, _ = load_merged(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, **SAME_FUNCTION)
        torch.testing.assert_close(merged(**batch).logits, expected, **SAME_FUNCTION)
    assert (out / MASKS_FILE).exists() == bool(masks)


def test_bad_ratios_are_refused_with_the_flag_name():
    for kwargs, flag in (
        ({"heads": 1.0}, "--prune-heads"),
        ({"ffn": -0.1}, "--prune-ffn"),
        ({"unstructured": 1.5}, "--prune-unstructured"),
    ):
        with pytest.raises(ValueError, match=f"{flag} must be in \\[0, 1\\)"):
            PruneConfig(**kwargs)
    with pytest.raises(ValueError, match="taylor scores heads"):
        PruneConfig(unstructured=0.5, importance="taylor")


def test_pruning_twice_the_same_way_is_refused(tiny_bases, tmp_path):
    model, tok = make_checkpoint("bert", tiny_bases["bert"], tmp_path / "dense")
    record, _ = prune_model(model, PruneConfig(heads=0.25, importance="wabs"))
    with pytest.raises(DSEEError, match="already pruned"):
        prune_model(model, PruneConfig(ffn=0.25, importance="wabs"), previous=record)
    both, masks = prune_model(model, PruneConfig(unstructured=0.2), previous=record)  # compatible: adds masks
    assert both.structured and both.unstructured and masks
    with pytest.raises(DSEEError, match="already has unstructured masks"):
        prune_model(model, PruneConfig(unstructured=0.2), previous=both)


def test_a_mask_file_of_another_model_is_refused(tiny_bases, tmp_path):
    model, tok = make_checkpoint("bert", tiny_bases["bert"], tmp_path / "dense")
    record, masks = prune_model(model, PruneConfig(heads=0.5, unstructured=0.3, importance="wabs"))
    out = save_pruned(tmp_path, model, tok, record, masks)
    save_masks({"layer.0.query": torch.ones(5, 5, dtype=torch.bool)}, out / MASKS_FILE)
    with pytest.raises(DSEEError, match="masks.safetensors' does not match the model .*re-run dsee-prune"):
        load_merged(out)
    assert {ADAPTER_FILE, CONFIG_FILE, PRUNING_FILE} <= {p.name for p in out.iterdir()}


def test_a_surgery_that_changes_the_function_is_caught(tiny_bases, tmp_path, monkeypatch):
    import dsee_deploy.pruning.prune as prune_module

    real = prune_module.apply_structure

    def faulty(model, layers, spec=None):
        real(model, layers, spec)
        with (
            torch.no_grad()
        ):  # a surgery bug: wrong values in layer 0's FFN output (logits move ~2.6e-2 here)
            dense = get_spec("bert").blocks(model)[0].output.dense
            getattr(dense, "base_layer", dense).weight.mul_(
                100.0
            )  # a DSEE layer (ffn_out is tuned) or Linear

    monkeypatch.setattr(prune_module, "apply_structure", faulty)
    model, _ = make_checkpoint("bert", tiny_bases["bert"], tmp_path / "dense")
    with pytest.raises(DSEEError, match="physically pruned model differs from the masked one"):
        prune_model(model, PruneConfig(heads=0.25, ffn=0.25, importance="wabs"))


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize(
    "kind",
    [{"heads": 0.5}, {"ffn": 0.5}, {"unstructured": 0.3}, {"layout": LAYOUT}],
    ids=["heads", "ffn", "unstructured", "empty-layer"],
)
def test_pruning_trains_only_the_dsee_updates_and_the_head(model_type, kind, tiny_bases, tmp_path):
    """transformers' prune_heads rebuilds Q, K, V and O with gradients on: pruning must leave the base frozen."""
    from dsee_deploy.checkpoint import adapter_state

    model, tok = make_checkpoint(model_type, tiny_bases[model_type], tmp_path / "dense")
    model.train()
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    layout = kind.get("layout")
    ratios = {k: v for k, v in kind.items() if k != "layout"}
    config = PruneConfig(**ratios, importance="wabs") if ratios else PruneConfig(heads=0.5, ffn=0.5)
    prune_model(model, config, layout=layout)
    prefix = model.base_model_prefix + "."
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert after <= before  # a layer that lost every head lost its Q, K, V updates with them
    assert all(".updates." in n or not n.startswith(prefix) for n in after), sorted(after)
    saved = {n for n in adapter_state(model) if not n.endswith("sparse_indices")}
    assert saved == after


def test_fisher_scores_need_no_labels_and_rank_what_moves_the_output(tiny_bases):
    """fisher importance draws outputs from the model itself: batches without labels score every head and
    neuron, the same on every run, and a head whose output projection is zeroed (it cannot move the output)
    scores 0 while the others do not."""
    from transformers import AutoModel, AutoTokenizer

    from dsee_deploy.architectures import get_spec
    from dsee_deploy.pruning.importance import structured_scores

    model = AutoModel.from_pretrained(tiny_bases["bert"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bases["bert"])
    spec = get_spec("bert")
    batch = dict(
        tokenizer(["the film was good", "a long and dull movie", "bad"], padding=True, return_tensors="pt")
    )
    heads = spec.num_heads(model.config)
    size = spec.hidden_size(model.config) // heads
    out_proj = model.encoder.layer[0].attention.output.dense
    with torch.no_grad():
        out_proj.weight[:, :size] = 0  # head 0 of layer 0 writes nothing
    first = structured_scores(model, "fisher", [batch, batch], spec)
    second = structured_scores(model, "fisher", [batch, batch], spec)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    head_scores, ffn_scores = first
    assert head_scores[0, 0] == 0 and (head_scores[0, 1:] > 0).all() and (ffn_scores > 0).all()
    pooled = structured_scores(
        model, "fisher", [batch], spec, output=lambda m, b: m(**b).last_hidden_state[:, 0]
    )
    assert pooled[0].shape == head_scores.shape and not torch.equal(pooled[0], head_scores)


def test_fisher_refuses_a_head_share():
    from dsee_deploy.errors import ConfigError
    from dsee_deploy.pruning import PruneConfig

    with pytest.raises(ConfigError, match="fisher scores are on one scale"):
        PruneConfig(target_speedup=2, importance="fisher", head_share=0.3)
