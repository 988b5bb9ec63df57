"""Removing attention heads and FFN neurons from a (possibly DSEE-wrapped) transformers model.

Heads go through transformers' own `prune_heads` of each attention module, which slices Q, K, V and O and keeps
the module's head count right; the DSEE updates of those projections are sliced the same way here. A layer
that loses every head gets an `AttentionSkip` in place of its attention (transformers' code cannot run zero
heads), and a layer that loses every FFN neuron keeps zero-width FFN projections whose output is the bias.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_layer

from ..architectures import ArchSpec, get_module, get_spec, set_module
from ..tuning.layer import DSEELayer, projection_shape


class AttentionSkip(nn.Module):
    """Stands in for the attention of a layer with no heads left: contributes O's bias and nothing else."""

    def __init__(
        self, hidden_size: int, bias: torch.Tensor | None, layer_idx: int | None = None, head_size: int = 0
    ):
        super().__init__()
        self.hidden_size = hidden_size
        # A decoder's cache (transformers' Cache) counts the tokens seen from each layer's keys: this layer adds
        # zero-head keys, so that the count and each layer's index stay right without holding anything.
        self.layer_idx, self.head_size = layer_idx, head_size
        if bias is None:  # O stays outside (BERT): return a zero-width context for it
            self.register_buffer("bias", None)
        else:
            self.register_buffer("bias", bias.detach().clone())

    def forward(self, *args, **kwargs):
        # Attention modules are called with their input first, by position or by name (DistilBERT: query=).
        hidden_states = (
            args[0] if args else kwargs.get("hidden_states", kwargs.get("query"))
        )  # (B, T, hidden)
        cache = kwargs.get("past_key_values")
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            none = hidden_states.new_zeros(
                (hidden_states.shape[0], 0, hidden_states.shape[1], self.head_size)
            )
            cache.update(none, none, self.layer_idx, {"cache_position": kwargs.get("cache_position")})
        # Written with shape-following ops (slice, expand_as), not sizes read into Python, so that a traced or
        # exported graph keeps its batch and sequence axes dynamic.
        if self.bias is None:
            return hidden_states[..., :0], None  # (B, T, 0): no heads, no context
        return self.bias.to(hidden_states.dtype).expand_as(hidden_states), None  # (B, T, hidden)


def slice_projection(module: nn.Module, index: torch.Tensor, side: str) -> nn.Module:
    """Keep output rows (`side="out"`) or input columns (`side="in"`) `index` of a Linear / Conv1D, DSEE-wrapped
    or not. Returns the new module (transformers' prune_layer builds a fresh one)."""
    index = index.to(torch.long)
    if isinstance(module, DSEELayer):
        return _rewrap(module, slice_projection(module.base_layer, index, side), index, side)
    # prune_layer's dim: Linear keeps weight (out, in), Conv1D keeps (in, out)
    dim = {"out": 0, "in": 1}[side] if isinstance(module, nn.Linear) else {"out": 1, "in": 0}[side]
    requires_grad = module.weight.requires_grad
    with warnings.catch_warnings():
        # torch warns that initialising an empty layer is a no-op: expected when a layer loses everything
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = prune_layer(module, index, dim=dim)
        if isinstance(new, Conv1D) and 0 in new.weight.shape:
            # Conv1D's forward cannot reshape a zero-width input; an equivalent Linear can run it.
            in_f, out_f = new.weight.shape
            linear = nn.Linear(in_f, out_f, device=new.weight.device, dtype=new.weight.dtype)
            linear.weight.data, linear.bias.data = new.weight.data.T.contiguous(), new.bias.data
            new = linear
    for p in new.parameters():
        p.requires_grad_(requires_grad)
    return new


def _rewrap(old: DSEELayer, new_base: nn.Module, index: torch.Tensor, side: str) -> DSEELayer:
    """Wrap an already sliced base projection, with `old`'s updates sliced to the same rows / columns."""
    new = DSEELayer(new_base)
    new.merged = old.merged
    for name, update in old.updates.items():
        if side == "in":
            update.keep_cols(index)
        else:
            rows = update.rows
            local = index[(index >= rows.start) & (index < rows.stop)] - rows.start
            update.keep_rows(local, row_start=int((index < rows.start).sum()))
        new.updates[name] = update
    return new


def remove_heads(model: nn.Module, layer: int, heads: list[int], spec: ArchSpec | None = None) -> None:
    """Remove `heads` (indices into the layer's current heads) from block `layer`, in place."""
    spec = spec or get_spec(model.config.model_type)
    block = spec.blocks(model)[layer]
    attention = get_module(block, spec.attention)
    if isinstance(attention, AttentionSkip) or not heads:
        return
    n_heads = spec.num_heads(model.config) - len(getattr(attention, "pruned_heads", ()))
    head_size = spec.hidden_size(model.config) // spec.num_heads(model.config)
    if len(heads) >= n_heads:
        o = get_module(block, spec.attn_out)
        if spec.skip_returns_context:
            set_module(block, spec.attn_out, slice_projection(o, torch.empty(0, dtype=torch.long), "in"))
            bias = None
        else:
            bias = (o.base_layer if isinstance(o, DSEELayer) else o).bias
        skip = AttentionSkip(spec.hidden_size(model.config), bias, layer if spec.decoder else None, head_size)
        set_module(block, spec.attention_skip, skip)
        return
    kept_heads = [h for h in range(n_heads) if h not in set(heads)]
    index = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in kept_heads])
    # Let transformers' prune_heads do the slicing and bookkeeping on the bare projections, then slice the DSEE
    # updates the same way and wrap the new projections again.
    sites = {spec.query, spec.key, spec.value, spec.attn_out}
    wrapped = {p: get_module(block, p) for p in sites if isinstance(get_module(block, p), DSEELayer)}
    for path, layer_ in wrapped.items():
        set_module(block, path, layer_.base_layer)
    # prune_heads rebuilds Q, K, V and O as fresh layers with gradients on: what trains after the surgery must be
    # what trained before it (by name; the DSEE updates and the head), never the frozen base weights.
    trains = {name for name, p in block.named_parameters() if p.requires_grad}
    attention.prune_heads(_original_head_ids(attention, heads, n_heads))
    for name, p in block.named_parameters():
        p.requires_grad_(name in trains)
    for path, layer_ in wrapped.items():
        if path == spec.attn_out:
            side, kept = "in", index
        elif spec.packed_qkv:
            block_rows = projection_shape(layer_)[0] // 3  # rows of each of Q, K, V before pruning
            side, kept = "out", torch.cat([index + i * block_rows for i in range(3)])
        else:
            side, kept = "out", index
        set_module(block, path, _rewrap(layer_, get_module(block, path), kept, side))


def _original_head_ids(attention: nn.Module, heads: list[int], n_heads: int) -> list[int]:
    """transformers' prune_heads numbers heads as in the unpruned layer; map current indices to those."""
    pruned = sorted(getattr(attention, "pruned_heads", ()))
    original = [h for h in range(n_heads + len(pruned)) if h not in set(pruned)]
    return [original[h] for h in heads]


def remove_ffn_neurons(
    model: nn.Module, layer: int, keep: torch.Tensor, spec: ArchSpec | None = None
) -> None:
    """Keep only FFN neurons `keep` (ascending indices into the current width) of block `layer`, in place."""
    spec = spec or get_spec(model.config.model_type)
    block = spec.blocks(model)[layer]
    set_module(block, spec.ffn_in, slice_projection(get_module(block, spec.ffn_in), keep, "out"))
    set_module(block, spec.ffn_out, slice_projection(get_module(block, spec.ffn_out), keep, "in"))


def apply_structure(model: nn.Module, layers: list[dict], spec: ArchSpec | None = None) -> nn.Module:
    """Shrink a dense model to `layers` (pruning.json's per-layer `kept_heads` and `kept_ffn`), in place."""
    spec = spec or get_spec(model.config.model_type)
    n_heads = spec.num_heads(model.config)
    for i, entry in enumerate(layers):
        kept = set(entry["kept_heads"])
        remove_heads(model, i, [h for h in range(n_heads) if h not in kept], spec)
        width = projection_shape(get_module(spec.blocks(model)[i], spec.ffn_in))[0]
        if len(entry["kept_ffn"]) < width:
            remove_ffn_neurons(model, i, torch.tensor(entry["kept_ffn"], dtype=torch.long), spec)
    return model
