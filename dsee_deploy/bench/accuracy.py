"""The task metric of every variant on labelled data (--eval-data), tokenized once, the same for all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DSEEError
from .variants import Variant, load_torch

BATCH = 32


def load_eval_data(source: str, engine_dir: Path, max_length: int) -> dict:
    """Texts (and pairs), label ids and the engine's tokenizer output, sorted by length for little padding."""
    from tokenizers import Tokenizer

    from ..data import read_table, resolve_columns

    table = read_table(source, "--eval-data")
    text, pair, label = resolve_columns(table, source, None, None, None)
    import json

    config = json.loads((engine_dir / "config.json").read_text())
    label2id = {str(k): int(v) for k, v in config.get("label2id", {}).items()}
    labels = []
    for value in table[label]:
        key = (
            str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        )
        if key not in label2id:
            raise DSEEError(
                f"--eval-data '{source}' has label '{value}', which the engine does not know "
                f"(labels: {', '.join(label2id)}): pass data of the task the engine was tuned on"
            )
        labels.append(label2id[key])
    tokenizer = Tokenizer.from_file(str(engine_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    inputs = list(zip(table[text], table[pair], strict=True)) if pair else list(table[text])
    encodings = tokenizer.encode_batch(inputs)
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    return {"encodings": [encodings[i] for i in order], "labels": np.asarray(labels)[order], "source": source}


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


def evaluate(variant: Variant, data: dict, pad_id: int) -> dict:
    """Accuracy (%) of `variant` on `data`."""
    if variant.task != "classification":
        return {"metric": None, "note": f"no metric for {variant.task}"}
    preds = []
    if variant.kind == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(variant.path, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for feeds in _batches(data["encodings"], pad_id):
            preds.append(session.run(["logits"], {n: feeds[n] for n in names})[0].argmax(-1))
    else:
        import torch

        model = load_torch(Path(variant.path), variant.kind)
        for feeds in _batches(data["encodings"], pad_id):
            with torch.inference_mode():
                out = model(**{n: torch.from_numpy(feeds[n]) for n in variant.inputs})
            preds.append(out.logits.argmax(-1).numpy())
    pred = np.concatenate(preds)
    return {
        "metric": "accuracy",
        "value": float((pred == data["labels"]).mean() * 100),
        "examples": len(pred),
    }
