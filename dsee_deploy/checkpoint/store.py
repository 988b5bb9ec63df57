"""The DSEE checkpoint directory: what dsee-tune saves and how it is read back as files (loading the model:
checkpoint.load).

dsee_config.json      format version, DSEE options, architecture, task, base model and its sha256
adapter.safetensors   only what was trained: A, B, S values, S indices, the task head
config.json, tokenizer files, metrics.json
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data import Task
from ..errors import DSEEError
from ..outputs import check_output
from ..pruning.record import PruningRecord
from ..tuning import DSEEConfig

FORMAT_VERSION = 1
CONFIG_FILE = "dsee_config.json"
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"
PRUNING_FILE = "pruning.json"
MASKS_FILE = "masks.safetensors"
CHECKPOINT_FILES = (CONFIG_FILE, ADAPTER_FILE, "config.json")


@dataclass
class CheckpointInfo:
    """What dsee_deploy.tune and dsee_deploy.prune return: the checkpoint written and what it holds."""

    path: Path
    task: Task
    metrics: dict
    dsee: DSEEConfig | None  # None for a full fine-tune (a plain transformers model)
    pruning: PruningRecord | None
    steps: int = 0
    train_seconds: float = 0.0

    def scores(self) -> dict[str, float]:
        """The task's metrics on eval and test, e.g. {"eval_accuracy": 0.89, "test_f1": 0.87}."""
        return {
            f"{split}_{name}": self.metrics[f"{split}_{name}"]
            for split in ("eval", "test")
            for name in self.task.spec.metrics
            if f"{split}_{name}" in self.metrics
        }


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Create `path` in place (tests and the synthetic models; the verbs write through outputs.Output); an
    existing non-empty directory is only replaced with `overwrite`."""
    out = check_output(path, overwrite)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DSEEError(
            f"--output '{out}' cannot be created ({exc.strerror}): choose a writable path"
        ) from exc
    return out


def adapter_state(model) -> dict:
    """What was trained: every parameter with requires_grad, plus the sparse indices."""
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.cpu().contiguous() for n, b in model.named_buffers() if n.endswith("sparse_indices")})
    return state


def save_checkpoint(
    out: Path,
    model,
    tokenizer,
    dsee: DSEEConfig,
    task: Task,
    base: dict,
    metrics: dict,
    pruning: PruningRecord | None = None,
    masks: dict | None = None,
    extra: dict | None = None,
) -> None:
    from safetensors.torch import save_file

    from ..pruning import save_masks

    save_file(adapter_state(model), str(out / ADAPTER_FILE), metadata={"format": "dsee-deploy"})
    if pruning:
        pruning.save(out / PRUNING_FILE)
    if masks:
        save_masks(masks, out / MASKS_FILE)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "format_version": FORMAT_VERSION,
        "method": "dsee",
        "architecture": model.config.model_type,
        "dsee": dsee.to_dict(),
        "task": task.to_dict(),
        "base_model": base,
        **(extra or {}),
    }
    (out / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


def read_checkpoint_info(checkpoint: str | Path) -> dict:
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise DSEEError(
            f"checkpoint '{ckpt}' does not exist or is not a directory: pass a dsee-tune --output"
        )
    for name in CHECKPOINT_FILES:
        if not (ckpt / name).is_file():
            raise DSEEError(
                f"checkpoint '{ckpt}' is missing {name}: it is not a complete dsee-tune output; re-run dsee-tune "
                f"or restore the file"
            )
    try:
        info = json.loads((ckpt / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise DSEEError(
            f"'{ckpt / CONFIG_FILE}' is not valid JSON ({exc}): restore it or re-run dsee-tune"
        ) from exc
    if info.get("format_version") != FORMAT_VERSION:
        raise DSEEError(
            f"checkpoint '{ckpt}' has format version {info.get('format_version')}, this dsee-deploy reads "
            f"{FORMAT_VERSION}: use a matching dsee-deploy version"
        )
    return info


def read_pruning(checkpoint: Path) -> PruningRecord | None:
    """The checkpoint's pruning record, None where it was not pruned."""
    path = Path(checkpoint) / PRUNING_FILE
    return PruningRecord.read(path) if path.is_file() else None
