"""Training with transformers' Trainer (so torchrun / accelerate launch scale it out unchanged)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .distributed import world_size
from .embedding import collator as embedding_collator
from .embedding import embedding_trainer_class


def compute_metrics_for(task):
    """Trainer's metric function for `task`: the task registry's metrics (as fractions, as Trainer reports
    them), so that training, --validate-data and dsee-bench score alike."""
    spec = task.spec
    if not spec.scored:
        return None

    def compute(pred) -> dict:
        preds = spec.predictions(np.asarray(pred.predictions))
        classes = len(task.label_names)
        return {m: spec.score(m, preds, pred.label_ids, task.positive, classes) / 100 for m in spec.metrics}

    return compute


def collator_for(task, tokenizer):
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    if task.spec.language_model:
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if task.spec.pair_similarity:
        return embedding_collator(tokenizer)
    return DataCollatorWithPadding(tokenizer)


@dataclass
class Distillation:
    """What a student learns from its teacher besides the task: the teacher's softened outputs (weight `alpha`
    against the task loss, at `temperature`) and, layer by layer, its hidden states (weight `hidden`, MSE over
    real tokens) for the (student, teacher) hidden-state indices of `layer_map` (0 is the embeddings)."""

    teacher: Any
    alpha: float = 0.5
    temperature: float = 2.0
    hidden: float = 0.0
    layer_map: list[tuple[int, int]] = field(default_factory=list)


def layer_map(kept: list[bool], teacher_layers: int) -> list[tuple[int, int]]:
    """Which teacher layer each student layer learns from: the one at the same depth (by proportion, for a
    teacher of another depth). A student layer that kept nothing (no heads, no FFN neurons) passes its input
    through, so it has nothing to learn: its teacher layer is left out rather than forced onto the layer
    before it (CoFi maps such layers away too)."""
    student_layers = len(kept)
    return [
        (i + 1, max(1, round((i + 1) * teacher_layers / student_layers)))
        for i, keeps in enumerate(kept)
        if keeps
    ]


def build_trainer(
    model,
    tokenizer,
    train_ds,
    eval_ds,
    task,
    opts,
    work_dir: Path,
    distill: Distillation | None = None,
    callbacks: list | None = None,
):
    """A Trainer for `opts` (a TuneConfig) that evaluates every epoch and keeps the best checkpoint by the
    task's recorded metric (no evaluation where `eval_ds` is None)."""
    import torch
    from transformers import Trainer, TrainingArguments

    metric = task.metric
    strategy, every = "epoch", None
    if opts.max_steps > 0:
        # With a step budget the run may end before an epoch does: evaluate on steps instead.
        steps_per_epoch = max(1, math.ceil(len(train_ds) / opts.batch_size))
        strategy, every = "steps", min(opts.max_steps, steps_per_epoch)
    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=max(opts.batch_size, 64),
        learning_rate=opts.learning_rate,
        warmup_ratio=opts.warmup_ratio,
        weight_decay=opts.weight_decay,
        lr_scheduler_type="linear",
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=every,
        save_steps=every,
        logging_steps=50,
        load_best_model_at_end=eval_ds is not None,
        metric_for_best_model=metric if eval_ds is not None else None,
        greater_is_better=task.spec.greater_is_better,
        save_total_limit=2,
        save_only_model=True,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without CUDA, Trainer runs data-parallel over processes (torchrun, accelerate launch) only when told it
        # is on CPU; otherwise each process trains alone on all the data. gloo is the CPU backend.
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and world_size() > 1 else None,
    )
    if eval_ds is None:
        args.eval_strategy = "no"
    collator = collator_for(task, tokenizer)
    kwargs = {}
    cls = Trainer
    if task.spec.pair_similarity:  # sentence embeddings: the pair's columns are not the encoder's arguments
        args.remove_unused_columns = False
        cls, kwargs = embedding_trainer_class(), {"task": task, "distill": distill}
    elif distill is not None:
        cls = distillation_trainer_class()
        kwargs = {"distill": distill}
    return cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        compute_metrics=compute_metrics_for(task),
        callbacks=callbacks,
        **kwargs,
    )


def finish(work_dir: Path) -> None:
    """Trainer's intermediate checkpoints hold the whole model; the DSEE checkpoint replaces them."""
    shutil.rmtree(work_dir, ignore_errors=True)


def add_perplexity(metrics: dict) -> dict:
    for key in [k for k in metrics if k.endswith("_loss")]:
        metrics[key.replace("_loss", "_perplexity")] = float(math.exp(min(metrics[key], 50)))
    return metrics


def importance_batches(ds, tokenizer, task, samples: int, batch_size: int) -> list[dict]:
    """The first `samples` training examples, collated into batches, for taylor importance."""
    collate = collator_for(task, tokenizer)
    subset = ds.select(range(min(samples, len(ds))))
    return [
        dict(collate([subset[j] for j in range(i, min(i + batch_size, len(subset)))]))
        for i in range(0, len(subset), batch_size)
    ]


def distillation_trainer_class():
    """A Trainer whose loss mixes the task loss with distillation from a frozen teacher (`Distillation`): KL
    between temperature-softened distributions for classification and LM, MSE for regression, and MSE between
    mapped hidden states. Built lazily so that importing this module does not import transformers."""
    import torch
    from torch.nn import functional as F
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def __init__(self, *args, distill: Distillation, **kwargs):
            super().__init__(*args, **kwargs)
            self.distill = distill
            self.teacher = distill.teacher.eval().to(self.args.device)
            for p in self.teacher.parameters():
                p.requires_grad_(False)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            d = self.distill
            hidden = d.hidden > 0 and bool(d.layer_map)
            outputs = model(**inputs, output_hidden_states=hidden and model.training)
            if not model.training:  # evaluation reports the task loss, comparable with any other run's
                return (outputs.loss, outputs) if return_outputs else outputs.loss
            with torch.no_grad():
                taught = self.teacher(**inputs, output_hidden_states=hidden)
            student, teacher_logits = outputs.logits, taught.logits
            if student.shape[-1] == 1:  # regression
                soft = F.mse_loss(student, teacher_logits)
            else:
                t = d.temperature
                soft = F.kl_div(
                    F.log_softmax(student.reshape(-1, student.shape[-1]) / t, dim=-1),
                    F.softmax(teacher_logits.reshape(-1, student.shape[-1]) / t, dim=-1),
                    reduction="batchmean",
                ) * (t * t)
            loss = (1 - d.alpha) * outputs.loss + d.alpha * soft
            if hidden:
                mask = inputs.get("attention_mask")
                first = outputs.hidden_states[0]
                mask = (torch.ones_like(first[..., :1]) if mask is None else mask[..., None]).to(first.dtype)
                tokens = mask.sum() * first.shape[-1]
                layers = [
                    (((outputs.hidden_states[s] - taught.hidden_states[t]) ** 2) * mask).sum() / tokens
                    for s, t in d.layer_map
                ]
                loss = loss + d.hidden * torch.stack(layers).mean()
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer
