"""Training with transformers' Trainer (so torchrun / accelerate launch scale it out unchanged)."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DSEEError

# Task metric used to pick the best checkpoint, per task kind.
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "causal-lm": "loss"}
METRICS = {
    "classification": ("accuracy", "f1", "matthews_correlation"),
    "regression": ("pearson", "spearman"),
    "causal-lm": ("loss", "perplexity"),
}


@dataclass
class TrainOptions:
    epochs: float = field(default=2.0, metadata={"help": "Training epochs."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    lr: float = field(
        default=1e-3, metadata={"help": "Peak learning rate (linear warm-up, then linear decay)."}
    )
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps spent warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    seed: int = field(default=42, metadata={"help": "Seed for data order and dropout."})
    metric: str = field(
        default="", metadata={"help": "Metric that picks the best checkpoint (task default if empty)."}
    )

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warm-up ratio must be in [0, 1), got {self.warmup_ratio}")


def compute_metrics_for(kind: str):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    def classification(pred) -> dict:
        labels = pred.label_ids
        preds = np.argmax(pred.predictions, axis=-1)
        average = "binary" if pred.predictions.shape[-1] == 2 else "macro"
        return {
            "accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average=average, zero_division=0)),
            "matthews_correlation": float(matthews_corrcoef(labels, preds)),
        }

    def regression(pred) -> dict:
        preds = np.asarray(pred.predictions).reshape(-1)
        return {
            "pearson": float(pearsonr(preds, pred.label_ids)[0]),
            "spearman": float(spearmanr(preds, pred.label_ids)[0]),
        }

    return {"classification": classification, "regression": regression}.get(kind)


def build_trainer(
    model,
    tokenizer,
    train_ds,
    eval_ds,
    kind: str,
    opts: TrainOptions,
    work_dir: Path,
    teacher=None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
):
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    metric = opts.metric or DEFAULT_METRIC[kind]
    if metric not in METRICS[kind]:
        raise DSEEError(
            f"--metric '{metric}' does not apply to {kind}: choose one of {', '.join(METRICS[kind])}"
        )
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
        learning_rate=opts.lr,
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
        greater_is_better=metric != "loss",
        save_total_limit=2,
        save_only_model=True,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if eval_ds is None:
        args.eval_strategy = "no"
    collator = (
        DataCollatorForLanguageModeling(tokenizer, mlm=False)
        if kind == "causal-lm"
        else DataCollatorWithPadding(tokenizer)
    )
    kwargs = {}
    cls = Trainer
    if teacher is not None:
        cls = distillation_trainer_class()
        kwargs = {"teacher": teacher, "alpha": distill_alpha, "temperature": distill_temperature}
    return cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        compute_metrics=compute_metrics_for(kind),
        **kwargs,
    )


def finish(work_dir: Path) -> None:
    """Trainer's intermediate checkpoints hold the whole model; the DSEE checkpoint replaces them."""
    shutil.rmtree(work_dir, ignore_errors=True)


def add_perplexity(metrics: dict) -> dict:
    for key in [k for k in metrics if k.endswith("_loss")]:
        metrics[key.replace("_loss", "_perplexity")] = float(math.exp(min(metrics[key], 50)))
    return metrics


def importance_batches(ds, tokenizer, kind: str, samples: int, batch_size: int) -> list[dict]:
    """The first `samples` training examples, collated into batches, for taylor importance."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    collate = (
        DataCollatorForLanguageModeling(tokenizer, mlm=False)
        if kind == "causal-lm"
        else DataCollatorWithPadding(tokenizer)
    )
    subset = ds.select(range(min(samples, len(ds))))
    return [
        dict(collate([subset[j] for j in range(i, min(i + batch_size, len(subset)))]))
        for i in range(0, len(subset), batch_size)
    ]


def distillation_trainer_class():
    """A Trainer whose loss mixes the task loss with a distillation loss from a frozen teacher (the unpruned
    tuned model): KL between temperature-softened distributions for classification and LM, MSE for
    regression. Built lazily so that importing this module does not import transformers."""
    import torch
    from torch.nn import functional as F
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        def __init__(self, *args, teacher, alpha: float, temperature: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher, self.alpha, self.temperature = teacher.eval(), alpha, temperature
            for p in self.teacher.parameters():
                p.requires_grad_(False)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            student = outputs.logits
            if student.shape[-1] == 1:  # regression
                distill = F.mse_loss(student, teacher_logits)
            else:
                t = self.temperature
                distill = F.kl_div(
                    F.log_softmax(student.reshape(-1, student.shape[-1]) / t, dim=-1),
                    F.softmax(teacher_logits.reshape(-1, student.shape[-1]) / t, dim=-1),
                    reduction="batchmean",
                ) * (t * t)
            loss = (1 - self.alpha) * outputs.loss + self.alpha * distill
            return (loss, outputs) if return_outputs else loss

    return DistillationTrainer
