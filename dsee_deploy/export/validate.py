"""Checking an ONNX engine against the PyTorch model: output names, then shapes, then values, on several
batch and sequence shapes; every failure is collected and reported in one table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DSEEError


class ValidationError(DSEEError):
    """The engine does not compute what the PyTorch model computes; the message is a table of failures."""


SHAPES = ((1, 7), (2, 16), (4, 33))  # (batch, sequence): odd sizes, and other than anything traced


def validate_onnx(
    model, path: Path, atol: float | None = 1e-4, expected_outputs=("logits",), agreement: bool = False
) -> dict:
    """Compare ONNX Runtime with `model` on SHAPES. Returns the per-shape results; raises ValidationError
    listing every output, shape, max difference and tolerance that failed.

    `atol=None` checks names and shapes only and records the differences: an int8 or fp16 engine is judged by
    prediction agreement and the task metric instead. `agreement` records how often the logits agree with
    PyTorch's in the task's terms, under the task's output_agreement_key: the argmax of each position's logits
    (classification, language models), values within 0.01 (regression: one output, whose argmax always agrees)."""
    import torch

    from ..architectures import get_spec
    from ..runtime import make_session
    from ..tasks import task_of_config

    session = make_session(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    spec = get_spec(model.config.model_type)
    task = task_of_config(model.config)
    failures: list[tuple[str, str, str, str]] = []
    if list(names) != list(expected_outputs):
        failures.append(("outputs", f"names {names}", f"expected {list(expected_outputs)}", "-"))
    rng = np.random.default_rng(0)
    vocab = model.get_input_embeddings().num_embeddings
    results = []
    model.eval()
    for batch, seq in SHAPES:
        ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        mask[1:, seq - seq // 3 :] = 0  # right padding on all but the first row
        feeds = spec.feeds(inputs, ids, mask)
        got = dict(zip(names, session.run(None, feeds), strict=True))
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        for name in expected_outputs:
            if name not in got:
                continue
            want = getattr(ref, name).numpy()
            shape = f"batch {batch}, seq {seq}"
            if got[name].shape != want.shape:
                failures.append((name, shape, f"shape {got[name].shape} != {want.shape}", "-"))
                continue
            diff = float(np.abs(got[name] - want).max())
            result = {"output": name, "batch": batch, "seq": seq, "max_abs_diff": diff, "atol": atol}
            if agreement and name == "logits":
                result[task.output_agreement_key] = task.output_agreement(got[name], want)
            results.append(result)
            if atol is not None and not diff <= atol:
                failures.append((name, shape, f"max |diff| {diff:.3e}", f"atol {atol:.0e}"))
    if failures:
        rows = [f"  {a:<10} {b:<20} {c:<32} {d}" for a, b, c, d in failures]
        raise ValidationError("ONNX engine does not match PyTorch:\n" + "\n".join(rows))
    return {"passed": True, "atol": atol, "checks": results}


def max_diff(validation: dict) -> float:
    return max((c["max_abs_diff"] for c in validation.get("checks", [])), default=float("nan"))
