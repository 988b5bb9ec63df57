"""Importance scores for pruning (../shared/DSEE.md §2).

Structured, per head and per FFN neuron:
    abs     summed |update| over the head's rows of Q and V (DSEE's "ABS"); for FFN neurons, |W| of the neuron's
            row of the first projection and column of the second (plus their updates where tuned)
    wabs    the same over |W + update| ("WABS")
    taylor  first-order |dL/dm| of a gate m on each head and neuron, summed over batches of training data; the
            weight-only scores are known to be weak (Michel et al., 2019)
    fisher  the Fisher information of each gate under the model's own output distribution, E[(d log p(y|x)/dm)^2]
            with y drawn from the model, not from labels (Kwon et al., 2022): needs texts only. For a sentence
            embedding e, a unit Gaussian around it, which makes the score E||de/dm||^2, the first-order change of
            the embedding when the gate closes; for classification and LM, labels sampled from the predictions;
            for regression, a unit Gaussian around the output. Scores of heads and neurons are on one scale (an
            expected loss increase), so the layout search takes them as they are
Unstructured, per weight: abs is |update| for tuned matrices and |W| for frozen ones; wabs is |W + update|.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..architectures import ArchSpec, get_module, get_spec
from ..tuning.layer import DSEELayer
from .gates import gated, structure_sizes

STRUCTURED = ("abs", "wabs", "taylor", "fisher")
GRADIENT = ("taylor", "fisher")  # scores that run the model on batches of data
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
    model: nn.Module, importance: str, batches=None, spec: ArchSpec | None = None, output=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(head scores (L, H), FFN neuron scores (L, F)) of a dense model; larger is more important. `output`
    (model, batch) -> tensor: what fisher scores see of a bare encoder (its sentence embeddings; default: the
    mean of its token states)."""
    spec = spec or get_spec(model.config.model_type)
    if importance in GRADIENT:
        if batches is None:
            raise ValueError(f"{importance} importance needs batches of data")
        if importance == "fisher":
            return fisher_scores(model, batches, spec, output)
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


def fisher_scores(
    model: nn.Module, batches, spec: ArchSpec, output=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulated (d log p(y|x)/dm)^2 for gates m = 1, y drawn from the model's own output (module notes), over
    `batches` (their labels are not used). One draw per example; the batch's gradient is squared whole: the
    cross terms between examples have expectation zero, as each draw's score has."""
    layers, n_heads, width = structure_sizes(model, spec)
    head_gates = torch.ones(layers, n_heads, requires_grad=True)
    ffn_gates = torch.ones(layers, width, requires_grad=True)
    head_scores, ffn_scores = torch.zeros(layers, n_heads), torch.zeros(layers, width)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)  # the same draws on every run
    with gated(model, head_gates, ffn_gates, spec):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            log_likelihood = _sampled_log_likelihood(model, batch, output, generator)
            head_grad, ffn_grad = torch.autograd.grad(log_likelihood, (head_gates, ffn_gates))
            head_scores += head_grad.pow(2).cpu()
            ffn_scores += ffn_grad.pow(2).cpu()
    model.train(was_training)
    return head_scores, ffn_scores


def _sampled_log_likelihood(model: nn.Module, batch: dict, output, generator) -> torch.Tensor:
    """log p(y|x) summed over the batch, y drawn from the model's output distribution (up to a constant)."""
    if output is not None:
        return _gaussian(output(model, batch), generator)
    out = model(**batch)
    logits = getattr(out, "logits", None)
    if logits is None:  # a bare encoder: the mean of its token states
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        return _gaussian((out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1), generator)
    if logits.shape[-1] == 1:  # regression
        return _gaussian(logits, generator)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    drawn = torch.multinomial(log_p.detach().exp().reshape(-1, log_p.shape[-1]), 1, generator=generator)
    picked = log_p.reshape(-1, log_p.shape[-1]).gather(1, drawn).squeeze(1)
    if logits.dim() == 3:  # a language model: every real position
        picked = picked * batch["attention_mask"].reshape(-1).to(picked.dtype)
    return picked.sum()


def _gaussian(values: torch.Tensor, generator) -> torch.Tensor:
    """log N(y; values, I) with y drawn from it, up to a constant: its gradient is J^T v, v = y - values."""
    noise = torch.randn(values.shape, generator=generator, device=values.device, dtype=values.dtype)
    return (noise * values).sum()
