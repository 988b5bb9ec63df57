"""Choosing the support Ω of the sparse update: which N entries of a weight matrix S may train.

`grebsmo` follows DSEE (../shared/DSEE.md §1): fit W ≈ U V + S_res by alternating a QR step for U, a least
squares step for V and a hard threshold for S_res, growing the rank of U V one step at a time; Ω is the N
entries of largest |S_res|, the entries a low-rank model explains worst. `magnitude` takes the N largest |W|,
`random` N distinct positions. All are deterministic for a given torch.Generator.
"""

from __future__ import annotations

import torch


def choose_support(
    weight: torch.Tensor,
    num: int,
    method: str,
    generator: torch.Generator,
    grebsmo_rank: int = 8,
    threshold: float = 0.01,
) -> torch.Tensor:
    """Flat indices (num,) into `weight` (out x in), sorted ascending."""
    weight = weight.detach().float()
    num = min(num, weight.numel())
    if method == "random":
        idx = torch.randperm(weight.numel(), generator=generator)[:num]
    elif method == "magnitude":
        idx = weight.abs().flatten().topk(num).indices
    elif method == "grebsmo":
        residual = grebsmo_residual(weight, grebsmo_rank, threshold, generator)
        idx = residual.abs().flatten().topk(num).indices
    else:
        raise ValueError(f"unknown sparse support method '{method}'")
    return idx.sort().values


def grebsmo_residual(
    weight: torch.Tensor,
    rank: int,
    threshold: float,
    generator: torch.Generator,
    iters_per_rank: int = 2,
) -> torch.Tensor:
    """S_res of W ≈ U V + S_res (GreBsmo / GoDec style), the rank of U V grown by one per outer step.

    Each rank step adds the direction of V that the current fit misses most (one power-iteration step on
    W - U V) and restarts S_res at zero: with a threshold as small as 0.01, S_res would otherwise absorb the
    whole residual of the first, rank-1 fit and the low-rank part could never grow.
    """
    out_f, in_f = weight.shape
    rank = min(rank, out_f, in_f)
    low_rank = torch.zeros_like(weight)
    sparse = torch.zeros_like(weight)
    v = torch.empty(0, in_f)  # (k, in)
    for _ in range(rank):
        resid = weight - low_rank
        start = torch.randn(in_f, 1, generator=generator)
        v = torch.cat([v, (resid.T @ (resid @ start)).T], dim=0)
        sparse = torch.zeros_like(weight)
        for _ in range(iters_per_rank):
            u, _ = torch.linalg.qr((weight - sparse) @ v.T)  # (out, k), orthonormal columns
            v = u.T @ (weight - sparse)  # (k, in)
            low_rank = u @ v
            resid = weight - low_rank
            sparse = torch.where(resid.abs() > threshold, resid, torch.zeros_like(resid))
    return sparse
