"""Importance scores for pruning (../shared/DSEE.md §2).

Structured, per head and per FFN neuron:
    abs     summed |update| over the head's rows of Q and V (DSEE's "ABS"); for FFN neurons, |W| of the neuron's
            row of the first projection and column of the second (plus their updates where tuned)
    wabs    the same over |W + update| ("WABS")
    taylor  first-order |dL/dm| of a gate m on each head and neuron, summed over batches of training data; the
            weight-only scores are known to be weak (Michel et al., 2019)
Unstructured, per weight: abs is |update| for tuned matrices and |W| for frozen ones; wabs is |W + update|.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..architectures import ArchSpec, get_module, get_spec
from ..tuning.layer import DSEELayer
from .gates import gated, structure_sizes

STRUCTURED = ("abs", "wabs", "taylor")
UNSTRUCTURED = ("abs", "wabs")


def effective_weight(module: nn.Module, importance: str) -> torch.Tensor:
    """Score per weight, (out, in): |update| for tuned matrices under `abs`, |W + update| under `wabs`,
    |W| for frozen matrices under both. Weights already masked out score 0."""
    if isinstance(module, DSEELayer):
        if module.merged:
            raise ValueError("score an unmerged DSEE model: the update is needed apart from W")
        delta = module.delta_weight()
        mask = getattr(module, "weight_mask", None)
        if mask is not None:
            delta = delta * mask
        score = delta if importance == "abs" and module.updates else module.out_in_weight.float() + delta
        return score.abs().detach()
    w = module.weight.T if isinstance(module, Conv1D) else module.weight  # Conv1D stores (in, out)
    return w.detach().float().abs()


def structured_scores(
    model: nn.Module, importance: str, batches=None, spec: ArchSpec | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores (L, H), FFN neuron scores (L, F)) of a dense model; larger is more important."""
    spec = spec or get_spec(model.config.model_type)
    if importance == "taylor":
        if batches is None:
            raise ValueError("taylor importance needs training batches")
        return taylor_scores(model, batches, spec)
    layers, n_heads, _ = structure_sizes(model, spec)
    head_size = spec.hidden_size(model.config) // n_heads
    heads, ffn = [], []
    for block in spec.blocks(model):
        per_head = torch.zeros(n_heads)
        for target in ("query", "value"):
            site = spec.site(target)
            w = effective_weight(get_module(block, site.path), importance)  # (out, in)
            rows = w.shape[0] // site.parts
            w = w[site.part * rows : (site.part + 1) * rows]  # this target's block of a packed projection
            per_head += w.view(n_heads, head_size, -1).sum(dim=(1, 2))
        heads.append(per_head)
        w_in = effective_weight(get_module(block, spec.ffn_in), importance)  # (F, hidden)
        w_out = effective_weight(get_module(block, spec.ffn_out), importance)  # (hidden, F)
        ffn.append(w_in.sum(dim=1) + w_out.sum(dim=0))
    return torch.stack(heads), torch.stack(ffn)


def taylor_scores(model: nn.Module, batches, spec: ArchSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulated |dL/dm| for gates m = 1 on every head and FFN neuron, over `batches` (dicts with labels)."""
    layers, n_heads, width = structure_sizes(model, spec)
    head_gates = torch.ones(layers, n_heads, requires_grad=True)
    ffn_gates = torch.ones(layers, width, requires_grad=True)
    head_scores, ffn_scores = torch.zeros(layers, n_heads), torch.zeros(layers, width)
    was_training = model.training
    model.eval()  # no dropout: the scores should be a property of the model, not of a dropout draw
    device = next(model.parameters()).device
    with gated(model, head_gates, ffn_gates, spec):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            head_grad, ffn_grad = torch.autograd.grad(loss, (head_gates, ffn_gates))
            head_scores += head_grad.abs().cpu()
            ffn_scores += ffn_grad.abs().cpu()
    model.train(was_training)
    return head_scores, ffn_scores
