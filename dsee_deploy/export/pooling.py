"""Feature extraction: the encoder's `last_hidden_state` plus a pooled `sentence_embedding`, in PyTorch (the
reference) and as nodes appended to the exported graph, so that serving needs no pooling code of its own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

POOLINGS = ("mean", "cls")


def pooling_of(model_dir: Path | None) -> tuple[str, bool]:
    """(pooling, normalize) as a sentence-transformers model directory declares them (1_Pooling/config.json
    and a Normalize module in modules.json); mean pooling without normalization where nothing is declared.
    Both forms of the pooling config are read: `"pooling_mode": "cls"` (sentence-transformers 5, which
    writes it) and `"pooling_mode_cls_token": true` (before 5, the packaged model's)."""
    if model_dir is None or not (Path(model_dir) / "modules.json").is_file():
        return "mean", False
    modules = json.loads((Path(model_dir) / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        config = Path(model_dir) / m.get("path", "") / "config.json"
        if m.get("type", "").endswith("Pooling") and config.is_file():
            declared = json.loads(config.read_text())
            # sentence-transformers 5 writes `pooling_mode` ("cls", or a list of modes); before 5, one bool a mode
            if declared.get("pooling_mode") in ("cls", ["cls"]) or declared.get("pooling_mode_cls_token"):
                pooling = "cls"
    return pooling, normalize


def copy_sentence_config(model_dir: Path, out: Path) -> None:
    """A fully fine-tuned sentence-embedding model keeps its base's sentence-transformers config (modules.json,
    the pooling and normalize modules' folders, sentence_bert_config.json), where the base has one."""
    import shutil

    if not (model_dir / "modules.json").is_file():
        return
    for m in json.loads((model_dir / "modules.json").read_text()):
        if m.get("path") and (model_dir / m["path"]).is_dir():
            shutil.copytree(model_dir / m["path"], out / m["path"], dirs_exist_ok=True)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)


def sentence_length(model_dir: Path | None) -> int | None:
    """The max_seq_length a sentence-transformers directory declares (sentence_bert_config.json; sentence-
    transformers 5 also keeps it as the tokenizer's limit, which longest_input reads), None where none."""
    path = Path(model_dir) / "sentence_bert_config.json" if model_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 1 else None


def sentence_encoder(encoder, pooling: str, normalize: bool):
    """`encoder` (a transformers base model) returning last_hidden_state and sentence_embedding."""
    import torch

    class SentenceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.config = encoder.config

        @property
        def base_model(self):
            return self.encoder

        def get_input_embeddings(self):
            return self.encoder.get_input_embeddings()

        def forward(self, input_ids, attention_mask, **kwargs):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            ).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return SimpleNamespace(last_hidden_state=hidden, sentence_embedding=pooled)

    return SentenceEncoder().eval()


def add_sentence_embedding(path: Path, pooling: str, normalize: bool) -> None:
    """Append the pooling to the graph at `path` as a second output, `sentence_embedding` [batch, hidden].

    Written with onnx.helper: optimum's sentence-transformers export needs a SentenceTransformer object, and a
    DSEE checkpoint gives a transformers model; the pooling is nine standard ops."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    hidden = next(o for o in graph.output if o.name == "last_hidden_state")
    size = hidden.type.tensor_type.shape.dim[2]
    const = [
        helper.make_tensor("pool_axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("pool_axis_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("pool_eps_count", TensorProto.FLOAT, [], [1e-9]),
        helper.make_tensor("pool_eps_norm", TensorProto.FLOAT, [], [1e-12]),
    ]
    graph.initializer.extend(const)
    node = helper.make_node
    if pooling == "cls":
        graph.initializer.append(helper.make_tensor("pool_first", TensorProto.INT64, [], [0]))
        nodes = [node("Gather", ["last_hidden_state", "pool_first"], ["pooled"], axis=1)]
    else:
        if not any(i.name == "attention_mask" for i in graph.input):
            # A model without a head left attends to nothing, and the exporter drops the unused mask; mean
            # pooling still needs it, so it comes back as an input shaped as input_ids
            mask = copy.deepcopy(next(i for i in graph.input if i.name == "input_ids"))
            mask.name = "attention_mask"
            graph.input.append(mask)
        nodes = [
            node("Cast", ["attention_mask"], ["pool_mask"], to=TensorProto.FLOAT),
            node("Unsqueeze", ["pool_mask", "pool_axis_last"], ["pool_mask3"]),
            node("Mul", ["last_hidden_state", "pool_mask3"], ["pool_masked"]),
            node("ReduceSum", ["pool_masked", "pool_axis1"], ["pool_sum"], keepdims=0),
            node("ReduceSum", ["pool_mask3", "pool_axis1"], ["pool_count"], keepdims=0),
            node("Max", ["pool_count", "pool_eps_count"], ["pool_count_safe"]),
            node("Div", ["pool_sum", "pool_count_safe"], ["pooled"]),
        ]
    if normalize:
        nodes += [
            node("Mul", ["pooled", "pooled"], ["pool_sq"]),
            node("ReduceSum", ["pool_sq", "pool_axis_last"], ["pool_sqsum"], keepdims=1),
            node("Sqrt", ["pool_sqsum"], ["pool_norm"]),
            node("Max", ["pool_norm", "pool_eps_norm"], ["pool_norm_safe"]),
            node("Div", ["pooled", "pool_norm_safe"], ["sentence_embedding"]),
        ]
    else:
        nodes.append(node("Identity", ["pooled"], ["sentence_embedding"]))
    graph.node.extend(nodes)
    batch = hidden.type.tensor_type.shape.dim[0]
    dims = [batch.dim_param or batch.dim_value, size.dim_param or size.dim_value]
    graph.output.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, dims))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
