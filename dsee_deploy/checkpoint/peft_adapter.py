"""PEFT LoRA adapters in and out.

A LoRA update is a DSEE update without the sparse part (../shared/DSEE.md §1): PEFT's `lora_A` (r, in) and
`lora_B` (out, r) are DSEE's A and B for the same projection, in the same (out, in) orientation even where the
base layer is GPT-2's Conv1D (PEFT's `fan_in_fan_out` only says how the base weight is stored). So an adapter
directory (`adapter_config.json`, `adapter_model.safetensors`) loads as a DSEE model with N = 0, and every
command that takes a checkpoint takes it (`load_dsee` dispatches here).

Reading needs no `peft` install: the format is two files. Writing (`to_peft`) builds the adapter with `peft`
itself, so that PEFT's own loader reads what it wrote.

What differs between modules is folded into one DSEE config without changing the function: DSEE has one rank
and one scale for all updates, PEFT may have a rank and alpha per module (`rank_pattern`, `alpha_pattern`) and
alpha / sqrt(r) (`use_rslora`). Every update is zero-padded to the largest rank R (B A is unchanged by zero
rows of A and zero columns of B), and B carries s_module / s_dsee, so s_dsee B' A' = s_module B A.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..architectures import TARGETS, get_spec
from ..data import Task
from ..errors import DSEEError
from ..models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
from ..tasks import Regression, get_task, task_of_model
from ..tuning import DSEEConfig, inject_dsee
from .peft_config import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BASE_SHA_KEY,
    METHOD,
    PREFIX,
    TASK_TYPES,
    module_alphas,
    read_adapter_config,
    scaling,
)
from .store import FORMAT_VERSION


def _dtype(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _split(tensors: dict, path: Path) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    """({module name: {"A": (r, in), "B": (out, r)}}, {model tensor name: tensor}) from the saved names."""
    lora, others = {}, {}
    for key, tensor in tensors.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        found = re.fullmatch(r"(.+)\.lora_([AB])(?:\.default)?\.weight", name)
        if found and not tensor.is_floating_point():
            raise DSEEError(
                f"'{path / ADAPTER_WEIGHTS}' holds {key} as {_dtype(tensor)}, expected floating-point LoRA weights "
                f"(PEFT saves float32, float16 or bfloat16): save the adapter again from the trained PEFT model"
            )
        if found:
            lora.setdefault(found[1], {})[found[2]] = tensor
        elif ".lora_" in name:
            raise DSEEError(
                f"'{path}' holds {key}, a kind of LoRA tensor dsee-deploy does not read (it reads lora_A and "
                f"lora_B of linear projections)"
            )
        elif ".original_module." not in name:  # the untrained original beside a modules_to_save copy
            # modules_to_save: the trained copy, saved under the module's own name or as its
            # modules_to_save (bias="all" saves both, equal); PEFT's own names are kept for a wrapped base layer
            others[re.sub(r"\.modules_to_save(\.default)?\.", ".", name)] = tensor
    incomplete = [m for m, ab in lora.items() if set(ab) != {"A", "B"}]
    if incomplete:
        raise DSEEError(
            f"'{path}' has lora_A or lora_B but not both for {incomplete[0]}: restore the adapter"
        )
    return lora, others


def _num_labels(base_config, task, others: dict) -> int:
    """The label count of a classifier adapter: the first dimension of the head tensor whose shape follows
    the label count (found by building the head for two counts on the meta device, which allocates nothing)."""
    import torch

    shapes = []
    for n in (2, 3):
        fields = {k: v for k, v in base_config.to_dict().items() if k not in ("id2label", "label2id")}
        config = base_config.__class__.from_dict({**fields, "num_labels": n})
        with torch.device("meta"):
            model = task.spec.model_class().from_config(config)
        shapes.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    for name, shape in shapes[0].items():
        if shapes[1].get(name) != shape and name in others:
            return int(others[name].shape[0])
    raise DSEEError(
        "the adapter is a classifier (task_type SEQ_CLS) but holds no classification head: train it with the "
        "head in modules_to_save (PEFT adds 'classifier' and 'score' for SEQ_CLS)"
    )


def _model_names(spec, base_config) -> set[str]:
    """The names of the modules and tensors of `spec`'s model of `base_config` (built on the meta device, which
    allocates nothing); none where transformers has no such head for the architecture."""
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # BertLMHeadModel asks for is_decoder=True: here it is only looked at
    try:
        with torch.device("meta"):
            model = spec.model_class().from_config(base_config)
    except ValueError:  # "Unrecognized configuration class": DistilBERT has no causal LM
        return set()
    finally:
        hf_logging.set_verbosity(verbosity)
    return {n for n, _ in model.named_modules()} | set(model.state_dict())


def _task_kind(path: Path, config: dict, base_ref: str, base_config, lora: dict, others: dict) -> str:
    """The task of the model the adapter was trained on, refused in one line where the base has not the modules
    the adapter names. Its task_type's; without one (PEFT writes none where LoraConfig leaves it out, whatever
    the model) the task whose model has every module and tensor the adapter names: the base's own, else the one
    other such task (an adapter of BertForSequenceClassification names bert.encoder... and its saved classifier,
    which a bare BertModel base has not)."""

    def absent(kind: str, names: list[str]) -> str | None:
        have = _model_names(get_task(kind), base_config)
        return next((n for n in names if n not in have), None)

    def refuse(name: str, what: str):
        return DSEEError(
            f"PEFT adapter '{path}' {what} {name}, which '{base_ref}' (a {base_config.model_type} model) has not: "
            f"pass --base-model with the model the adapter was trained on"
        )

    adapted = sorted(lora)
    named = TASK_TYPES[config.get("task_type")]
    if named:
        missing = absent(named, adapted)
        if missing:
            raise refuse(missing, "adapts")
        return named
    # a trained bias is saved as its wrapped projection's base_layer.bias
    wanted = adapted + sorted(n.replace(".base_layer.", ".") for n in others)
    own = task_of_model(base_config).kind
    missing = absent(own, wanted)
    if not missing:
        return own
    head = get_task(own).head
    fits = [k for k in TASK_TYPES.values() if k and get_task(k).head != head and not absent(k, wanted)]
    if len(fits) == 1:
        return fits[0]
    if fits:
        types = {kind: t for t, kind in TASK_TYPES.items()}
        raise DSEEError(
            f"PEFT adapter '{path}' records no task_type, and its modules fit '{base_ref}' as a "
            f"{' and as a '.join(fits)} model: set task_type in {ADAPTER_CONFIG} to the one it was trained as "
            f"({', '.join(types[k] for k in fits)})"
        )
    raise refuse(missing, "adapts" if missing in lora else "holds")


def _task(path: Path, config: dict, base_ref: str, base_path: str, lora: dict, others: dict):
    base_config = load_config(base_path)
    kind = _task_kind(path, config, base_ref, base_config, lora, others)
    spec = get_task(kind)
    tokenizer = load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else base_path)
    positions = getattr(tokenizer, "model_max_length", 0) or 512
    max_length = int(min(positions, get_spec(base_config.model_type).max_tokens(base_config)))
    if not spec.labelled:
        return Task(kind, max_length=max_length), tokenizer
    n = _num_labels(base_config, Task(kind), others)
    if n == 1:
        return Task(Regression.kind, max_length=max_length), tokenizer
    # PEFT saves no label names: the adapter directory's own config.json where the user saved one, else 0..n-1
    # (the label values of a GLUE-style table).
    names = [str(i) for i in range(n)]
    own = path / "config.json"
    if own.is_file():
        labels = json.loads(own.read_text()).get("id2label") or {}
        if len(labels) == n and not all(str(v).startswith("LABEL_") for v in labels.values()):
            names = [str(labels[str(i)]) for i in range(n)]
    return Task(kind, label_names=names, max_length=max_length), tokenizer


def _merged_weight(module, ab: dict, scale: float, name: str):
    """W + s B A of a plain Linear or Conv1D (its (in, out) layout kept), for LoRA outside the blocks."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if not isinstance(module, (nn.Linear, Conv1D)):
        raise DSEEError(
            f"the adapter has LoRA on {name}, a {type(module).__name__}: dsee-deploy reads LoRA on linear "
            f"projections only"
        )
    delta = scale * (ab["B"].float() @ ab["A"].float())  # (out, in)
    weight = module.weight.detach().float()
    delta = delta.T if isinstance(module, Conv1D) else delta
    if delta.shape != weight.shape:
        raise DSEEError(
            f"the adapter's LoRA on {name} is {tuple(delta.shape)}, the base's weight {tuple(weight.shape)}: pass "
            f"--base-model with the model the adapter was trained on"
        )
    return weight + delta


def load_peft_adapter(path: str | Path, base_model: str | None = None):
    """(model, tokenizer, info) as `checkpoint.load_dsee` returns them: the base model with the adapter's
    LoRA updates as DSEE updates (N = 0), not merged, and its trained head loaded."""
    import torch  # the 'tune' extra

    path = Path(path)
    config = read_adapter_config(path)
    base_ref, base_path = _base_model(path, config, base_model)
    tensors, metadata = _read_weights(path)
    lora, others = _split(tensors, path)
    alphas = module_alphas(path, config, sorted(lora))
    task, tokenizer = _task(path, config, str(base_ref), base_path, lora, others)
    model, loading = load_model(base_path, load_config(base_path, task), task)
    sha = base_weights_sha256(model, loading["missing_keys"])
    if metadata.get(BASE_SHA_KEY, sha) != sha:
        raise DSEEError(
            f"PEFT adapter '{path}' was written for base weights with sha256 {metadata[BASE_SHA_KEY][:12]}..., "
            f"but '{base_ref}' has {sha[:12]}...: pass --base-model with the original weights"
        )
    arch = get_spec(model.config.model_type)
    sites = _sites(model, arch)
    # LoRA on a projection outside the blocks (target_modules="all-linear" reaches BERT's pooler) has no DSEE
    # update to go to: it is merged now and kept as a trained tensor, as modules_to_save are.
    for name in sorted(set(lora) - set(sites)):
        ab = lora.pop(name)
        scale = scaling(config, alphas[name], ab["A"].shape[0])
        others[f"{name}.weight"] = _merged_weight(model.get_submodule(name), ab, scale, name)
    dsee = _dsee_config(config, lora, sites)
    inject_dsee(model, dsee, arch, init=False)
    with torch.no_grad():
        _check_lora_shapes(path, str(base_ref), model, lora)
        _load_updates(model, lora, sites, config, alphas, dsee)
        state = model.state_dict()
        _check_trained(path, str(base_ref), task, others, state)
        model.load_state_dict(others, strict=False)
    random = [k for k in loading["missing_keys"] if k in state and k not in others]
    if random:
        raise DSEEError(
            f"'{base_ref}' has no {random[0]}, which transformers initialises at random, and PEFT adapter '{path}' "
            f"does not hold it, so its outputs cannot be reproduced: train the adapter with that module in "
            f"modules_to_save"
        )
    # What trains when the adapter is tuned on, and what a checkpoint saved from it holds: the updates and
    # whatever the adapter trained besides (modules_to_save).
    trainable = sorted([n for n, _ in model.named_parameters() if ".updates." in n] + list(others))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    info = {
        "format_version": FORMAT_VERSION,
        "method": METHOD,
        "architecture": model.config.model_type,
        "dsee": dsee.to_dict(),
        "task": task.to_dict(),
        "base_model": {"name_or_path": str(base_ref), "sha256": sha},
        "peft": {"path": str(path), "r": config.get("r"), "lora_alpha": config.get("lora_alpha")},
        "trainable": trainable,
        "pruning": None,
    }
    return model.eval(), tokenizer, info


def _base_model(path: Path, config: dict, base_model: str | None) -> tuple[str, str]:
    """(the base model as named, its local directory): `base_model`, else the one the adapter records."""
    base_ref = base_model or config.get("base_model_name_or_path")
    if not base_ref:
        raise DSEEError(f"PEFT adapter '{path}' records no base model: pass --base-model (base_model=...)")
    try:
        base_path = resolve_model(base_ref)
        if not Path(base_path).is_dir():
            raise DSEEError(f"'{base_ref}' is a hub name and this machine reads local models only")
    except DSEEError as exc:
        raise DSEEError(
            f"PEFT adapter '{path}' needs its base model '{base_ref}', which cannot be loaded ({exc}): pass "
            f"--base-model (base_model=...) with a local copy of the weights it was trained on"
        ) from None
    return base_ref, base_path


def _read_weights(path: Path) -> tuple[dict, dict]:
    """({saved name: tensor}, safetensors metadata) of the adapter's weights file."""
    from safetensors import SafetensorError, safe_open  # the 'tune' extra

    try:
        with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise DSEEError(
            f"'{path / ADAPTER_WEIGHTS}' is not a readable safetensors file ({exc}): PEFT writes it with "
            f"save_pretrained (safe_serialization, the default); restore it"
        ) from exc
    return tensors, metadata


def _sites(model, arch) -> dict[str, list]:
    """Where each logical projection of each block lives, by module name: {name: [(target, part, parts)]}."""
    names = {id(m): n for n, m in model.named_modules()}
    sites: dict[str, list] = {}
    for block in arch.blocks(model):
        for target in TARGETS:
            site = arch.site(target)
            name = f"{names[id(block)]}.{site.path}"
            sites.setdefault(name, []).append((target, site.part, site.parts))
    return sites


def _dsee_config(config: dict, lora: dict, sites: dict[str, list]) -> DSEEConfig:
    """One DSEE config for every update: the targets the adapter adapts, its largest rank, its own scale."""
    targets = tuple(t for t in TARGETS if any(t in [s[0] for s in sites[m]] for m in lora))
    rank = max((ab["A"].shape[0] for ab in lora.values()), default=1)
    # the adapter's own scale, s = alpha / r
    reference = scaling(config, config.get("lora_alpha", 8), config.get("r", rank))
    return DSEEConfig(rank=rank, alpha=reference * rank, num_sparse=0, target_modules=targets)


def _check_lora_shapes(path: Path, base_ref: str, model, lora: dict) -> None:
    """Refuses a module whose lora_A and lora_B do not fit each other and the base projection they update."""
    for name, ab in sorted(lora.items()):
        a, b = ab["A"], ab["B"]  # (r, in), (out, r)
        out_f, in_f = model.get_submodule(name).out_in_weight.shape
        if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
            raise DSEEError(
                f"PEFT adapter '{path}' does not fit '{base_ref}': {name} has lora_A {tuple(a.shape)} and "
                f"lora_B {tuple(b.shape)}, the base projection is {out_f} x {in_f}: pass --base-model with "
                f"the model the adapter was trained on"
            )


def _load_updates(
    model, lora: dict, sites: dict[str, list], config: dict, alphas: dict, dsee: DSEEConfig
) -> None:
    """Each module's lora_A and lora_B into the DSEE updates of its projections, zero-padded to the largest
    rank, B rescaled to the one DSEE scale (see the module's docstring)."""
    for name, ab in sorted(lora.items()):
        a, b = ab["A"].float(), ab["B"].float()  # (r, in), (out, r)
        layer = model.get_submodule(name)
        out_f = layer.out_in_weight.shape[0]
        r = a.shape[0]
        b = b * (scaling(config, alphas[name], r) / dsee.scaling)
        for target, part, parts in sites[name]:
            update = layer.updates[target]
            rows = slice(part * out_f // parts, (part + 1) * out_f // parts)
            update.lora_A.zero_()[:r] = a
            update.lora_B.zero_()[:, :r] = b[rows]


def _check_trained(path: Path, base_ref: str, task, others: dict, state: dict) -> None:
    """Refuses a trained tensor the model (its `state`) has not, or has in another shape or kind; renames in
    `others` a trained bias to the name it has here."""
    # A bias PEFT trained (bias="all" or "lora_only") is saved as its wrapped projection's base_layer.bias;
    # here that projection is a DSEE layer (the same name) or, outside the blocks, a plain one again.
    for name in [n for n in others if n not in state]:
        plain = name.replace(".base_layer.", ".")
        if plain in state:
            others[plain] = others.pop(name)
    unknown = sorted(set(others) - set(state))
    if unknown:
        raise DSEEError(
            f"PEFT adapter '{path}' holds {unknown[0]}, which '{base_ref}' (as a {task.kind} model) has not: "
            f"pass --base-model with the model the adapter was trained on"
        )
    for name, tensor in others.items():
        if tensor.shape != state[name].shape:
            raise DSEEError(
                f"PEFT adapter '{path}' has {name} of shape {tuple(tensor.shape)}, '{base_ref}' expects "
                f"{tuple(state[name].shape)}: pass --base-model with the model the adapter was trained on"
            )
        # load_state_dict would cast silently (int64 weights to float)
        if tensor.is_floating_point() != state[name].is_floating_point():
            raise DSEEError(
                f"'{path / ADAPTER_WEIGHTS}' holds {name} as {_dtype(tensor)}, where '{base_ref}' has "
                f"{_dtype(state[name])}: save the adapter again from the trained PEFT model"
            )


# The PEFT task type of each task an adapter can be written for.
