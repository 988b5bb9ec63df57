"""Physically shrinking a model: removing attention heads and FFN neurons, DSEE updates sliced alongside."""

from .shrink import AttentionSkip, apply_structure, remove_ffn_neurons, remove_heads, slice_projection

__all__ = ["AttentionSkip", "apply_structure", "remove_ffn_neurons", "remove_heads", "slice_projection"]
