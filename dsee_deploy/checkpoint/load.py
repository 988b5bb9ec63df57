"""Loading a checkpoint back: unmerged for training (load_dsee), merged for deployment (load_merged), from a
dsee-tune checkpoint or a PEFT LoRA adapter directory alike (checkpoint.peft_adapter)."""

from __future__ import annotations

import json
from pathlib import Path

from ..architectures import get_spec
from ..data import Task
from ..errors import DSEEError
from ..models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
from ..tuning import DSEEConfig, inject_dsee, unwrap_dsee
from .peft_adapter import load_peft_adapter
from .peft_config import is_peft_adapter
from .peft_config import recorded_base as adapter_base
from .store import ADAPTER_FILE, CONFIG_FILE, MASKS_FILE, read_checkpoint_info, read_pruning


def recorded_base(checkpoint: str | Path | None) -> str | None:
    """The base model a checkpoint records (None when it records none or cannot be read): an input of every
    command that loads the checkpoint, which its output must stay clear of."""
    if checkpoint is not None and is_peft_adapter(checkpoint):
        return adapter_base(checkpoint)
    try:
        return json.loads((Path(checkpoint) / CONFIG_FILE).read_text())["base_model"]["name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_dsee(checkpoint: str | Path, base_model: str | None = None):
    """(model, tokenizer, info): the base model with the DSEE updates loaded, not merged. A PEFT LoRA adapter
    directory loads as a checkpoint without sparse entries (checkpoint.peft_adapter)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
        from ..surgery import apply_structure

        apply_structure(model, pruning.layers)
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
    info["pruning"] = (
        pruning.to_dict() if pruning else None
    )  # pruning.json as saved (PruningRecord.from_dict)
    model.eval()
    return model, load_tokenizer(str(ckpt)), info


def _apply_saved_masks(model, ckpt: Path) -> None:
    from ..architectures import get_spec
    from ..pruning import apply_masks, load_masks

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
