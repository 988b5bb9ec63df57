"""What an export starts from: a DSEE checkpoint (merged, shrunk, in fp32) or a plain transformers model
directory (the dense baseline), with its tokenizer, its task and its pruning record."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..architectures import longest_input
from ..data import Task
from ..errors import DSEEError
from ..models import local_dir
from ..tasks import FeatureExtraction, get_task, task_of_model


@dataclass
class Source:
    path: Path
    model: Any  # a transformers model, or the sentence encoder around one (feature extraction)
    tokenizer: Any
    task: Task
    pruning: dict | None


def load_source(src: Path, config, base_model: str | None = None) -> Source:
    """The model as tuned (merged, shrunk, in fp32), its tokenizer, task and pruning record."""
    from ..checkpoint import (
        CONFIG_FILE,
        is_peft_adapter,
        load_dsee,
        load_merged,
        read_checkpoint_info,
        read_pruning,
    )
    from ..export.pooling import pooling_of, sentence_encoder, sentence_length
    from ..tuning import unwrap_dsee

    if is_peft_adapter(src):
        model, tokenizer, info = load_dsee(src, base_model)
        model, task, pruning = unwrap_dsee(model), Task.from_dict(info["task"]), None
        base_dir = local_dir(info["base_model"]["name_or_path"])
    elif not (src / "config.json").is_file():
        raise DSEEError(
            f"'{src}' is neither a dsee-tune checkpoint nor a transformers model directory (no config.json)"
        )
    elif (src / CONFIG_FILE).is_file():
        info = read_checkpoint_info(src)
        model, tokenizer = load_merged(src, base_model)
        task, pruning = Task.from_dict(info["task"]), read_pruning(src)
        base_dir = local_dir(base_model or info["base_model"]["name_or_path"])
    elif (src / "adapter.safetensors").is_file():  # a DSEE checkpoint that lost its record
        raise DSEEError(
            f"checkpoint '{src}' has adapter.safetensors but no {CONFIG_FILE}: it is an incomplete dsee-tune "
            f"output; restore {CONFIG_FILE} or re-run dsee-tune"
        )
    else:
        model, tokenizer, task = _load_plain(src, config.task)
        pruning, base_dir = None, src
    # A record may say more than the model takes (tuned with --max-length above its positions): what it takes
    task = replace(task, max_length=min(task.max_length, longest_input(model.config)))
    features = get_task(FeatureExtraction.kind)
    if config.task == features.kind or task.spec is features:
        pooling, normalize = pooling_of(base_dir)
        pooling = pooling if config.pooling == "auto" else config.pooling
        normalize = normalize if config.normalize is None else config.normalize
        model = sentence_encoder(model.base_model, pooling, normalize)
        declared = sentence_length(
            base_dir
        )  # sentence-transformers' max_seq_length: what its encode truncates at
        task = Task(
            kind=features.kind,
            max_length=min(task.max_length, declared or task.max_length),
            pooling=pooling,
            normalize=normalize,
            label_names=[],
        )
    return Source(src, model, tokenizer, task, pruning)


def _load_plain(src: Path, requested: str):
    from transformers import AutoConfig

    from ..architectures import get_spec
    from ..models import load_tokenizer

    config = AutoConfig.from_pretrained(src)
    get_spec(config.model_type)  # refuses an architecture that is not registered, in one line
    spec = get_task(requested) if requested != "auto" else task_of_model(config)
    try:
        model = spec.model_class().from_pretrained(src, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise DSEEError(
            f"could not load '{src}' ({str(exc).splitlines()[0]}): it needs model.safetensors"
        ) from exc
    tokenizer = load_tokenizer(str(src))
    names = []
    if spec.labelled and not spec.continuous_labels:
        names = [str(config.id2label[i]) for i in range(config.num_labels)]
        if names == [f"LABEL_{i}" for i in range(len(names))]:  # transformers' defaults: the data says 0, 1
            names = [str(i) for i in range(len(names))]
    task = Task(kind=spec.kind, label_names=names, max_length=_tuned_length(src, tokenizer, config))
    if spec.labelled:  # dsee-tune --full-finetune records the metric it selected by
        recorded = _metrics(src).get("metric")
        task = replace(task, metric=recorded) if recorded in spec.metrics else task
    return model.eval(), tokenizer, task


def _tuned_length(src: Path, tokenizer, config) -> int:
    """The length a model was tuned with: a dsee-tune --full-finetune output keeps it as its tokenizer's limit
    (before 2026-12-08: in metrics.json); any other model takes its longest input."""
    recorded = _metrics(src).get("max_length")
    if isinstance(recorded, int) and recorded > 1:
        return min(recorded, longest_input(config))
    return longest_input(config, tokenizer)


def _metrics(src: Path) -> dict:
    path = src / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
