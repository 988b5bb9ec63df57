"""DSEE pruning (../shared/DSEE.md §2): unstructured masks, attention heads and FFN neurons."""

from .config import PruneConfig
from .masks import apply_masks, load_masks, save_masks
from .prune import choose_layout, encoder_flops, format_report, prune_model

__all__ = [
    "PruneConfig",
    "apply_masks",
    "choose_layout",
    "encoder_flops",
    "format_report",
    "load_masks",
    "prune_model",
    "save_masks",
]
