"""The DSEE layer, the sparse support, and merging on every registered architecture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SAME_FUNCTION, TINY_CONFIGS, batch_for, build_base, randomize_updates
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from dsee_deploy.architectures import get_spec, supported
from dsee_deploy.errors import DSEEError
from dsee_deploy.tuning import (
    DSEEConfig,
    DSEELayer,
    choose_support,
    count_parameters,
    dsee_layers,
    grow_rank,
    inject_dsee,
    merge_dsee,
    unmerge_dsee,
    unwrap_dsee,
)


def test_every_registered_architecture_has_a_tiny_test_model():
    assert set(TINY_CONFIGS) == set(supported())


def _wrapped(base: nn.Module, rows=slice(None), n=5):
    layer = DSEELayer(base)
    u = layer.add_update("query", rows, rank=3, alpha=6.0, num_sparse=n)
    gen = torch.Generator().manual_seed(0)
    u.reset_parameters(gen)
    u.sparse_indices.copy_(choose_support(layer.out_in_weight[u.rows], n, "random", gen))
    with torch.no_grad():
        u.lora_B.normal_(generator=gen)
        u.sparse_values.normal_(generator=gen)
    return layer, u


@pytest.mark.parametrize(
    "base, rows",
    [
        (nn.Linear(12, 10), slice(None)),
        (Conv1D(10, 12), slice(None)),  # GPT-2 layout: weight is (in=12, out=10)
        (Conv1D(30, 12), slice(20, 30)),  # one block of a packed projection (the value rows of c_attn)
    ],
    ids=["linear", "conv1d", "conv1d-packed-block"],
)
def test_layer_computes_the_dsee_formula_and_merge_unmerge_mirror(base, rows):
    torch.manual_seed(0)
    layer, u = _wrapped(base, rows)
    x = torch.randn(4, 7, 12)  # (B, T, in)
    w0 = layer.out_in_weight.detach().clone()
    # y = W x + b + s (B A + S ⊙ Ω) x, with S written out densely here (never in the layer itself)
    dense_s = torch.zeros(u.out_features * u.in_features)
    dense_s[u.sparse_indices] = u.sparse_values.detach()
    delta = torch.zeros_like(w0)
    delta[u.rows] = u.scaling * (u.lora_B @ u.lora_A + dense_s.view(u.out_features, u.in_features)).detach()
    expected = x @ (w0 + delta).T + base.bias.detach()
    # 1e-5: fp32 matmuls of width 12 summed in a different order
    torch.testing.assert_close(layer(x), expected, **SAME_FUNCTION)
    torch.testing.assert_close(layer.delta_weight(), delta, atol=1e-6, rtol=0)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, **SAME_FUNCTION)
    layer.unmerge()
    # unmerge subtracts what merge added: equal up to one fp32 rounding of each weight
    torch.testing.assert_close(layer.out_in_weight, w0, atol=1e-6, rtol=0)


def test_only_the_updates_receive_gradients_and_sparse_values_stay_sparse():
    layer, u = _wrapped(nn.Linear(12, 10), n=4)
    layer(torch.randn(3, 12)).sum().backward()
    assert layer.base_layer.weight.grad is None
    assert u.sparse_values.grad.shape == (4,)  # N values, never a dense (out, in) gradient
    assert u.sparse_values.grad.abs().sum() > 0
    assert u.lora_A.grad is not None and u.lora_B.grad is not None
    assert not u.sparse_indices.requires_grad


def test_merge_refuses_non_finite_updates():
    layer, u = _wrapped(nn.Linear(12, 10))
    with torch.no_grad():
        u.sparse_values[0] = float("nan")
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="NaN"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w0)


@pytest.mark.parametrize("method", ["grebsmo", "magnitude", "random"])
def test_support_is_deterministic_for_a_seed(method):
    w = torch.randn(40, 30)
    pick = lambda seed: choose_support(w, 16, method, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b = pick(1), pick(1)
    assert torch.equal(a, b)
    assert a.unique().numel() == 16 and a.min() >= 0 and a.max() < w.numel()


def test_grebsmo_finds_the_entries_a_low_rank_model_explains_worst():
    # W = large rank-2 part + 10 planted moderate spikes. Magnitude is dominated by the low-rank part;
    # the GreBsmo residual isolates the spikes.
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(64, 2, generator=gen) @ torch.randn(2, 48, generator=gen)
    spikes = torch.randperm(64 * 48, generator=gen)[:10]
    w = low.flatten().clone()
    w[spikes] += 1.5 * torch.sign(torch.randn(10, generator=gen))
    w = w.view(64, 48)
    got = set(choose_support(w, 10, "grebsmo", torch.Generator().manual_seed(1), grebsmo_rank=2).tolist())
    by_magnitude = set(choose_support(w, 10, "magnitude", torch.Generator()).tolist())
    assert got == set(spikes.tolist())
    assert by_magnitude != got  # the test would not tell the methods apart otherwise


def test_config_round_trips_through_json_and_checks_values():
    cfg = DSEEConfig(
        rank=8, alpha=16, num_sparse=4, target_modules=("query", "key"), sparse_init="random", seed=3
    )
    again = DSEEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.to_dict()["format_version"] == 1
    for bad in (
        {"rank": 0},
        {"alpha": 0},
        {"num_sparse": -1},
        {"sparse_init": "svd"},
        {"target_modules": ("query", "keys")},
    ):
        with pytest.raises(ValueError):
            DSEEConfig(**bad)
    with pytest.raises(DSEEError, match="format version"):
        DSEEConfig.from_dict({**cfg.to_dict(), "format_version": 99})


def _load_tiny(model_type, path):
    cls = AutoModelForCausalLM if get_spec(model_type).decoder else AutoModelForSequenceClassification
    model = (
        cls.from_pretrained(path, num_labels=3)
        if cls is AutoModelForSequenceClassification
        else cls.from_pretrained(path)
    )
    return model.eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@pytest.mark.parametrize(
    "targets",
    [("query", "value"), ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")],
    ids=["qv", "all"],
)
def test_merged_equals_unmerged_on_every_architecture(model_type, targets, tmp_path):
    model, tok = _load_tiny(model_type, build_base(model_type, tmp_path / model_type))
    batch = batch_for(tok)
    with torch.no_grad():
        before = model(**batch).logits
    inject_dsee(model, DSEEConfig(rank=4, alpha=8, num_sparse=6, target_modules=targets, seed=0))
    with torch.no_grad():
        # B = 0 and S = 0 at init: the wrapped model starts at the pre-trained function
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-6, rtol=0)
        randomize_updates(model)
        unmerged = model(**batch).logits
        # the updates do change the function (relative: tiny heads give logits of order 1e-2)
        assert (unmerged - before).abs().max() > 1e-2 * before.abs().max()
        merge_dsee(model)
        torch.testing.assert_close(model(**batch).logits, unmerged, **SAME_FUNCTION)
        unmerge_dsee(model)
        torch.testing.assert_close(model(**batch).logits, unmerged, **SAME_FUNCTION)
        plain = unwrap_dsee(model)
        assert not list(dsee_layers(plain))
        torch.testing.assert_close(plain(**batch).logits, unmerged, **SAME_FUNCTION)


def test_trainable_share_on_a_bert_base_sized_model():
    # DSEE.md: BERT-base with r = 16 on Q and V trains about 0.54 % of the parameters (with the task head).
    from transformers import BertConfig

    model = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
    paper = DSEEConfig(rank=16, alpha=32, target_modules=("query", "value"), sparse_init="random")
    inject_dsee(model, paper)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    trainable, total = count_parameters(model)
    assert 0.5 < 100 * trainable / total < 0.6


def test_growing_the_rank_keeps_the_function_and_adds_trainable_directions(tmp_path):
    model, tok = _load_tiny("bert", build_base("bert", tmp_path / "bert"))
    config = DSEEConfig(rank=2, alpha=4, num_sparse=3, target_modules=("query", "ffn_out"), seed=0)
    inject_dsee(model, config)
    randomize_updates(model)
    batch = batch_for(tok)
    with torch.no_grad():
        before = model(**batch).logits
    trainable_before, _ = count_parameters(model)
    grown = grow_rank(model, config, 6, seed=1)
    assert (grown.rank, grown.scaling) == (6, config.scaling)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, **SAME_FUNCTION)
    assert count_parameters(model)[0] > trainable_before
    for _, layer in dsee_layers(model):
        for update in layer.updates.values():
            assert update.lora_A.shape[0] == update.lora_B.shape[1] == 6
            assert update.lora_A[2:].abs().sum() > 0 and update.lora_B[:, 2:].abs().sum() == 0
    with pytest.raises(DSEEError, match="--retune-rank 4 is below the checkpoint's rank 6"):
        grow_rank(model, grown, 4, seed=1)
