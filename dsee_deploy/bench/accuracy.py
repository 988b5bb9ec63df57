"""The task's metrics of every variant on labelled data (--eval-data), computed as the served engine
computes them: ONNX variants run through `Engine` itself (its tokenizer, the tuned max length, its buckets and
feeds), PyTorch variants through the same tokenization and feeds as the engine they stand beside."""

from __future__ import annotations

from pathlib import Path

from ..data import Task
from ..similarity import read_beir
from ..tasks import get_task
from .variants import Variant, load_torch


def task_of(variant: Variant) -> Task:
    labels = list(variant.labels)
    if labels == [
        f"LABEL_{i}" for i in range(len(labels))
    ]:  # transformers' defaults: the data says 0, 1, ...
        labels = [str(i) for i in range(len(labels))]
    return Task(
        kind=variant.task,
        label_names=labels
        if get_task(variant.task).labelled and not get_task(variant.task).continuous_labels
        else [],
        max_length=variant.max_length,
        metric=variant.metric,
        positive_label=variant.positive_label,
        label_values=list(variant.label_values),
    )


def load_for(variants: list[Variant], source: str, threads: int, spin_us: int) -> dict[str, dict]:
    """Texts (or pairs) and labels per scored variant (others get no metric), read and checked up front."""
    from ..runtime.evaluate import read_labelled

    out, read = {}, {}
    retrieval = None
    if Path(source).is_dir():  # a retrieval set in BEIR's layout: sentence-embedding variants only
        retrieval = read_beir(source)
    for v in variants:
        task = task_of(v)
        if retrieval is not None and task.spec.pair_similarity:
            out[v.name] = {"retrieval": retrieval, "task": task, "threads": threads, "spin": spin_us}
        elif retrieval is None and task.spec.scored:
            key = (task.kind, tuple(task.label_names))  # variants of one task read the file once
            if key not in read:
                read[key] = read_labelled(source, "--eval-data", task)
            texts, labels = read[key]
            out[v.name] = {
                "texts": texts,
                "labels": labels,
                "task": task,
                "threads": threads,
                "spin": spin_us,
            }
    return out


def evaluate(variant: Variant, data: dict) -> dict:
    """The scores (x 100) of `variant`, on the variant's own provider: `metric` names the one that selected the
    checkpoint and `value` is its score; every metric the task reports (accuracy; Pearson and Spearman) is there
    by its name too."""
    from ..runtime import TextEncoder
    from ..runtime.evaluate import evaluate_retrieval, evaluate_runs
    from ..serve import Engine

    task = data["task"]
    if variant.kind == "onnxruntime":
        # "-": the CPU variant, as it was timed (never the GPU provider onnxruntime-gpu would pick)
        providers = ["CPUExecutionProvider"] if variant.provider == "-" else [variant.provider]
        engine = Engine.load(  # verified when the variant was made (bench/variants.py)
            variant.root, threads=data["threads"], providers=providers, spin_us=data["spin"], verify=False
        )
        encoder, run = engine.encoder, (engine.feeds, engine.run_feeds)
    else:
        import torch

        model = load_torch(Path(variant.path), variant.kind)
        encoder = TextEncoder.from_dir(variant.root, variant.max_length)

        def forward(feeds: dict):
            with torch.inference_mode():
                return getattr(
                    model(**{n: torch.from_numpy(v) for n, v in feeds.items()}), task.spec.engine_output
                ).numpy()

        run = (variant.feeds, forward)
    if "retrieval" in data:
        result = evaluate_retrieval(data["retrieval"], encoder, {variant.name: run})
    else:
        result = evaluate_runs(data["texts"], data["labels"], task, encoder, {variant.name: run})
    entry = result["results"][variant.name]
    return {
        "metric": result["metric"],
        "value": entry["metric"],
        **{m: entry[m] for m in result["metrics"]},
        "examples": result["examples"],
        **({"majority": result["majority"]} if "majority" in result else {}),
        **({"metrics": result["metrics"], "corpus": result["corpus"]} if "corpus" in result else {}),
        "max_length": encoder.max_length,
    }
