"""ONNX Runtime graph optimization: the transformer fusions (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization), with the head count of each Attention read from its own layer's weights, so layers
that kept different numbers of heads all fuse.

SkipLayerNormalization on CPU: ONNX Runtime's CPU kernel for it is a scalar loop (1.31: 450 us for a 128 x 768
residual + norm, against 70 us for Add + LayerNormalization, whose kernel is vectorized), and at 24 per BERT-base
forward it costs more than the attention of a pruned model. For CPU engines the residual Add and the
LayerNormalization are therefore kept apart, with a zero-copy Reshape between them so that the session's own
SkipLayerNormFusion does not merge them again at load time. GPU targets keep the fused op."""

from __future__ import annotations

import contextlib
import io
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
GUARD_SHAPE = "dsee_layernorm_guard_shape"


def optimize_for_cpu(path: Path, ort_model_type: str, fuse_skip_layernorm: bool = False) -> dict[str, int]:
    """Fuse `path` in place; returns how many nodes of each fused kind the graph now has (and, where the
    residual LayerNorms are kept unfused, how many were guarded)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(ort_model_type)
    options.enable_skip_layer_norm = fuse_skip_layernorm
    # It logs every fusion pass, through loggers named after its modules ("fusion_attention", ...), and warns
    # that a pruned layer's attention width differs from the hidden size, which is expected here. The counts
    # returned say what happened, and validation checks the result.
    logging.disable(logging.WARNING)
    try:
        # num_heads=0, hidden_size=0: detect both per Attention from the graph, as they differ between layers.
        # opt_level=0: the fusions are done here in Python; ONNX Runtime's own constant folding (level 1) would
        # store Transpose(tied embedding) as a second copy of the embedding for GPT-2's LM head.
        # Its shape inference prints "failed in shape inference" on stdout for contrib ops it has no rule for
        # (the decoder's MultiHeadAttention) and carries on without those shapes, which the fusions do not need.
        with contextlib.redirect_stdout(io.StringIO()):
            model = optimize_model(
                str(path),
                model_type=ort_model_type,
                num_heads=0,
                hidden_size=0,
                opt_level=0,
                optimization_options=options,
            )
    finally:
        logging.disable(logging.NOTSET)
    guarded = 0 if fuse_skip_layernorm else _guard_residual_layernorms(model.model)
    model.save_model_to_file(str(path))
    ops = [node.op_type for node in model.model.graph.node]
    counts = {op: ops.count(op) for op in FUSED if op in ops}
    if guarded:
        counts["ResidualLayerNormalization"] = guarded
    return counts


def _guard_residual_layernorms(model) -> int:
    """Put Reshape(x, [0, 0, -1]) (a no-op on the [batch, seq, hidden] residual stream, which ONNX Runtime runs
    without a copy) between each residual Add and its LayerNormalization. Returns how many were guarded."""
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    targets = [
        n
        for n in graph.node
        if n.op_type == "LayerNormalization" and getattr(producer.get(n.input[0]), "op_type", None) == "Add"
    ]
    if not targets:
        return 0
    graph.initializer.append(helper.make_tensor(GUARD_SHAPE, TensorProto.INT64, [3], [0, 0, -1]))
    for norm in targets:
        guarded = norm.input[0] + "_unfused"
        reshape = helper.make_node(
            "Reshape", [norm.input[0], GUARD_SHAPE], [guarded], name=norm.name + "_guard"
        )
        graph.node.insert(list(graph.node).index(norm), reshape)
        norm.input[0] = guarded
    return len(targets)
