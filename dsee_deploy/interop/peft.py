"""Writing a checkpoint as a PEFT LoRA adapter (to_peft), with `peft` itself, so that PEFT's own loader reads
what it wrote. Reading adapters: checkpoint.peft_adapter."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from ..checkpoint import MASKS_FILE, load_dsee
from ..checkpoint.peft_config import ADAPTER_WEIGHTS, BASE_SHA_KEY
from ..data import Task
from ..errors import DSEEError, require_extra
from ..models import load_model, resolve_model
from ..outputs import Output
from ..tuning import DSEEConfig, dsee_layers

PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def to_peft(
    checkpoint: str | Path, output: str | Path, base_model: str | None = None, overwrite: bool = False
):
    """Write DSEE checkpoint `checkpoint` as a PEFT LoRA adapter directory `output` (with its tokenizer) that
    `peft.PeftModel.from_pretrained(base, output)` loads to the same outputs. Refused where PEFT cannot hold
    the checkpoint: sparse entries, pruning. Returns the output path."""
    import torch  # the 'tune' extra

    require_extra("peft", "peft")
    from peft import LoraConfig, get_peft_model  # the 'peft' extra
    from safetensors.torch import load_file, save_file  # the 'tune' extra

    ckpt = Path(checkpoint)
    target = Output(output, overwrite, {"the checkpoint": ckpt})
    model, tokenizer, info = load_dsee(ckpt, base_model)
    task = _peft_task(ckpt, model, info)
    dsee = DSEEConfig.from_dict(info["dsee"])
    modules = _lora_modules(model, dsee)
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
        modules_to_save=_modules_to_save(model, info) or None,
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


def _peft_task(ckpt: Path, model, info: dict) -> Task:
    """The checkpoint's task, once it is known that a PEFT LoRA adapter can hold the checkpoint."""
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
    return task


def _lora_modules(model, dsee: DSEEConfig) -> dict:
    """{module name: (A, B)}, one PEFT module per wrapped projection: a packed one (GPT-2's c_attn) with k DSEE
    updates becomes one LoRA of rank k r, A stacked (k r, in) and B block-diagonal (out, k r), which multiplies
    out to the same blocks."""
    import torch  # the 'tune' extra

    modules = {}
    for name, layer in dsee_layers(model):
        out_f, in_f = layer.out_in_weight.shape
        updates = list(layer.updates.values())
        a = torch.cat([u.lora_A.detach() for u in updates])  # (k r, in)
        b = torch.zeros(out_f, a.shape[0])  # (out, k r)
        for i, u in enumerate(updates):
            b[u.rows, i * dsee.rank : (i + 1) * dsee.rank] = u.lora_B.detach()
        modules[name] = (a, b)
    return modules


def _modules_to_save(model, info: dict) -> list[str]:
    """What else trained (the task head, a pooler the base lacked), as PEFT's modules_to_save: a head by its
    top-level name (PEFT wraps "classifier" whole; wrapping its children too would nest two wrappers)."""
    prefix = model.base_model_prefix + "."
    return sorted(
        {
            n.rsplit(".", 1)[0] if n.startswith(prefix) else n.split(".", 1)[0]
            for n in info["trainable"]
            if ".updates." not in n
        }
    )
