"""Every fact about a task, in one registry of small specs keyed by the task's kind.

A spec says which transformers head class the task loads, what optimum's exporter calls it, which outputs the
graph has and which of them the engine reads, what the engine returns for them, and how it is scored. Nothing
outside this file compares task kinds: code asks the spec (`get_task(kind).labelled`, `.answer(...)`).
numpy only: the serving engine reads the registry without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DSEEError
from .similarity import correlation


class TaskSpec:
    """Facts about one task. Subclass, set the class attributes, decorate with `@register`."""

    kind: str = ""
    head: str = "AutoModel"  # the transformers Auto class of the model
    exporter_task: str = ""  # optimum's task name
    outputs: tuple[str, ...] = ("logits",)  # the exported graph's outputs, in order
    engine_output: str = "logits"  # the output the engine reads
    labelled: bool = False  # trains on labels, and is scored on them
    # Has a metric on labelled evaluation data: --validate-data, dsee-bench --eval-data and the metric gate apply
    # (every labelled task; sentence embeddings on scored pairs)
    scored: bool = False
    pair_similarity: bool = False  # scored by the cosine of each pair's two embeddings, not by one output
    metrics: tuple[str, ...] = ()  # what training reports; the first is the default selection metric
    # What every report of a labelled run (--validate-data, dsee-bench's tables) shows beside the selection
    # metric: accuracy beside F1; Pearson and Spearman both, whichever selected the checkpoint.
    reported: tuple[str, ...] = ()
    # Where dsee-export's validation records how often the graph's outputs agree with PyTorch's on each shape
    # (`output_agreement`), and how its summary words the count.
    output_agreement_key: str = "argmax_agreement"
    output_agreement_words: str = "argmax agreement"
    verb: str = ""  # the Engine method and HTTP route that serve it ("predict", "embed", "generate")
    greater_is_better: bool = True
    language_model: bool = False  # trains on blocks of text (no labels), collated for next-token prediction
    problem_type: str | None = None  # transformers' config.problem_type for the head
    continuous_labels: bool = False  # labels are numbers (regression), not class names
    pooled: bool = False  # the graph appends a pooled sentence embedding to the encoder's states
    # Substrings of config.architectures that say a plain transformers model was saved with this task's head.
    architectures: tuple[str, ...] = ()

    @property
    def default_metric(self) -> str:
        return self.metrics[0] if self.metrics else ""

    def check_metric(self, metric: str) -> str:
        """`metric`, or the task's default where empty; refused where the task has no such metric."""
        metric = metric or self.default_metric
        if metric not in self.metrics:
            raise DSEEError(
                f"--metric '{metric}' does not apply to {self.kind}: choose one of {', '.join(self.metrics)}"
            )
        return metric

    def reported_metrics(self, selected: str) -> tuple[str, ...]:
        """The metrics a report shows: the one that selected the checkpoint first, then `reported`."""
        return tuple(dict.fromkeys((selected, *self.reported))) if selected else self.reported

    def model_class(self):
        import transformers

        return getattr(transformers, self.head)

    def model_matches(self, config) -> bool:
        """Whether a plain transformers model with `config` carries this task's head."""
        names = " ".join(getattr(config, "architectures", None) or [])
        return any(a in names for a in self.architectures)

    def predictions(self, values: np.ndarray) -> np.ndarray:
        """What a metric compares with the labels: class ids or values, one per input."""
        raise DSEEError(f"{self.kind} engines have no predictions to score")

    def answer(self, values: np.ndarray, labels: Sequence[str]) -> list:
        """What the engine returns for the graph output `values` of n inputs."""
        return values

    def output_width(self, labels: Sequence[str], hidden_size: int | None) -> int | None:
        """The width of the engine output for config.json's `labels` (None: not fixed by them)."""
        return None

    def score(
        self, metric: str, predictions: np.ndarray, labels: np.ndarray, positive: int = 1, classes: int = 0
    ) -> float:
        """`metric` x 100 of predictions against labels (`positive`: the class binary F1 is computed for;
        `classes`: how many the task has, binary F1 for 2 and macro above; 0: as many as are seen)."""
        raise DSEEError(f"{self.kind} has no metric {metric!r}")

    def agreement(self, a: np.ndarray, b: np.ndarray) -> str:
        """How many of two runs' predictions (`predictions`) agree, as "k/n"."""
        same = a == b
        return f"{int(same.sum())}/{same.size}"

    def agreement_with(self, other: str) -> str:
        """What `agreement` counts against the run named `other`, in words ("agreement with pytorch"); with
        underscores for spaces, the key --validate-data records it under."""
        return f"agreement with {other}"

    def output_agreement(self, got: np.ndarray, want: np.ndarray) -> str:
        """How many positions of a graph output (..., width) pick the same argmax as PyTorch's, as "k/n"."""
        same = got.argmax(-1) == want.argmax(-1)
        return f"{int(same.sum())}/{same.size}"


_REGISTRY: dict[str, TaskSpec] = {}


def register(cls: type[TaskSpec]) -> type[TaskSpec]:
    _REGISTRY[cls.kind] = cls()
    return cls


def get_task(kind: str) -> TaskSpec:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise DSEEError(f"unknown task '{kind}': expected one of {', '.join(_REGISTRY)}") from None


def task_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def task_of_model(config) -> TaskSpec:
    """The task of a plain transformers model, from the head it was saved with; a bare encoder (BertModel, ...)
    is good for embeddings."""
    for spec in _REGISTRY.values():
        if spec.model_matches(config):
            if spec.kind == Classification.kind and int(getattr(config, "num_labels", 2)) == 1:
                return _REGISTRY[Regression.kind]
            return spec
    return _REGISTRY[FeatureExtraction.kind]


def task_of_config(config) -> TaskSpec:
    """The task of a loaded model: the spec whose problem_type its config carries (what dsee-tune loads with),
    else the one its head says (task_of_model)."""
    problem = getattr(config, "problem_type", None)
    named = [spec for spec in _REGISTRY.values() if problem and spec.problem_type == problem]
    return named[0] if named else task_of_model(config)


@register
class Classification(TaskSpec):
    kind = "classification"
    head = "AutoModelForSequenceClassification"
    exporter_task = "text-classification"
    labelled = True
    scored = True
    metrics = ("accuracy", "f1", "matthews_correlation")
    reported = ("accuracy",)
    verb = "predict"
    problem_type = "single_label_classification"
    architectures = ("ForSequenceClassification",)

    def output_width(self, labels: Sequence[str], hidden_size: int | None) -> int | None:
        return len(labels) or None

    def predictions(self, values: np.ndarray) -> np.ndarray:
        return values.argmax(-1)

    def answer(self, values: np.ndarray, labels: Sequence[str]) -> list[dict]:
        """Per input {"label", "score", "scores": {label: probability}}: the softmax of the logits."""
        z = values.astype(np.float64)
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))}
            )
        return out

    def score(
        self, metric: str, predictions: np.ndarray, labels: np.ndarray, positive: int = 1, classes: int = 0
    ) -> float:
        # Written with numpy, not scikit-learn: the engine and dsee-bench run without the 'tune' extra. The
        # formulas are scikit-learn's (binary F1 of `positive`, macro F1 above two classes, Matthews' phi).
        p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
        if metric == "accuracy":
            return float((p == y).mean() * 100)
        seen = np.union1d(p, y)
        if metric == "f1":
            binary = classes == 2 if classes else len(seen) <= 2
            targets = [positive] if binary else (np.arange(classes) if classes else seen)
            return float(np.mean([_f1(p == c, y == c) for c in targets]) * 100)
        if metric == "matthews_correlation":
            return float(_matthews(p, y, seen) * 100)
        return super().score(metric, predictions, labels, positive)


@register
class Regression(TaskSpec):
    kind = "regression"
    head = "AutoModelForSequenceClassification"
    exporter_task = "text-classification"
    labelled = True
    scored = True
    metrics = ("pearson", "spearman")
    reported = ("pearson", "spearman")  # STS papers quote Spearman; GLUE's STS-B, both
    verb = "predict"
    problem_type = "regression"
    continuous_labels = True
    tolerance = 0.01  # two predictions agree when they are this close (the labels are scores, not classes)
    # One output per input: an argmax would always agree.
    output_agreement_key = f"within_{tolerance:g}"
    output_agreement_words = f"outputs within {tolerance:g} of PyTorch's"

    def output_width(self, labels: Sequence[str], hidden_size: int | None) -> int | None:
        return 1

    def predictions(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(-1)

    def answer(self, values: np.ndarray, labels: Sequence[str]) -> list[dict]:
        return [{"value": v} for v in values[:, 0].astype(np.float64).tolist()]

    def score(
        self, metric: str, predictions: np.ndarray, labels: np.ndarray, positive: int = 1, classes: int = 0
    ) -> float:
        if metric not in ("pearson", "spearman"):
            return super().score(metric, predictions, labels, positive)
        return correlation(metric, predictions, labels)

    def agreement(self, a: np.ndarray, b: np.ndarray) -> str:
        """Within `tolerance` of each other, as "k/n"."""
        same = np.abs(a - b) <= self.tolerance
        return f"{int(same.sum())}/{same.size}"

    def agreement_with(self, other: str) -> str:
        return f"within {self.tolerance:g} of {other}"

    def output_agreement(self, got: np.ndarray, want: np.ndarray) -> str:
        return self.agreement(self.predictions(got), self.predictions(want))


@register
class CausalLM(TaskSpec):
    kind = "causal-lm"
    head = "AutoModelForCausalLM"
    exporter_task = "text-generation"
    metrics = ("loss", "perplexity")
    greater_is_better = False
    language_model = True
    architectures = ("LMHead", "ForCausalLM")
    verb = "generate"


@register
class FeatureExtraction(TaskSpec):
    kind = "feature-extraction"
    head = "AutoModel"
    exporter_task = "feature-extraction"
    outputs = ("last_hidden_state", "sentence_embedding")
    engine_output = "sentence_embedding"
    verb = "embed"
    pooled = True
    # Scored on sentence pairs with a relatedness score (STS, SICK): the cosine of the two embeddings against it
    scored = True
    pair_similarity = True
    continuous_labels = True
    metrics = ("spearman", "pearson")  # STS papers quote Spearman
    reported = ("spearman", "pearson")
    tolerance = 0.01  # two runs' cosines agree when they are this close

    def output_width(self, labels: Sequence[str], hidden_size: int | None) -> int | None:
        return hidden_size

    def predictions(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(-1)  # the pairs' cosines (runtime.evaluate computes them from the embeddings)

    def score(
        self, metric: str, predictions: np.ndarray, labels: np.ndarray, positive: int = 1, classes: int = 0
    ) -> float:
        return correlation(metric, predictions, labels)

    def agreement(self, a: np.ndarray, b: np.ndarray) -> str:
        """Cosines within `tolerance` of each other, as "k/n"."""
        same = np.abs(a - b) <= self.tolerance
        return f"{int(same.sum())}/{same.size}"

    def agreement_with(self, other: str) -> str:
        return f"cosine within {self.tolerance:g} of {other}"


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float((pred & true).sum())
    denominator = float(pred.sum() + true.sum())
    return 2 * tp / denominator if denominator else 0.0


def _matthews(p: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    index = {c: i for i, c in enumerate(classes.tolist())}
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, ([index[v] for v in y.tolist()], [index[v] for v in p.tolist()]), 1)
    t, q = confusion.sum(1), confusion.sum(0)  # true and predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator else 0.0
