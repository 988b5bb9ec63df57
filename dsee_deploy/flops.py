"""Analytic FLOPs of transformer encoder blocks (torch-free: the benchmark harness uses it on engines)."""

from __future__ import annotations


def encoder_flops(hidden: int, head_size: int, heads: list[int], ffn: list[int], seq_len: int) -> int:
    """Analytic FLOPs (a multiply-add is 2) of the encoder blocks for one sequence of `seq_len` tokens."""
    total = 0
    for h, f in zip(heads, ffn, strict=True):
        width = h * head_size
        total += 3 * 2 * seq_len * hidden * width  # Q, K, V
        total += 2 * 2 * seq_len * seq_len * width  # scores Q K^T and context P V
        total += 2 * seq_len * width * hidden  # O
        total += 2 * 2 * seq_len * hidden * f  # FFN in and out
    return total
