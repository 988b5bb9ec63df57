"""`dsee_deploy.prune`: prune a DSEE checkpoint into a new one (re-tune it with `dsee_deploy.tune(resume=...)`),
and `pruning_report`, what a checkpoint's pruning removed."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DSEEError, require_extra
from ..pruning.config import PruneConfig
from ..pruning.importance import GRADIENT


def prune(
    checkpoint: str | Path,
    config: PruneConfig,
    output: str | Path,
    *,
    train: str | None = None,
    batch_size: int = 32,
    base_model: str | None = None,
    overwrite: bool = False,
):
    """Prune `checkpoint` as `config` says and save the pruned checkpoint to `output` (the input is never
    modified). Taylor importance reads `train` (default: the data the checkpoint was tuned on). Returns the
    CheckpointInfo of the pruned checkpoint."""
    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from ..checkpoint import (
        MASKS_FILE,
        CheckpointInfo,
        load_dsee,
        read_pruning,
        recorded_base,
        save_checkpoint,
    )
    from ..data import Task
    from ..outputs import Output
    from ..pruning.masks import load_masks
    from ..pruning.prune import prune_model
    from ..tuning import DSEEConfig

    ckpt = Path(checkpoint)
    if not config.any:
        raise DSEEError(
            "nothing to prune: pass --prune-heads, --prune-ffn or --prune-unstructured (or --report)"
        )
    target = Output(
        output,
        overwrite,
        {"the checkpoint": ckpt, "--train": train, "--base-model": base_model or recorded_base(ckpt)},
    )
    with target as out:  # started first: an unwritable --output fails before the model loads
        model, tokenizer, info = load_dsee(ckpt, base_model)
        previous = read_pruning(ckpt)
        task = Task.from_dict(info["task"])
        batches = None
        if config.structured and config.structured_importance() in GRADIENT:
            batches = _taylor_batches(
                train or info.get("data", {}).get("train"), tokenizer, task, config, batch_size
            )
        record, masks = prune_model(model, config, batches, previous, seq_len=config.flops_seq_len)
        if previous and previous.unstructured and (ckpt / MASKS_FILE).is_file():
            masks = {**load_masks(ckpt / MASKS_FILE), **masks}
        extra = {k: info[k] for k in ("data",) if k in info}
        dsee = DSEEConfig.from_dict(info["dsee"])
        metrics = {"pruned_from": str(ckpt)}
        save_checkpoint(
            out,
            model,
            tokenizer,
            dsee,
            task,
            info["base_model"],
            metrics,
            pruning=record,
            masks=masks,
            extra=extra,
        )
    return CheckpointInfo(target.target, task, metrics, dsee, record)


def _taylor_batches(source: str | None, tokenizer, task, config: PruneConfig, batch_size: int) -> list[dict]:
    from ..data import encode, read_table
    from ..training import importance_batches

    if not source or not Path(source).exists():
        raise DSEEError(
            f"{config.structured_importance()} importance needs training data and the checkpoint's recorded data "
            f"was not found: pass --train, or --importance wabs"
        )
    raw = read_table(source, "--train")
    ds = encode(raw.select(range(min(config.taylor_samples, len(raw)))), tokenizer, task, source)
    return importance_batches(ds, tokenizer, task, config.taylor_samples, batch_size)


def pruning_report(checkpoint: str | Path) -> str:
    """What was pruned (per layer), parameters and FLOPs, and the task metrics before pruning and now."""
    from ..checkpoint import read_checkpoint_info, read_pruning
    from ..data import Task
    from ..pruning.prune import format_report

    ckpt = Path(checkpoint)
    info = read_checkpoint_info(ckpt)
    record = read_pruning(ckpt)
    if record is None:
        raise DSEEError(
            f"checkpoint '{ckpt}' is not pruned (no pruning.json): prune it with dsee-prune first"
        )
    lines = [format_report(record)]
    metrics_path = ckpt / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        before = metrics.get("before_pruning", {})
        shown = []
        name = Task.from_dict(info["task"]).metric  # the metric that selected the checkpoint
        if name:
            for key in (f"eval_{name}", f"test_{name}"):
                if key in metrics:
                    was = f"{before[key]:.4f} before pruning, " if key in before else ""
                    shown.append(f"{key.replace('_', ' ')}: {was}{metrics[key]:.4f} now")
        if shown:
            lines.append("; ".join(shown))
    return "\n".join(lines)
