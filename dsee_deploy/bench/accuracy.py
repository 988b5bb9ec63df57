"""The task metric of every variant on labelled data (--eval-data). Each variant reads the texts with its own
engine's tokenizer, labels and tuned max_length; variants that share all three share one tokenization."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import DSEEError
from .variants import Variant, load_torch

BATCH = 32


def load_for(variants: list[Variant], source: str) -> dict[str, dict]:
    """Tokenized, labelled data per classification variant (others get no metric), checked up front."""
    from ..data import read_table, resolve_columns

    table = read_table(source, "--eval-data")
    text, pair, label = resolve_columns(table, source, None, None, None)
    inputs = list(zip(table[text], table[pair], strict=True)) if pair else list(table[text])
    cache: dict[tuple, dict] = {}
    out = {}
    for v in variants:
        if v.task != "classification":
            continue
        root = Path(v.root)
        config = json.loads((root / "config.json").read_text())
        label2id = _label_ids(config)
        key = (
            hashlib.sha256((root / "tokenizer.json").read_bytes()).hexdigest(),
            v.max_length,
            str(label2id),
        )
        if key not in cache:
            labels = [_label_id(value, label2id, source) for value in table[label]]
            cache[key] = _encode(root, inputs, labels, v.max_length, config.get("pad_token_id") or 0)
        out[v.name] = cache[key]
    return out


def _label_ids(config: dict) -> dict[str, int]:
    label2id = {str(k): int(v) for k, v in config.get("label2id", {}).items()}
    if set(label2id) == {
        f"LABEL_{i}" for i in range(len(label2id))
    }:  # transformers' defaults: data says 0, 1
        label2id = {str(i): i for i in range(len(label2id))}
    return label2id


def _label_id(value, label2id: dict[str, int], source: str) -> int:
    key = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    if key not in label2id:
        raise DSEEError(
            f"--eval-data '{source}' has label '{value}', which the engine does not know "
            f"(labels: {', '.join(label2id)}): pass data of the task the engine was tuned on"
        )
    return label2id[key]


def _encode(root: Path, inputs: list, labels: list[int], max_length: int, pad_id: int) -> dict:
    """The engine's tokenizer output, sorted by length for little padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(inputs)
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    return {
        "encodings": [encodings[i] for i in order],
        "labels": np.asarray(labels)[order],
        "pad_id": pad_id,
        "max_length": max_length,
    }


def _batches(encodings, pad_id: int):
    for start in range(0, len(encodings), BATCH):
        chunk = encodings[start : start + BATCH]
        width = max(len(e.ids) for e in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(chunk):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
            types[row, : len(e.ids)] = e.type_ids
        positions = np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape).copy()
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "position_ids": positions}


def evaluate(variant: Variant, data: dict) -> dict:
    """Accuracy (%) of `variant` on its tokenization of the data, on the variant's own provider."""
    preds = []
    if variant.kind == "onnxruntime":
        import onnxruntime as ort

        providers = [variant.provider] if variant.provider not in ("-", "CPUExecutionProvider") else []
        session = ort.InferenceSession(variant.path, providers=[*providers, "CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for feeds in _batches(data["encodings"], data["pad_id"]):
            preds.append(session.run(["logits"], {n: feeds[n] for n in names})[0].argmax(-1))
    else:
        import torch

        model = load_torch(Path(variant.path), variant.kind)
        for feeds in _batches(data["encodings"], data["pad_id"]):
            with torch.inference_mode():
                out = model(**{n: torch.from_numpy(feeds[n]) for n in variant.inputs})
            preds.append(out.logits.argmax(-1).numpy())
    pred = np.concatenate(preds)
    return {
        "metric": "accuracy",
        "value": float((pred == data["labels"]).mean() * 100),
        "examples": len(pred),
        "max_length": data["max_length"],
    }
