"""The task metric of the PyTorch model and of ONNX engines on real texts (`dsee-export --validate-data`), with
how often their predictions agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DSEEError

BATCH = 32


def evaluate_engines(model, tokenizer, task, source: str, engines: dict[str, Path]) -> dict:
    """Accuracy (classification) or Pearson x 100 (regression) on `source` for PyTorch and each engine.

    `engines` maps a name ("onnx fp32", "onnx int8", ...) to a graph; each engine's predictions are compared
    with PyTorch's and with the first engine's (the fp32 one)."""
    import datasets
    import onnxruntime as ort
    import torch

    from ..data import encode, read_table

    datasets.disable_progress_bars()  # a few seconds of work; the CLI prints the outcome
    if task.kind not in ("classification", "regression"):
        raise DSEEError(
            f"--validate-data measures classification and regression; this checkpoint is {task.kind}: drop it"
        )
    table = read_table(source, "--validate-data")
    if task.text_column is None:  # a plain transformers model: no training columns recorded
        from dataclasses import replace

        from ..data import resolve_columns

        text, pair, label = resolve_columns(table, source, None, None, None)
        task = replace(task, text_column=text, text_pair_column=pair, label_column=label)
    data = encode(table, tokenizer, task, source)
    labels = np.asarray(data["labels"])
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in engines.items()
    }
    outputs: dict[str, list] = {"pytorch": [], **{name: [] for name in sessions}}
    for start in range(0, len(data), BATCH):
        rows = data[start : start + BATCH]
        rows.pop("labels")
        batch = _pad(tokenizer, rows)
        with torch.no_grad():
            outputs["pytorch"].append(
                model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
            )
        for name, session in sessions.items():
            feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
            outputs[name].append(session.run(["logits"], feeds)[0])
    preds = {name: _predictions(np.concatenate(chunks), task.kind) for name, chunks in outputs.items()}
    first = next(iter(engines))
    report = {
        "data": source,
        "examples": len(labels),
        "metric": "accuracy" if task.kind == "classification" else "pearson",
        "results": {},
    }
    for name, pred in preds.items():
        entry = {"metric": _metric(pred, labels, task.kind)}
        if name != "pytorch":
            entry["agreement_with_pytorch"] = _agreement(pred, preds["pytorch"], task.kind)
            if name != first:
                entry[f"agreement_with_{first.replace(' ', '_')}"] = _agreement(pred, preds[first], task.kind)
        report["results"][name] = entry
    return report


def _pad(tokenizer, rows: dict) -> dict:
    """Pad pre-tokenized rows (transformers warns that padding a fast tokenizer's output is slower than
    tokenizing again, which does not matter for 872 sentences)."""
    import logging

    logging.disable(logging.WARNING)
    try:
        return tokenizer.pad(rows, return_tensors="np")
    finally:
        logging.disable(logging.NOTSET)


def _predictions(logits: np.ndarray, kind: str) -> np.ndarray:
    return logits.argmax(-1) if kind == "classification" else logits.reshape(-1)


def _metric(pred: np.ndarray, labels: np.ndarray, kind: str) -> float:
    if kind == "classification":
        return float((pred == labels).mean() * 100)
    return float(np.corrcoef(pred, labels)[0, 1] * 100)


def _agreement(a: np.ndarray, b: np.ndarray, kind: str) -> str:
    """Same class (classification), or within 0.01 (regression), as "k/n"."""
    same = a == b if kind == "classification" else np.abs(a - b) <= 0.01
    return f"{int(same.sum())}/{same.size}"
