"""ONNX Runtime graph optimization: the transformer fusions (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization), with the head count of each Attention read from its own layer's weights, so layers
that kept different numbers of heads all fuse."""

from __future__ import annotations

import logging
from pathlib import Path

FUSED = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "EmbedLayerNormalization",
    "LayerNormalization",
)


def optimize_for_cpu(path: Path, ort_model_type: str) -> dict[str, int]:
    """Fuse `path` in place; returns how many nodes of each fused kind the graph now has."""
    from onnxruntime.transformers.optimizer import optimize_model

    # It logs every fusion pass, through loggers named after its modules ("fusion_attention", ...), and warns
    # that a pruned layer's attention width differs from the hidden size, which is expected here. The counts
    # returned say what happened, and validation checks the result.
    logging.disable(logging.WARNING)
    try:
        # num_heads=0, hidden_size=0: detect both per Attention from the graph, as they differ between layers.
        # opt_level=0: the fusions are done here in Python; ONNX Runtime's own constant folding (level 1) would
        # store Transpose(tied embedding) as a second copy of the embedding for GPT-2's LM head.
        model = optimize_model(str(path), model_type=ort_model_type, num_heads=0, hidden_size=0, opt_level=0)
    finally:
        logging.disable(logging.NOTSET)
    model.save_model_to_file(str(path))
    ops = [node.op_type for node in model.model.graph.node]
    return {op: ops.count(op) for op in FUSED if op in ops}
