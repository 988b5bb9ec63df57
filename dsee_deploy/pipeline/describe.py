"""The lines a tuning run prints about the choices it makes: the update it trains as flags, its distillation
loss, counts in words, the learning rate a checkpoint was tuned at."""

from __future__ import annotations

from pathlib import Path


def describe_dsee(dsee) -> str:
    """The DSEE update a run trains, as the flags that give it (the defaults are the measured-best recipe)."""
    flags = (
        f"--rank {dsee.rank} --alpha {dsee.alpha:g} --num-sparse {dsee.num_sparse} --sparse-init "
        f"{dsee.sparse_init} --target-modules {','.join(dsee.target_modules)}"
    )
    return f"update: low-rank r {dsee.rank} (scale alpha/r {dsee.scaling:g}) + {dsee.num_sparse} sparse per matrix: {flags}"


def describe_distillation(d, teacher: str | None, task) -> str:
    """What a student learns from its teacher, in one line: the loss and each weight."""
    if task.spec.pooled:
        soft = "MSE to its sentence embeddings"
    elif task.kind == "regression":
        soft = "MSE to its outputs"
    else:
        soft = f"KL to its softened logits (T {d.temperature:g})"
    who = f"'{teacher}'" if teacher else "the unpruned model (a copy taken before pruning)"
    line = f"distilling from {who}: loss = {1 - d.alpha:g} x task + {d.alpha:g} x {soft}"
    if task.spec.pooled and not task.text_pair_column:  # single texts: the teacher is all there is to learn
        line = f"distilling from {who}: loss = {soft}"
    if d.hidden > 0 and d.layer_map:
        pairs = ", ".join(f"{s}<-{t}" for s, t in d.layer_map)
        line += f" + {d.hidden:g} x hidden-state MSE over {_count(len(d.layer_map), 'layer')} (student<-teacher: {pairs})"
    elif d.hidden > 0:
        line += " (no hidden-state loss: the teacher's width differs)"
    return line


def _count(n: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '0.5 epochs'."""
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def _recorded_lr(checkpoint) -> float | None:
    """The learning rate a checkpoint was tuned at, from its metrics.json (None where it does not say)."""
    import json

    path = Path(checkpoint) / "metrics.json"
    try:
        value = json.loads(path.read_text()).get("learning_rate")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None
