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

import copy
import json
import math
import re
import time
from pathlib import Path

from ..errors import DSEEError, require_extra

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's prefix of every saved tensor name
BASE_SHA_KEY = "dsee_base_sha256"  # safetensors metadata: the base weights' sha256, where to_peft wrote it
METHOD = "peft-lora"

# PEFT task types and the task of the engine they give; None: the base model's own task.
TASK_TYPES = {
    "SEQ_CLS": "classification",
    "CAUSAL_LM": "causal-lm",
    "FEATURE_EXTRACTION": "feature-extraction",
    None: None,
}

# adapter_config.json settings that change what the adapter computes in ways a LoRA update of the base weights
# cannot hold: (key, whether the value is in use, what the refusal calls it).
UNSUPPORTED = (
    ("use_dora", bool, "DoRA (use_dora=true)"),
    ("lora_bias", bool, "a LoRA bias (lora_bias=true)"),
    ("layer_replication", bool, "layer replication"),
    ("target_parameters", bool, "LoRA on parameters (target_parameters)"),
    ("trainable_token_indices", bool, "trainable tokens (trainable_token_indices)"),
    ("alora_invocation_tokens", bool, "activated LoRA (alora_invocation_tokens)"),
    ("use_qalora", bool, "QA-LoRA (use_qalora=true)"),
    ("arrow_config", bool, "Arrow routing (arrow_config)"),
)
# Initialisations that change the base weights (the saved adapter is relative to weights it does not hold).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "eva")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pattern_of(check):
    return lambda value: value is None or (isinstance(value, dict) and all(map(check, value.values())))


# The adapter_config.json fields this reader computes with, as PEFT's LoraConfig types them: (key, check of the
# value where the key is present, what is expected). An absent key is LoraConfig's default.
FIELDS = (
    ("r", _positive_int, "a positive integer (the rank)"),
    ("lora_alpha", _number, "a number"),
    ("use_rslora", lambda value: value is None or isinstance(value, bool), "true or false"),
    ("alpha_pattern", _pattern_of(_number), "an object of {regex: number}"),
    ("rank_pattern", _pattern_of(_positive_int), "an object of {regex: positive integer}"),
)


def is_peft_adapter(path: str | Path) -> bool:
    """Whether `path` is a PEFT adapter directory (and not a dsee-tune checkpoint)."""
    from ..checkpoint import CONFIG_FILE

    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / CONFIG_FILE).is_file()


def recorded_base(path: str | Path) -> str | None:
    try:
        return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json, refused in one line where it is not a LoRA dsee-deploy can represent exactly."""
    where = path / ADAPTER_CONFIG
    try:
        config = json.loads(where.read_text())
    except (OSError, ValueError) as exc:
        raise DSEEError(f"'{where}' is not readable JSON ({exc}): restore the adapter directory") from exc
    if not isinstance(config, dict):
        raise DSEEError(
            f"'{where}' holds a JSON {type(config).__name__}, expected an object (the LoraConfig PEFT's "
            f"save_pretrained writes): restore the adapter directory"
        )
    kind = config.get("peft_type")
    if kind != "LORA":
        raise DSEEError(
            f"'{path}' is a PEFT {kind} adapter: dsee-deploy reads LoRA adapters (peft_type LORA) only"
        )
    for key, in_use, name in UNSUPPORTED:
        value = config.get(key)
        if value is not None and in_use(value):
            raise DSEEError(
                f"'{path}' uses {name.format(value)}, which a low-rank update of the base weights cannot hold "
                f"exactly: merge it with PEFT's merge_and_unload(), save_pretrained the result and pass that "
                f"directory instead"
            )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise DSEEError(
            f"'{path}' was initialised with init_lora_weights='{init}', which changes the base weights: save it "
            f"as a plain LoRA with PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) first"
        )
    if config.get("task_type") not in TASK_TYPES:
        raise DSEEError(
            f"'{path}' is a PEFT adapter for task {config.get('task_type')}: dsee-deploy serves "
            f"{', '.join(t for t in TASK_TYPES if t)} (or none: the base model's task)"
        )
    for key, valid, expected in FIELDS:
        if key in config and not valid(config[key]):
            raise DSEEError(
                f"'{where}' has {key} = {json.dumps(config[key])}, expected {expected}: correct the field, or "
                f"save the adapter again with PEFT's save_pretrained"
            )
    return config


# How long alpha_pattern's keys may take to match all the adapted modules' names, together. PEFT matches them
# with `re`, which backtracks exponentially on keys like '(.|.)*!' (2^n steps on a name of n characters: days on
# bert.encoder.layer.0.attention.self.query); `regex` (a dependency of transformers) returns what `re` returns,
# decides most such keys at once, and stops where its timeout runs out. A sane key takes microseconds a name,
# so a large model's thousands of matches stay far inside this bound even on a busy machine.
PATTERN_SECONDS = 1.0


def module_alphas(path: Path, config: dict, names) -> dict[str, float]:
    r"""{module name: alpha} as PEFT picks it (peft.utils.other.get_pattern_key): the value of the first
    `alpha_pattern` key, in file order, for which `re.match(rf"(.*\.)?({key})$", name)` matches, else
    `lora_alpha`; with a bounded cost, refused in one line where a key is not a regex or backtracks past
    PATTERN_SECONDS. (`rank_pattern` is not matched: each module's rank is its tensors' first dimension.)"""
    default = config.get("lora_alpha", 8)
    keys = list((config.get("alpha_pattern") or {}).items())
    if not keys:
        return {name: default for name in names}
    require_extra("tune", "regex")
    import regex

    compiled = []
    for key, value in keys:
        # PEFT's own pattern string: `re` must accept it (PEFT's loader would raise on it), and `regex`
        # (VERSION0, its default, is `re`'s syntax and semantics) then matches it.
        pattern = rf"(.*\.)?({key})$"
        try:
            re.compile(pattern)
            compiled.append((key, value, regex.compile(pattern)))
        except (re.error, regex.error) as exc:
            raise DSEEError(
                f"PEFT adapter '{path}' has alpha_pattern key '{key}', which is not a regex ({exc.msg}): fix it in "
                f"{ADAPTER_CONFIG} (a key is a Python regex matched against a module name's dotted tail, e.g. "
                f"'query' or 'layer\\.1\\..*')"
            ) from None
    deadline = time.monotonic() + PATTERN_SECONDS
    alphas = {}
    for name in names:
        alphas[name] = default
        for key, value, pattern in compiled:
            try:  # once the budget is spent, a key gets 1 ms: a sane one needs microseconds
                found = pattern.match(name, timeout=max(deadline - time.monotonic(), 1e-3))
            except TimeoutError:
                raise DSEEError(
                    f"PEFT adapter '{path}' has alpha_pattern key '{key}', which did not finish matching {name} "
                    f"within {PATTERN_SECONDS:g} s (it backtracks catastrophically; PEFT's loader would hang on it): "
                    f"rewrite the key in {ADAPTER_CONFIG} without nested or overlapping repetition, e.g. "
                    f"'{name.rsplit('.', 1)[-1]}'"
                ) from None
            if found:
                alphas[name] = value
                break
    return alphas


def scaling(config: dict, alpha: float, rank: int) -> float:
    """PEFT's scale of an update of rank `rank`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


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
    from ..tasks import get_task, task_of_model

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
    from ..data import Task
    from ..models import load_config, load_tokenizer
    from ..tasks import Regression, get_task

    base_config = load_config(base_path)
    kind = _task_kind(path, config, base_ref, base_config, lora, others)
    spec = get_task(kind)
    tokenizer = load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else base_path)
    positions = getattr(tokenizer, "model_max_length", 0) or 512
    from ..architectures import get_spec

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
    import torch
    from safetensors import SafetensorError, safe_open

    from ..architectures import TARGETS, get_spec
    from ..checkpoint import FORMAT_VERSION
    from ..models import base_weights_sha256, load_config, load_model, resolve_model
    from ..tuning import DSEEConfig, inject_dsee

    path = Path(path)
    config = read_adapter_config(path)
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
    try:
        with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise DSEEError(
            f"'{path / ADAPTER_WEIGHTS}' is not a readable safetensors file ({exc}): PEFT writes it with "
            f"save_pretrained (safe_serialization, the default); restore it"
        ) from exc
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

    # Where each logical projection of each block lives, by module name: {name: [(target, part, parts)]}.
    names = {id(m): n for n, m in model.named_modules()}
    sites: dict[str, list] = {}
    for block in arch.blocks(model):
        for target in TARGETS:
            site = arch.site(target)
            name = f"{names[id(block)]}.{site.path}"
            sites.setdefault(name, []).append((target, site.part, site.parts))
    # LoRA on a projection outside the blocks (target_modules="all-linear" reaches BERT's pooler) has no DSEE
    # update to go to: it is merged now and kept as a trained tensor, as modules_to_save are.
    for name in sorted(set(lora) - set(sites)):
        ab = lora.pop(name)
        scale = scaling(config, alphas[name], ab["A"].shape[0])
        others[f"{name}.weight"] = _merged_weight(model.get_submodule(name), ab, scale, name)
    targets = tuple(t for t in TARGETS if any(t in [s[0] for s in sites[m]] for m in lora))
    rank = max((ab["A"].shape[0] for ab in lora.values()), default=1)
    # the adapter's own scale, s = alpha / r
    reference = scaling(config, config.get("lora_alpha", 8), config.get("r", rank))
    dsee = DSEEConfig(rank=rank, alpha=reference * rank, num_sparse=0, target_modules=targets)
    inject_dsee(model, dsee, arch, init=False)

    with torch.no_grad():
        for name, ab in sorted(lora.items()):
            a, b = ab["A"].float(), ab["B"].float()  # (r, in), (out, r)
            layer = model.get_submodule(name)
            out_f, in_f = layer.out_in_weight.shape
            if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
                raise DSEEError(
                    f"PEFT adapter '{path}' does not fit '{base_ref}': {name} has lora_A {tuple(a.shape)} and "
                    f"lora_B {tuple(b.shape)}, the base projection is {out_f} x {in_f}: pass --base-model with "
                    f"the model the adapter was trained on"
                )
            r = a.shape[0]
            b = b * (scaling(config, alphas[name], r) / dsee.scaling)
            for target, part, parts in sites[name]:
                update = layer.updates[target]
                rows = slice(part * out_f // parts, (part + 1) * out_f // parts)
                update.lora_A.zero_()[:r] = a
                update.lora_B.zero_()[:, :r] = b[rows]
        state = model.state_dict()
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


# The PEFT task type of each task an adapter can be written for.
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def to_peft(
    checkpoint: str | Path, output: str | Path, base_model: str | None = None, overwrite: bool = False
):
    """Write DSEE checkpoint `checkpoint` as a PEFT LoRA adapter directory `output` (with its tokenizer) that
    `peft.PeftModel.from_pretrained(base, output)` loads to the same outputs. Refused where PEFT cannot hold
    the checkpoint: sparse entries, pruning. Returns the output path."""
    import torch

    from ..checkpoint import MASKS_FILE, load_dsee
    from ..models import load_model, resolve_model
    from ..outputs import Output
    from ..tuning import DSEEConfig, dsee_layers

    require_extra("peft", "peft")
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from ..data import Task

    ckpt = Path(checkpoint)
    target = Output(output, overwrite, {"the checkpoint": ckpt})
    model, tokenizer, info = load_dsee(ckpt, base_model)
    if info["pruning"] or (ckpt / MASKS_FILE).is_file():
        raise DSEEError(
            f"checkpoint '{ckpt}' is pruned, and a PEFT adapter applies to the unpruned base model: export the "
            f"pruned model with dsee-export, or load it with dsee_deploy.load_merged"
        )
    sparse = sum(u.sparse_values.numel() for _, layer in dsee_layers(model) for u in layer.updates.values())
    if sparse:
        raise DSEEError(
            f"checkpoint '{ckpt}' has {sparse:,} sparse entries, which a PEFT LoRA adapter cannot hold: tune with "
            f"--num-sparse 0 for a PEFT adapter, or use the merged model (dsee_deploy.load_merged, dsee-export)"
        )
    biases = [n for n in info["trainable"] if ".base_layer." in n]
    if biases:
        raise DSEEError(
            f"checkpoint '{ckpt}' trained base biases ({biases[0]}, ...), which this writer does not map back onto "
            f"PEFT's bias setting: use the merged model (dsee_deploy.load_merged, dsee-export)"
        )
    task = Task.from_dict(info["task"])
    if task.kind not in PEFT_TASK_TYPES:
        raise DSEEError(
            f"checkpoint '{ckpt}' is a {task.kind} model; PEFT adapters are written for "
            f"{', '.join(PEFT_TASK_TYPES)} checkpoints"
        )
    dsee = DSEEConfig.from_dict(info["dsee"])
    # One PEFT module per wrapped projection: a packed one (GPT-2's c_attn) with k DSEE updates becomes one LoRA
    # of rank k r, A stacked (k r, in) and B block-diagonal (out, k r), which multiplies out to the same blocks.
    modules = {}
    for name, layer in dsee_layers(model):
        out_f, in_f = layer.out_in_weight.shape
        updates = list(layer.updates.values())
        a = torch.cat([u.lora_A.detach() for u in updates])  # (k r, in)
        b = torch.zeros(out_f, a.shape[0])  # (out, k r)
        for i, u in enumerate(updates):
            b[u.rows, i * dsee.rank : (i + 1) * dsee.rank] = u.lora_B.detach()
        modules[name] = (a, b)
    # What else trained (the task head, a pooler the base lacked), as PEFT's modules_to_save: a head by its
    # top-level name (PEFT wraps "classifier" whole; wrapping its children too would nest two wrappers).
    prefix = model.base_model_prefix + "."
    head = sorted(
        {
            n.rsplit(".", 1)[0] if n.startswith(prefix) else n.split(".", 1)[0]
            for n in info["trainable"]
            if ".updates." not in n
        }
    )
    base_ref = info["base_model"]["name_or_path"]
    base_path = resolve_model(base_model or base_ref)
    fresh, _ = load_model(base_path, copy.deepcopy(model.config), task)  # the model's own labels and task
    trained = {n: t for n, t in model.state_dict().items() if n in set(info["trainable"])}
    fresh.load_state_dict(trained, strict=False)
    # Exact module names, escaped: PEFT matches pattern keys as regexes on the names' dotted tails.
    wider = {re.escape(n): a.shape[0] for n, (a, _) in modules.items() if a.shape[0] != dsee.rank}
    lora = LoraConfig(
        r=dsee.rank,
        lora_alpha=dsee.alpha,
        target_modules=sorted(modules),
        rank_pattern=wider,
        alpha_pattern={k: dsee.scaling * r for k, r in wider.items()},
        fan_in_fan_out=any(layer.fan_in_fan_out for _, layer in dsee_layers(model)),
        modules_to_save=head or None,
        task_type=PEFT_TASK_TYPES[task.kind],
        base_model_name_or_path=str(base_ref),
        lora_dropout=0.0,
        bias="none",
    )
    peft_model = get_peft_model(fresh, lora)
    with torch.no_grad():
        for name, (a, b) in modules.items():
            layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    with target as out:
        peft_model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        # The base weights' hash, for load_peft_adapter to check (PEFT ignores safetensors metadata).
        weights = out / ADAPTER_WEIGHTS
        tensors = load_file(str(weights))
        save_file(
            tensors, str(weights), metadata={"format": "pt", BASE_SHA_KEY: info["base_model"]["sha256"]}
        )
    return Path(output)
