"""The DSEE checkpoint directory, and loading it back (unmerged for training, merged for deployment).

dsee_config.json      format version, DSEE options, architecture, task, base model and its sha256
adapter.safetensors   only what was trained: A, B, S values, S indices, the task head
config.json, tokenizer files, metrics.json
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .architectures import get_spec
from .data import Task
from .errors import DSEEError
from .models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
from .outputs import check_output
from .tuning import DSEEConfig, inject_dsee, unwrap_dsee

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
    pruning: dict | None
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


def recorded_base(checkpoint: str | Path | None) -> str | None:
    """The base model a checkpoint records (None when it records none or cannot be read): an input of every
    command that loads the checkpoint, which its output must stay clear of."""
    from .interop.peft import is_peft_adapter
    from .interop.peft import recorded_base as adapter_base

    if checkpoint is not None and is_peft_adapter(checkpoint):
        return adapter_base(checkpoint)
    try:
        return json.loads((Path(checkpoint) / CONFIG_FILE).read_text())["base_model"]["name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    pruning: dict | None = None,
    masks: dict | None = None,
    extra: dict | None = None,
) -> None:
    from safetensors.torch import save_file

    from .pruning import save_masks

    save_file(adapter_state(model), str(out / ADAPTER_FILE), metadata={"format": "dsee-deploy"})
    if pruning:
        (out / PRUNING_FILE).write_text(json.dumps(pruning, indent=2) + "\n")
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


def load_dsee(checkpoint: str | Path, base_model: str | None = None):
    """(model, tokenizer, info): the base model with the DSEE updates loaded, not merged. A PEFT LoRA adapter
    directory loads as a checkpoint without sparse entries (interop.peft)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .interop.peft import is_peft_adapter, load_peft_adapter

    ckpt = Path(checkpoint)
    if is_peft_adapter(ckpt):
        return load_peft_adapter(ckpt, base_model)
    info = read_checkpoint_info(ckpt)
    get_spec(info["architecture"])
    task = Task.from_dict(info["task"])
    dsee = DSEEConfig.from_dict(info["dsee"])
    base_ref = base_model or info["base_model"]["name_or_path"]
    try:
        base_path = resolve_model(base_ref)
    except DSEEError as exc:
        raise DSEEError(
            f"checkpoint '{ckpt}' needs its base model '{base_ref}', which cannot be loaded ({exc}): pass "
            f"--base-model (base_model=...) with the original weights"
        ) from exc
    config = load_config(str(ckpt), task)
    model, loading = load_model(base_path, config, task)
    sha = base_weights_sha256(model, loading["missing_keys"])
    expected = info["base_model"]["sha256"]
    if sha != expected:
        raise DSEEError(
            f"checkpoint '{ckpt}' was tuned on base weights with sha256 {expected[:12]}..., but '{base_ref}' has "
            f"{sha[:12]}...: pass --base-model (base_model=...) with the original weights"
        )
    inject_dsee(model, dsee, init=False)
    pruning = read_pruning(ckpt)
    if pruning:
        from .surgery import apply_structure

        apply_structure(model, pruning["layers"])
    try:
        tensors = load_file(str(ckpt / ADAPTER_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DSEEError(
            f"'{ckpt / ADAPTER_FILE}' is not a readable safetensors file ({exc}): restore it or re-run dsee-tune"
        ) from exc
    _load_adapter(model, tensors, ckpt, loading["missing_keys"])
    if (ckpt / MASKS_FILE).is_file():
        _apply_saved_masks(model, ckpt)
    info["trainable"] = sorted(n for n in tensors if not n.endswith("sparse_indices"))
    info["pruning"] = pruning
    model.eval()
    return model, load_tokenizer(str(ckpt)), info


def read_pruning(checkpoint: Path) -> dict | None:
    path = Path(checkpoint) / PRUNING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DSEEError(f"'{path}' is not valid JSON ({exc}): restore it or re-run dsee-prune") from exc


def _apply_saved_masks(model, ckpt: Path) -> None:
    from .architectures import get_spec
    from .pruning import apply_masks, load_masks

    try:
        masks = load_masks(ckpt / MASKS_FILE)
    except Exception as exc:  # safetensors and numpy raise several types for a damaged file
        raise DSEEError(
            f"'{ckpt / MASKS_FILE}' is not a readable mask file ({exc}): restore it or re-run dsee-prune"
        ) from exc
    try:
        apply_masks(model, get_spec(model.config.model_type), masks)
    except ValueError as exc:
        raise DSEEError(
            f"'{ckpt / MASKS_FILE}' does not match the model ({exc}): it belongs to another checkpoint; restore "
            f"this checkpoint's mask file or re-run dsee-prune"
        ) from exc


def _load_adapter(model, tensors: dict, ckpt: Path, missing_keys: list[str]) -> None:
    # The number of sparse entries of an update may differ from the config's N after surgery: take the file's.
    for name in [n for n in tensors if n.endswith(".sparse_indices")]:
        prefix = name[: -len("sparse_indices")]
        try:
            update = model.get_submodule(prefix.rstrip("."))
        except AttributeError:
            continue  # reported below as not in the model
        if f"{prefix}sparse_values" in tensors:
            update.set_sparse(tensors[name], tensors[f"{prefix}sparse_values"])
    state = model.state_dict()
    needed = {n for n in state if ".updates." in n} | {k for k in missing_keys if k in state}
    problems = [f"{n} is absent" for n in sorted(needed - set(tensors))]
    problems += [f"{n} is not in the model" for n in sorted(set(tensors) - set(state))]
    problems += [
        f"{n} has shape {tuple(t.shape)}, the model expects {tuple(state[n].shape)}"
        for n, t in sorted(tensors.items())
        if n in state and t.shape != state[n].shape
    ]
    if problems:
        raise DSEEError(
            f"'{ckpt / ADAPTER_FILE}' does not match the model ({'; '.join(problems[:3])}"
            f"{'; ...' if len(problems) > 3 else ''}): it was written for another model or DSEE config; "
            f"re-run dsee-tune"
        )
    model.load_state_dict(tensors, strict=False)


def load_merged(checkpoint: str | Path, base_model: str | None = None):
    """(model, tokenizer): a plain transformers model with the DSEE update merged into its weights."""
    model, tokenizer, _ = load_dsee(checkpoint, base_model)
    return unwrap_dsee(model), tokenizer
