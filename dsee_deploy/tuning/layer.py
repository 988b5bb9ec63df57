"""The DSEE layer: a frozen base projection plus a low-rank and a sparse update (../shared/DSEE.md §1).

    y = base(x) + s * B (A x) + s * (S ⊙ Ω) x,     s = alpha / r

`DSEEUpdate` is one update on a block of the base weight's output rows; `DSEELayer` wraps a frozen
`nn.Linear` or transformers `Conv1D` (weight stored transposed, in x out) and holds one update per logical
target it serves: one for a plain projection, up to three for GPT-2's packed `c_attn` (query, key, value).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import NonFiniteUpdate


def projection_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or Conv1D projection, DSEE-wrapped or not (Conv1D stores its weight as (in, out))."""
    base = module.base_layer if isinstance(module, DSEELayer) else module
    w = base.weight
    return (w.shape[1], w.shape[0]) if isinstance(base, Conv1D) else (w.shape[0], w.shape[1])


class DSEEUpdate(nn.Module):
    """Low-rank + sparse update for rows [row_start, row_start + out_features) of a base weight."""

    def __init__(
        self, in_features: int, out_features: int, row_start: int, rank: int, alpha: float, num_sparse: int
    ):
        super().__init__()
        self.in_features, self.out_features, self.row_start = in_features, out_features, row_start
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))  # (r, in)
        self.lora_B = nn.Parameter(
            torch.zeros(out_features, rank)
        )  # (out, r): zero, so the update starts at 0
        # S is N trainable values at fixed flat positions of the (out, in) block; never a dense tensor.
        self.sparse_values = nn.Parameter(torch.zeros(num_sparse))  # (N,)
        self.register_buffer(
            "sparse_indices", torch.zeros(num_sparse, dtype=torch.long)
        )  # (N,) flat, row-major

    def reset_parameters(self, generator: torch.Generator) -> None:
        # A as in LoRA (Kaiming-uniform); B and S stay zero so the model starts at the pre-trained function.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B)
        nn.init.zeros_(self.sparse_values)

    def set_sparse(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the sparse support and values (their count N may change, e.g. after surgery)."""
        device = self.lora_A.device
        self.sparse_indices = indices.to(device=device, dtype=torch.long)
        self.sparse_values = nn.Parameter(
            values.to(device=device, dtype=self.lora_A.dtype), requires_grad=self.lora_A.requires_grad
        )

    @torch.no_grad()
    def keep_rows(self, rows: torch.Tensor, row_start: int) -> None:
        """Keep only output rows `rows` (local to this block, ascending); the block now starts at `row_start`."""
        self.lora_B = nn.Parameter(self.lora_B[rows].clone(), requires_grad=self.lora_B.requires_grad)
        self._keep_sparse(rows, axis=0)
        self.out_features, self.row_start = len(rows), row_start

    @torch.no_grad()
    def keep_cols(self, cols: torch.Tensor) -> None:
        """Keep only input columns `cols` (ascending)."""
        self.lora_A = nn.Parameter(self.lora_A[:, cols].clone(), requires_grad=self.lora_A.requires_grad)
        self._keep_sparse(cols, axis=1)
        self.in_features = len(cols)

    def _keep_sparse(self, kept: torch.Tensor, axis: int) -> None:
        # Drop sparse entries in removed rows (axis 0) or columns (axis 1), renumber the rest.
        rows = torch.div(self.sparse_indices, self.in_features, rounding_mode="floor")
        cols = self.sparse_indices % self.in_features
        size = self.out_features if axis == 0 else self.in_features
        position = torch.full((size,), -1, dtype=torch.long)
        position[kept] = torch.arange(len(kept))
        old = rows if axis == 0 else cols
        keep = position[old] >= 0
        rows, cols = rows[keep], cols[keep]
        if axis == 0:
            rows, in_features = position[rows], self.in_features
        else:
            cols, in_features = position[cols], len(kept)
        self.set_sparse(rows * in_features + cols, self.sparse_values.detach()[keep])

    @property
    def rows(self) -> slice:
        return slice(self.row_start, self.row_start + self.out_features)

    def delta_weight(self) -> torch.Tensor:
        """s (B A + S ⊙ Ω), dense (out, in). Used for merging, never in the forward pass."""
        delta = self.lora_B @ self.lora_A
        sparse = torch.zeros(self.out_features * self.in_features, dtype=delta.dtype, device=delta.device)
        sparse = sparse.index_put((self.sparse_indices,), self.sparse_values.to(delta.dtype), accumulate=True)
        return self.scaling * (delta + sparse.view_as(delta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.dtype)  # (..., in)
        out = (x @ self.lora_A.T) @ self.lora_B.T  # (..., out)
        if self.sparse_values.numel():
            rows = torch.div(self.sparse_indices, self.in_features, rounding_mode="floor")
            cols = self.sparse_indices % self.in_features
            # (S ⊙ Ω) x without materialising S: out[..., row_i] += value_i * x[..., col_i]
            out = out.index_add(-1, rows, x[..., cols] * self.sparse_values)
        return self.scaling * out


class DSEELayer(nn.Module):
    """Wraps a frozen base projection (nn.Linear or Conv1D) and adds its DSEE updates."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, Conv1D)):
            raise TypeError(f"DSEE wraps nn.Linear or transformers Conv1D, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.updates = nn.ModuleDict()
        self.merged = False
        # Unstructured pruning mask, (out, in) bool: W' = (W + delta) ⊙ M. Saved apart (masks.safetensors).
        self.register_buffer("weight_mask", None, persistent=False)
        for p in base_layer.parameters():
            p.requires_grad_(False)

    @property
    def fan_in_fan_out(self) -> bool:
        return isinstance(self.base_layer, Conv1D)  # Conv1D keeps its weight as (in, out)

    @property
    def out_in_weight(self) -> torch.Tensor:
        """The base weight as (out, in), a view for Conv1D."""
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    def add_update(self, name: str, rows: slice, rank: int, alpha: float, num_sparse: int) -> DSEEUpdate:
        out_f, in_f = self.out_in_weight.shape
        start, stop, _ = rows.indices(out_f)
        update = DSEEUpdate(in_f, stop - start, start, rank, alpha, num_sparse)
        self.updates[name] = update.to(self.base_layer.weight.device)
        return update

    def delta_weight(self) -> torch.Tensor:
        """Sum of all updates as one dense (out, in) matrix, masked where the weights are pruned."""
        w = self.out_in_weight
        delta = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for update in self.updates.values():
            delta[update.rows] += update.delta_weight().float()
        if self.weight_mask is not None:
            delta = delta * self.weight_mask
        return delta

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Fix an unstructured mask (out, in): pruned weights become zero, and no update can revive them."""
        if mask.shape != self.out_in_weight.shape:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(self.out_in_weight.shape)}"
            )
        self.weight_mask = mask.to(device=self.out_in_weight.device, dtype=torch.bool)
        self.out_in_weight.mul_(self.weight_mask)

    @torch.no_grad()
    def merge(self) -> None:
        """W += delta. Refuses non-finite updates (the merged weights would be silently broken)."""
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise NonFiniteUpdate(
                "DSEE update holds NaN or inf values (the tuning diverged); refusing to merge it into the "
                "weights: tune again with a lower --lr"
            )
        self.out_in_weight.add_(delta.to(self.out_in_weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W -= delta: the mirror of merge() (equal up to float rounding of the add and subtract)."""
        if not self.merged:
            return
        self.out_in_weight.sub_(self.delta_weight().to(self.out_in_weight.dtype))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.merged or not self.updates:
            return y
        if self.weight_mask is not None:
            # Masked: the update must be masked weight by weight, so it is applied as one dense matrix.
            return y + nn.functional.linear(x.to(torch.float32), self.delta_weight()).to(y.dtype)
        for update in self.updates.values():
            if update.out_features == y.shape[-1]:
                y = y + update(x).to(y.dtype)
            else:  # one block of a packed projection
                pad = (update.row_start, y.shape[-1] - update.row_start - update.out_features)
                y = y + nn.functional.pad(update(x).to(y.dtype), pad)
        return y
