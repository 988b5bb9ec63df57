"""Every fact about an architecture, in one registry of small specs keyed by `model_type`.

A spec says where the attention and FFN projections of one transformer block live (module paths relative to
the block), and whether Q, K and V are packed into one projection (GPT-2's `c_attn`). Nothing outside this
file tests `model_type`: adding an architecture means adding a spec here and a tiny model in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DSEEError

# Logical names users pass to --target-modules, mapped to spec attributes.
TARGETS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class Site:
    """Where a logical projection lives in a block: a module path, and for packed projections which
    block of the output rows (index `part` of `parts` equal blocks) belongs to it."""

    path: str
    part: int = 0
    parts: int = 1


class ArchSpec:
    """Facts about one architecture. Subclass, set the class attributes, decorate with `@register`."""

    model_type: str = ""
    layers: str = ""  # path from the base model (model.base_model) to the list of blocks
    query: str = ""
    key: str = ""
    value: str = ""
    attn_out: str = ""
    ffn_in: str = ""
    ffn_out: str = ""
    packed_qkv: bool = False  # Q, K, V are the three row blocks of the `query` module's output
    # Head surgery: the module whose transformers `prune_heads(heads)` slices Q, K, V and O and updates the head
    # count, and the module replaced when a layer loses every head. `skip_returns_context`: the replaced module
    # returns the per-head context (O stays, sliced to zero inputs, and adds its bias); otherwise it includes O
    # and the replacement returns O's bias itself.
    attention: str = ""
    attention_skip: str = ""
    skip_returns_context: bool = False
    default_targets: tuple[str, ...] = TARGETS  # all six: benchmarks/tuning/defaults_vs_recipe
    # ONNX Runtime's transformer optimizer family (onnxruntime.transformers.optimizer model_type)
    ort_model_type: str = "bert"
    # A decoder-only language model: pre-trained as a causal LM, and ONNX Runtime's fusions leave its attention
    # (without a KV cache) unfused.
    decoder: bool = False
    # The graph inputs an exported engine may take; `feeds` builds every one of them.
    onnx_inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    # config.json keys of the maximum positions, the head count and the hidden size.
    positions_key: str = "max_position_embeddings"
    position_offset: int = 0  # positions below this are reserved (RoBERTa counts from padding_idx + 1)
    heads_key: str = "num_attention_heads"
    hidden_key: str = "hidden_size"
    ffn_key: str = "intermediate_size"  # the FFN width (None in GPT-2's config means 4 x hidden)

    def site(self, target: str) -> Site:
        if target not in TARGETS:
            raise DSEEError(
                f"unknown target module '{target}': expected some of {', '.join(TARGETS)} "
                f"(e.g. --target-modules query,value)"
            )
        if self.packed_qkv and target in ("query", "key", "value"):
            return Site(self.query, part=("query", "key", "value").index(target), parts=3)
        return Site(getattr(self, target))

    def blocks(self, model):
        """The transformer blocks of `model` (any head class), in order."""
        return _get(model.base_model, self.layers)

    def num_heads(self, config) -> int:
        return int(_key(config, self.heads_key))

    def hidden_size(self, config) -> int:
        return int(_key(config, self.hidden_key))

    def num_layers(self, config) -> int:
        return int(config.num_hidden_layers)  # transformers maps n_layer / n_layers onto this name

    def ffn_width(self, config) -> int:
        width = getattr(config, self.ffn_key, None)
        return int(width) if width is not None else 4 * self.hidden_size(config)

    def max_positions(self, config) -> int:
        return int(_key(config, self.positions_key))

    def max_tokens(self, config) -> int:
        """The longest input the model takes: its positions less those its embeddings reserve."""
        return self.max_positions(config) - self.position_offset

    def feeds(
        self, names: Sequence[str], ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The graph inputs `names` for padded token ids (batch, seq) and their attention mask, right or left
        padded. Positions count real tokens only (the first real token is 0), so left padding gets the
        positions it would have unpadded; padded positions get 0 and are masked anyway."""
        unknown = [n for n in names if n not in self.onnx_inputs and n != "position_ids"]
        if unknown:
            raise DSEEError(
                f"the graph takes input {unknown[0]!r}, which a {self.model_type} engine does not feed (it feeds "
                f"{', '.join(self.onnx_inputs)}): export the model again with dsee-export"
            )
        tensors = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids) if type_ids is None else type_ids,
            "position_ids": position_ids(mask),
        }
        return {name: tensors[name] for name in names}


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Positions of right- or left-padded rows: real tokens count from 0, padding gets 0 (and is masked). The one
    rule, for encoders' feeds and for a decoder's prompt (its later tokens continue from the last position)."""
    return np.maximum(mask.cumsum(1) - 1, 0)


_REGISTRY: dict[str, ArchSpec] = {}


def register(cls: type[ArchSpec]) -> type[ArchSpec]:
    _REGISTRY[cls.model_type] = cls()
    return cls


def get_spec(model_type: str) -> ArchSpec:
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise DSEEError(
            f"unknown architecture '{model_type}': supported model types are "
            f"{', '.join(sorted(_REGISTRY))}; pass a model of one of them (or add a spec in "
            f"dsee_deploy/architectures.py)"
        ) from None


def _key(config, key: str):
    """A config value from a transformers config or a config.json dict."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    if value is None:
        raise DSEEError(f"the model config has no '{key}': is it a config of this architecture?")
    return value


def longest_input(config, tokenizer=None) -> int:
    """The longest input (in tokens) a model takes: its positions less those its embeddings reserve, within its
    tokenizer's limit where that is a real one (transformers sets a huge number where the tokenizer has none).
    The one place this is computed: tuning, export, the latency model and serving all read it from here."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else config.model_type
    positions = get_spec(model_type).max_tokens(config)
    limit = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(limit, int) and 1 < limit < positions:
        return limit
    return positions


def supported() -> list[str]:
    return sorted(_REGISTRY)


def _get(root, path: str):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def get_module(root, path: str):
    return _get(root, path)


def set_module(root, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, name, module)


@register
class BertSpec(ArchSpec):
    model_type = "bert"
    layers = "encoder.layer"
    query = "attention.self.query"
    key = "attention.self.key"
    value = "attention.self.value"
    attn_out = "attention.output.dense"
    ffn_in = "intermediate.dense"
    ffn_out = "output.dense"
    attention = "attention"
    attention_skip = "attention.self"
    skip_returns_context = True


@register
class RobertaSpec(BertSpec):
    model_type = "roberta"
    position_offset = 2


@register
class XLMRobertaSpec(RobertaSpec):
    model_type = "xlm-roberta"


@register
class ElectraSpec(BertSpec):
    model_type = "electra"


@register
class DistilBertSpec(ArchSpec):
    model_type = "distilbert"
    layers = "transformer.layer"
    query = "attention.q_lin"
    key = "attention.k_lin"
    value = "attention.v_lin"
    attn_out = "attention.out_lin"
    ffn_in = "ffn.lin1"
    ffn_out = "ffn.lin2"
    attention = attention_skip = "attention"
    onnx_inputs = ("input_ids", "attention_mask")
    heads_key = "n_heads"
    hidden_key = "dim"
    ffn_key = "hidden_dim"


@register
class GPT2Spec(ArchSpec):
    model_type = "gpt2"
    layers = "h"
    query = key = value = "attn.c_attn"
    packed_qkv = True
    attn_out = "attn.c_proj"
    ffn_in = "mlp.c_fc"
    ffn_out = "mlp.c_proj"
    attention = attention_skip = "attn"
    ort_model_type = "gpt2"
    decoder = True
    onnx_inputs = ("input_ids", "attention_mask", "position_ids")
    positions_key = "n_positions"
    heads_key = "n_head"
    hidden_key = "n_embd"
    ffn_key = "n_inner"
