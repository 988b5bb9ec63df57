"""A PEFT LoRA adapter's files and its adapter_config.json, read and checked without `peft` installed (the
format is two files); checkpoint.peft_adapter loads the adapter as a DSEE model."""

from __future__ import annotations

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
    from .store import CONFIG_FILE

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
