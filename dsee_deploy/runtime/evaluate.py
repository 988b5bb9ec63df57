"""Scoring runs on labelled texts: the task's metrics (the one that selected the checkpoint, and those the task
reports beside it: accuracy; Pearson and Spearman), and how often the runs agree with each other, in the task's
terms (the same class; within 0.01). Shared by dsee-export --validate-data and dsee-bench --eval-data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..data import Task, labelled_texts
from ..similarity import RETRIEVAL_METRICS, pair_cosines, retrieval_scores
from .text import TextEncoder, run_texts

BATCH = 32  # as the engine's default batch_size: evaluation batches texts as serving does


def read_labelled(source: str, flag: str, task: Task) -> tuple[list, np.ndarray]:
    """(texts or pairs, label ids) of a labelled file, in the task's columns (GLUE names where the task
    records none) and label ids."""
    import datasets

    from ..data import read_table

    datasets.disable_progress_bars()  # a few seconds of work; the callers print the outcome
    return labelled_texts(read_table(source, flag), task, source, flag)


def evaluate_runs(
    texts: list,
    labels: np.ndarray,
    task: Task,
    encoder: TextEncoder,
    runs: dict[str, tuple[Callable, Callable]],
) -> dict:
    """Per run name: "metric" (the score of the metric that selected the checkpoint) and every metric the task
    reports, by name (spec.reported_metrics), on `texts`; `runs` maps a name to (feeds builder, run), both as
    runtime.run_texts takes them. Every run after the first records its agreement with the first; after the
    second, with the second too (PyTorch, then the fp32 engine), under the key spec.agreement_with names."""
    spec = task.spec
    predictions = {
        name: _predictions(spec, texts, encoder, feeds, run) for name, (feeds, run) in runs.items()
    }
    names = list(predictions)
    metrics = spec.reported_metrics(task.metric)
    results = {}
    for i, (name, pred) in enumerate(predictions.items()):
        scores = {m: spec.score(m, pred, labels, task.positive, len(task.label_names)) for m in metrics}
        entry = {"metric": scores[task.metric], **scores}
        for other in names[: min(i, 2)]:
            key = spec.agreement_with(other).replace(" ", "_")
            entry[key] = spec.agreement(pred, predictions[other])
        results[name] = entry
    report = {"examples": len(labels), "metric": task.metric, "metrics": list(metrics), "results": results}
    if not spec.continuous_labels and len(labels):
        report["majority"] = majority(labels, task)
    return report


def evaluate_retrieval(
    retrieval: tuple, encoder: TextEncoder, runs: dict[str, tuple[Callable, Callable]]
) -> dict:
    """nDCG@10 and recall@10 (x 100) per run of a sentence-embedding model on a BEIR-layout set
    (similarity.read_beir: corpus texts, query texts, relevance per query), the corpus ranked by cosine."""
    corpus, queries, relevant = retrieval
    results = {}
    for name, (feeds, run) in runs.items():
        scores = retrieval_scores(
            run_texts(queries, encoder, feeds, run, BATCH),
            run_texts(corpus, encoder, feeds, run, BATCH),
            relevant,
        )
        results[name] = {"metric": scores[RETRIEVAL_METRICS[0]], **scores}
    return {
        "examples": len(queries),
        "corpus": len(corpus),
        "metric": RETRIEVAL_METRICS[0],
        "metrics": list(RETRIEVAL_METRICS),
        "results": results,
    }


def _predictions(spec, texts: list, encoder: TextEncoder, feeds: Callable, run: Callable) -> np.ndarray:
    """What the task's metric compares with the labels: one output per text, or for sentence embeddings the
    cosine of each pair's two embeddings (each distinct text embedded once)."""
    if not spec.pair_similarity:
        return spec.predictions(run_texts(texts, encoder, feeds, run, BATCH))
    distinct = list(dict.fromkeys(t for pair in texts for t in pair))
    row = {t: i for i, t in enumerate(distinct)}
    embeddings = run_texts(distinct, encoder, feeds, run, BATCH)
    a = embeddings[[row[p[0]] for p in texts]]
    b = embeddings[[row[p[1]] for p in texts]]
    return pair_cosines(a, b)


def constant_scores(task: Task, labels: np.ndarray, common: int | None = None) -> dict[str, float]:
    """Every metric of the task (x 100) for always answering class `common` (default: the most frequent of
    `labels`): beside the metric, what a model that learnt nothing gets on imbalanced data."""
    common = int(np.bincount(labels.astype(np.int64)).argmax()) if common is None else common
    pred = np.full_like(labels, common)
    classes = len(task.label_names)
    return {m: task.spec.score(m, pred, labels, task.positive, classes) for m in task.spec.metrics}


def majority(labels: np.ndarray, task: Task) -> dict:
    """The evaluation data's most frequent label and the task metric (and accuracy) of always answering it."""
    common = int(np.bincount(labels.astype(np.int64)).argmax())
    scores = constant_scores(task, labels, common)
    entry = {
        "label": task.label_names[common] if common < len(task.label_names) else str(common),
        "metric": scores[task.metric],
    }
    if "accuracy" in scores:
        entry["accuracy"] = scores["accuracy"]
    return entry
