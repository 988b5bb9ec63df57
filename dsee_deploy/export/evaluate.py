"""The task metric of the PyTorch model and of ONNX engines on real texts (`dsee-export --validate-data`), with
how often their predictions agree. Texts go through the runtime layer exactly as the served engine takes them
(its tokenizer, the tuned max length, length buckets, the architecture's feeds)."""

from __future__ import annotations

from pathlib import Path

from ..data import Task


def evaluate_engines(
    model, task: Task, texts: list, labels, engines: dict[str, Path], engine_dir: Path
) -> dict:
    """The task metric (and accuracy) on labelled `texts` (runtime.evaluate.read_labelled) for PyTorch and
    each engine; `engines` maps a name ("onnx fp32", "onnx int8", ...) to a graph whose tokenizer is in
    `engine_dir`."""
    import torch

    from ..architectures import get_spec
    from ..runtime import TextEncoder, make_session
    from ..runtime.evaluate import evaluate_runs

    encoder = TextEncoder.from_dir(engine_dir, task.max_length)
    spec = get_spec(model.config.model_type)
    output = task.spec.engine_output
    runs = {}
    for name, path in engines.items():
        session = make_session(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        runs[name] = (
            lambda ids, mask, types, names=names: spec.feeds(names, ids, mask, types),
            lambda feeds, session=session: session.run([output], feeds)[0],
        )

    def run_torch(feeds: dict):
        with torch.no_grad():
            return getattr(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}), output).numpy()

    graph_inputs = runs[next(iter(runs))][0]  # PyTorch takes what the graph takes
    return evaluate_runs(texts, labels, task, encoder, {"pytorch": (graph_inputs, run_torch), **runs})
