"""DSEE tuning: the low-rank + sparse update (../shared/DSEE.md §1)."""

from .config import DSEEConfig
from .layer import DSEELayer, DSEEUpdate, projection_shape
from .model import (
    add_sparse,
    count_parameters,
    dsee_layers,
    grow_rank,
    inject_dsee,
    merge_dsee,
    train_head,
    unmerge_dsee,
    unwrap_dsee,
)
from .support import choose_support, grebsmo_residual

__all__ = [
    "add_sparse",
    "DSEEConfig",
    "DSEELayer",
    "DSEEUpdate",
    "choose_support",
    "count_parameters",
    "dsee_layers",
    "grebsmo_residual",
    "grow_rank",
    "inject_dsee",
    "merge_dsee",
    "projection_shape",
    "train_head",
    "unmerge_dsee",
    "unwrap_dsee",
]
