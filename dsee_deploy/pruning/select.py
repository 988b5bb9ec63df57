"""Turning importance scores into what is kept: heads and FFN neurons per layer, weight masks per matrix."""

from __future__ import annotations

import torch


def keep_structured(scores: torch.Tensor, ratio: float, scope: str, minimum: int) -> list[list[int]]:
    """Kept indices per layer, removing round(ratio * total) of the lowest `scores` (L, N) units.

    global: one ranking across layers, so layers end up with different counts; layer: the same count per layer.
    No layer goes below `minimum` units (a layer may lose all with minimum 0)."""
    layers, units = scores.shape
    keep = torch.ones(layers, units, dtype=torch.bool)
    if ratio > 0:
        if scope == "layer":
            drop = min(round(ratio * units), units - min(minimum, units))
            order = scores.argsort(dim=1)[:, :drop]
            keep.scatter_(1, order, False)
        else:
            to_drop = round(ratio * layers * units)
            left = torch.full((layers,), units)
            for flat in scores.flatten().argsort().tolist():
                if to_drop == 0:
                    break
                layer, unit = divmod(flat, units)
                if left[layer] > minimum:
                    keep[layer, unit] = False
                    left[layer] -= 1
                    to_drop -= 1
    return [row.nonzero().flatten().tolist() for row in keep]


def normalise_per_layer(scores: torch.Tensor) -> torch.Tensor:
    """Scale each layer's scores to unit L2 norm before a global ranking (Michel et al., 2019): gradient-based
    scores differ in scale between layers more than in meaning."""
    return scores / scores.norm(dim=1, keepdim=True).clamp_min(1e-12)


def magnitude_masks(scores: dict[str, torch.Tensor], ratio: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (same shapes as `scores`) that remove the `ratio` lowest-scoring weights, across all
    matrices (global) or within each matrix (layer)."""
    if scope == "layer":
        return {name: _mask_lowest(s, round(ratio * s.numel())) for name, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    count = round(ratio * flat.numel())
    if count == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = flat.kthvalue(count).values
    # Ties at the threshold go to whichever comes first; the global count stays exact.
    below = {name: s < threshold for name, s in scores.items()}
    remaining = count - sum(int(b.sum()) for b in below.values())
    masks = {}
    for name, s in scores.items():
        drop = below[name]
        if remaining > 0:
            ties = (s == threshold).flatten().nonzero().flatten()[:remaining]
            drop = drop.flatten().clone()
            drop[ties] = True
            drop = drop.view_as(s)
            remaining -= len(ties)
        masks[name] = ~drop
    return masks


def _mask_lowest(score: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.ones(score.numel(), dtype=torch.bool)
    if count:
        mask[score.flatten().argsort()[:count]] = False
    return mask.view_as(score)
