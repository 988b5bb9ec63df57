"""Reduced precision for an exported graph: dynamic int8 for CPU, fp16 for GPU targets."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path


def quantize_int8(src: Path, dst: Path) -> dict:
    """Dynamic int8 (int8 weights per output channel, activations quantized at run time) of `src`, fused or not.

    The fused graph keeps its fusions: ONNX Runtime's quantizer turns Attention into QAttention and
    EmbedLayerNormalization into QEmbedLayerNormalization, and MatMul into MatMulInteger, which the session
    fuses again into DynamicQuantizeMatMul. Left to itself the quantizer stops on a fused graph, because ONNX
    shape inference cannot type the outputs of the com.microsoft ops; every float tensor of our graphs is fp32,
    so it is told so (DefaultTensorType) instead of giving up the fusions.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    empty = {t.name for t in graph.initializer if 0 in t.dims}
    # A layer pruned to zero heads or zero FFN neurons keeps zero-width projections (their output is the bias);
    # there is nothing to quantize in them, and the per-channel quantizer fails on an empty weight.
    skip = [n.name for n in graph.node if empty.intersection(n.input)]
    logging.disable(logging.WARNING)  # "please consider pre-processing": that is for static quantization
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            # Per channel: on MiniLM SST-2 87.27 % (fp32 87.16 %) against 86.47 % per tensor.
            per_channel=True,
            nodes_to_exclude=skip,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)
    ops = Counter(node.op_type for node in onnx.load(str(dst), load_external_data=False).graph.node)
    quantized = ("QAttention", "QEmbedLayerNormalization", "MatMulInteger", "DynamicQuantizeMatMul")
    return {
        "mode": "dynamic int8, per-channel weights",
        "quantized": {op: ops[op] for op in quantized if ops[op]},
    }


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 inputs and outputs (ONNX Runtime's converter and its default list of
    ops kept in fp32). LayerNormalization runs in fp16 too, as ONNX Runtime's CUDA kernels do (they accumulate
    in fp32); the validation shapes and --validate-data show what fp16 costs."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))


# Weight-only 4-bit: ONNX Runtime's MatMulNBits, blocks of 32 input rows with one fp32 scale each, symmetric.
# accuracy_level 4 lets the CPU kernel quantize the activations to int8 per block and use int8 dot products.
INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4


def quantize_int4(src: Path, dst: Path) -> dict:
    """Weight-only 4-bit (MatMulNBits) of every projection of `src`, for KV-cache decoders: a decode step reads
    every weight once per token, so its time follows the bytes read, which 4-bit weights cut by 8 against fp32.

    ONNX Runtime's quantizer takes MatMul nodes with a constant weight only, and a decoder graph has two other
    kinds: Gemm (the projections the exporter flattened to 2-D) and the LM head, a MatMul with the transpose of
    the token embedding (tied weights). `_as_matmuls` rewrites both into MatMul with a constant weight first
    (the embedding lookup keeps its fp32 table).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(src))
    _as_matmuls(model.graph)
    inits = {t.name: t for t in model.graph.initializer}
    # zero-width projections (a layer pruned to no heads or no neurons) hold nothing to quantize
    empty = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and 0 in inits[n.input[1]].dims
    ]
    config = DefaultWeightOnlyQuantConfig(
        block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL, bits=4
    )
    logging.disable(logging.INFO)  # the quantizer logs a line per node
    try:
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=empty, algo_config=config)
        quantizer.process()
    finally:
        logging.disable(logging.NOTSET)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    ops = Counter(node.op_type for node in onnx.load(str(dst), load_external_data=False).graph.node)
    return {
        "mode": f"weight-only int4 (MatMulNBits, blocks of {INT4_BLOCK}, symmetric, int8 compute)",
        "quantized": {"MatMulNBits": ops["MatMulNBits"]},
        "left_fp32": {"MatMul": ops["MatMul"], "Gemm": ops["Gemm"]},
    }


def _as_matmuls(graph) -> None:
    """Gemm(x, W, b) with a constant W becomes MatMul(x, W') + b; Transpose(constant) feeding MatMuls becomes a
    transposed constant. Same function, weights the 4-bit quantizer can take."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    consumers = Counter(i for n in graph.node for i in n.input)
    matmul_b = Counter(n.input[1] for n in graph.node if n.op_type == "MatMul")
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        ):
            weight = node.input[1]
            if attrs.get("transB", 0):
                array = numpy_helper.to_array(inits[weight]).T.copy()  # (in, out), as MatMul takes it
                weight = f"{weight}.in_out"
                graph.initializer.append(numpy_helper.from_array(array, weight))
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            product = f"{node.output[0]}.matmul" if bias else node.output[0]
            nodes.append(
                helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}.MatMul")
            )
            if bias:
                nodes.append(
                    helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}.Add")
                )
        elif (
            node.op_type == "Transpose"
            and node.input[0] in inits
            and consumers[node.output[0]] == matmul_b[node.output[0]] > 0  # feeds MatMul weights only
        ):
            array = numpy_helper.to_array(inits[node.input[0]])
            perm = attrs.get("perm") or list(reversed(range(array.ndim)))
            graph.initializer.append(numpy_helper.from_array(array.transpose(perm).copy(), node.output[0]))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
