"""Gates on attention heads and FFN neurons: multiply the input of the attention output projection O (the
concatenated head contexts) and of the second FFN projection (the neuron activations) by per-head / per-neuron
factors. A 0/1 gate is the "masked but unshrunk" model that surgery must reproduce; a gate of ones with
gradients gives the first-order Taylor importance |dL/dm| of each head and neuron (Michel et al., 2019)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..architectures import ArchSpec, get_module, get_spec
from ..tuning.layer import projection_shape


def structure_sizes(model: nn.Module, spec: ArchSpec | None = None) -> tuple[int, int, int]:
    """(layers, heads per layer, FFN width) of a dense model."""
    spec = spec or get_spec(model.config.model_type)
    block = spec.blocks(model)[0]
    width = projection_shape(get_module(block, spec.ffn_in))[0]
    return len(spec.blocks(model)), spec.num_heads(model.config), width


@contextmanager
def gated(model: nn.Module, head_gates: torch.Tensor, ffn_gates: torch.Tensor, spec: ArchSpec | None = None):
    """Within the block, head h of layer l is scaled by head_gates[l, h] (L, H) and FFN neuron j by
    ffn_gates[l, j] (L, F). The model must be dense (not shrunk)."""
    spec = spec or get_spec(model.config.model_type)
    head_size = spec.hidden_size(model.config) // spec.num_heads(model.config)
    handles = []
    for i, block in enumerate(spec.blocks(model)):

        def scale_heads(module, args, i=i):
            (x, *rest) = args  # (B, T, H * head_size)
            return (x * head_gates[i].repeat_interleave(head_size).to(x.dtype), *rest)

        def scale_ffn(module, args, i=i):
            (x, *rest) = args  # (B, T, F)
            return (x * ffn_gates[i].to(x.dtype), *rest)

        handles.append(get_module(block, spec.attn_out).register_forward_pre_hook(scale_heads))
        handles.append(get_module(block, spec.ffn_out).register_forward_pre_hook(scale_ffn))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gates_for(layers: list[dict], num_heads: int, ffn_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 gates (L, H) and (L, F) that keep what pruning.json's `layers` keep."""
    heads = torch.zeros(len(layers), num_heads)
    ffn = torch.zeros(len(layers), ffn_width)
    for i, entry in enumerate(layers):
        heads[i, entry["kept_heads"]] = 1.0
        ffn[i, entry["kept_ffn"]] = 1.0
    return heads, ffn
