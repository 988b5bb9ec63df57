"""Pruning a DSEE model and recording exactly what was pruned (pruning.json)."""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ArchSpec, get_module, get_spec
from ..distributed import from_main, is_main
from ..errors import DSEEError
from ..flops import encoder_flops
from ..speed.latency import latency_model
from ..surgery import apply_structure
from ..tasks import task_of_model
from ..tuning.layer import projection_shape
from .config import PruneConfig
from .gates import gated, gates_for, structure_sizes
from .importance import structured_scores
from .masks import apply_masks, choose_masks
from .record import PruningRecord, SpeedTarget
from .search import aim_for, search_layout
from .select import keep_structured, normalise_per_layer


def block_parameters(model: nn.Module, spec: ArchSpec) -> tuple[int, int]:
    """(parameters, non-zero parameters) of the encoder blocks, DSEE updates excluded."""
    total = nonzero = 0
    for block in spec.blocks(model):
        for name, p in block.named_parameters():
            if ".updates." in f".{name}":
                continue
            total += p.numel()
            nonzero += int((p != 0).sum())
    return total, nonzero


def prune_model(
    model: nn.Module,
    config: PruneConfig,
    batches=None,
    previous: PruningRecord | None = None,
    seq_len: int = 128,
    layout: list[dict] | None = None,
    planned: SpeedTarget | None = None,
) -> tuple[PruningRecord, dict]:
    """Prune `model` in place (structured: physically; unstructured: fixed masks). Returns the pruning record
    for pruning.json and the masks. `previous` is the record of a checkpoint that was pruned before; `layout`
    ({"kept_heads", "kept_ffn"} per layer) replaces the importance ranking where the structure is given, as
    `choose_layout` chose it (`planned`: its speed target)."""
    spec = get_spec(model.config.model_type)
    if previous:
        _refuse_twice(config, previous)
        n_layers, n_heads, width = len(previous.layers), previous.num_heads, previous.ffn_width
        dense_params = previous.parameters["encoder_dense"]
        layers = [{"kept_heads": e["kept_heads"], "kept_ffn": e["kept_ffn"]} for e in previous.layers]
    else:
        n_layers, n_heads, width = structure_sizes(model, spec)
        dense_params = block_parameters(model, spec)[0]
        layers = [
            {"kept_heads": list(range(n_heads)), "kept_ffn": list(range(width))} for _ in range(n_layers)
        ]

    target = None
    if layout is not None:
        layers = [{"kept_heads": list(e["kept_heads"]), "kept_ffn": list(e["kept_ffn"])} for e in layout]
        target = planned
        shrink_checked(model, layers, spec, n_heads, width)
    elif config.structured:
        layers, target = choose_layout(model, config, batches)
        shrink_checked(model, layers, spec, n_heads, width)

    masks: dict = {}
    if config.unstructured:
        masks = from_main(
            choose_masks(
                model,
                spec,
                config.unstructured,
                config.unstructured_importance(),
                config.scope,
                config.unstructured_modules,
            )
        )
        apply_masks(model, spec, masks)
    for i, entry in enumerate(layers):
        entry["sparsity"] = {
            name.rsplit(".", 1)[1]: round(1 - float(m.float().mean()), 6)
            for name, m in masks.items()
            if name.startswith(f"layer.{i}.")
        }
        if previous:
            entry["sparsity"] = entry["sparsity"] or previous.layers[i].get("sparsity", {})
    hidden = spec.hidden_size(model.config)
    record = PruningRecord(
        config=config.to_dict() if not previous else {**previous.config, **_changed(config)},
        structured=bool(config.structured or (previous and previous.structured)),
        unstructured=bool(config.unstructured or (previous and previous.unstructured)),
        importance=_importance(config, previous),
        num_layers=n_layers,
        num_heads=n_heads,
        head_size=hidden // n_heads,
        hidden_size=hidden,
        ffn_width=width,
        layers=layers,
        parameters={},
        flops={},
        target=target or (previous.target if previous else None),
    )
    _count(record, model, spec, dense_params, seq_len)
    return record, masks


def _refuse_twice(config: PruneConfig, previous: PruningRecord) -> None:
    if config.structured and previous.structured:
        raise DSEEError(
            "this checkpoint's heads / FFN neurons were already pruned: prune the unpruned checkpoint once, "
            "with the combined ratios"
        )
    if config.unstructured and previous.unstructured:
        raise DSEEError(
            "this checkpoint already has unstructured masks: prune the unpruned checkpoint once, with the "
            "combined ratio"
        )


def _importance(config: PruneConfig, previous: PruningRecord | None) -> dict:
    """The scores each kind of pruning used: this run's, else the earlier pruning's."""
    before = previous.importance if previous else {}
    return {
        "structured": config.structured_importance() if config.structured else before.get("structured"),
        "unstructured": config.unstructured_importance()
        if config.unstructured
        else before.get("unstructured"),
    }


def _count(record: PruningRecord, model: nn.Module, spec: ArchSpec, dense_params: int, seq_len: int) -> None:
    """The record's parameters and FLOPs (at `seq_len`), dense and pruned."""
    n, heads, width = record.num_layers, record.num_heads, record.ffn_width
    pruned_params, nonzero = block_parameters(model, spec)
    dense_flops = encoder_flops(record.hidden_size, record.head_size, [heads] * n, [width] * n, seq_len)
    pruned_flops = encoder_flops(record.hidden_size, record.head_size, *record.kept, seq_len)
    record.parameters = {
        "encoder_dense": dense_params,
        "encoder_pruned": pruned_params,
        "encoder_nonzero": nonzero,
    }
    record.flops = {
        "seq_len": seq_len,
        "encoder_dense": dense_flops,
        "encoder_pruned": pruned_flops,
        "encoder_ratio": pruned_flops / dense_flops,
    }


def choose_layout(
    model: nn.Module, config: PruneConfig, batches=None, log=print, output=None
) -> tuple[list[dict], SpeedTarget | None]:
    """What structured pruning of the (unshrunk) `model` keeps, {"kept_heads", "kept_ffn"} per layer, and for a
    speed target its record (target, predicted speed-up, the latency model it was predicted by). `output`: what
    fisher scores see of a bare encoder (structured_scores)."""
    spec = get_spec(model.config.model_type)
    importance = config.structured_importance()
    # Under torchrun every process scores its own copy; all must cut the same heads: the main one decides.
    head_scores, ffn_scores = from_main(structured_scores(model, importance, batches, spec, output))
    if config.target_speedup:
        # The search weighs heads against FFN neurons. Raw scores do not compare: the sum of |dL/dm| over a
        # layer's 1536 neurons dwarfs that over its 12 heads (on MiniLM SST-2 raw taylor scores cut 68 of 72
        # heads for a 2x target). So each layer's scores are normalised as the global ranking normalises them,
        # then the heads are scaled to a total of --head-share and the neurons to the rest (by default all heads
        # are worth as much as all neurons); within a kind the layers and units keep their relative importance.
        # Fisher scores are one quantity (the expected increase of the loss when a unit goes) for heads, neurons
        # and every layer: they are compared as they are.
        if importance == "taylor":
            head_scores, ffn_scores = normalise_per_layer(head_scores), normalise_per_layer(ffn_scores)
        if importance != "fisher":
            head_scores = config.head_share * head_scores / head_scores.sum().clamp_min(1e-12)
            ffn_scores = (1 - config.head_share) * ffn_scores / ffn_scores.sum().clamp_min(1e-12)
        # The latency model is measured (or read from the cache) once, by the main process.
        latency = from_main(latency_for(model, config, log) if is_main() else None)
        aim = aim_for(config.target_speedup, latency, config.min_heads, config.min_ffn)
        layers, predicted = search_layout(
            head_scores, ffn_scores, latency, aim, config.min_heads, config.min_ffn
        )
        kept = ([len(e["kept_heads"]) for e in layers], [len(e["kept_ffn"]) for e in layers])
        return layers, SpeedTarget(
            target_speedup=config.target_speedup,
            predicted_speedup=round(predicted, 4),
            latency_model=latency.key,
            aimed_speedup=round(aim, 4),
            checked_engines=len(latency.checks),  # the model's own error, in the aim where it has checks
            predicted_ms=round(latency.predict_ms(*kept), 4),
            dense_ms=round(latency.dense_ms, 4),
        )
    if importance == "taylor" and config.scope == "global":
        head_scores, ffn_scores = normalise_per_layer(head_scores), normalise_per_layer(ffn_scores)
    kept_heads = keep_structured(head_scores, config.heads, config.scope, config.min_heads)
    kept_ffn = keep_structured(ffn_scores, config.ffn, config.scope, config.min_ffn)
    return [{"kept_heads": h, "kept_ffn": f} for h, f in zip(kept_heads, kept_ffn, strict=True)], None


def latency_for(model: nn.Module, config: PruneConfig, log=print):
    """The latency model of `model`'s geometry and task for the engine `config`'s speed target is about."""
    model_config = model.config.__class__.from_dict(model.config.to_dict())
    model_config.architectures = [type(model).__name__]  # what task_of_model reads the head from
    return latency_model(model_config, task_of_model(model_config), config.speed, log=log)


def shrink_checked(model: nn.Module, layers: list[dict], spec: ArchSpec, n_heads: int, width: int) -> None:
    """Physically remove what `layers` drops, then check the result against the masked (gated) dense model on a
    fixed input, and the new FFN widths, before anything else uses it."""
    torch.manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    probe = {
        "input_ids": torch.randint(5, vocab, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    probe = {k: v.to(next(model.parameters()).device) for k, v in probe.items()}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        with gated(model, *gates_for(layers, n_heads, width), spec):
            expected = _output(model(**probe))
        apply_structure(model, layers, spec)
        got = _output(model(**probe))
    model.train(was_training)
    for i, (block, entry) in enumerate(zip(spec.blocks(model), layers, strict=True)):
        out_f = projection_shape(get_module(block, spec.ffn_in))[0]
        if out_f != len(entry["kept_ffn"]):
            raise DSEEError(
                f"surgery left layer {i} with {out_f} FFN neurons, not {len(entry['kept_ffn'])}: a bug"
            )
    # 1e-4: fp32 sums over fewer terms in a different order, through up to a few dozen layers
    diff = (got - expected).abs().max().item()
    if not diff <= 1e-4:
        raise DSEEError(
            f"the physically pruned model differs from the masked one by {diff:.2e} (tolerance 1e-4): a surgery "
            f"bug for {model.config.model_type}; please report it with this checkpoint's pruning.json"
        )


def _output(out):
    """A task model's logits, or a bare encoder's token states (sentence embeddings are pooled from them)."""
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _changed(config: PruneConfig) -> dict:
    """The fields a second, compatible pruning adds to the first one's config."""
    defaults = PruneConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != defaults[k]}


def format_report(record: PruningRecord) -> str:
    """pruning.json as a table: per-layer heads, FFN width and sparsity, then parameters and FLOPs."""
    lines = [
        f"{'layer':>5} {'heads':>7} {'FFN':>11} {'unstructured sparsity':<40}",
    ]
    for i, e in enumerate(record.layers):
        sparsity = ", ".join(f"{k} {100 * v:.0f}%" for k, v in e.get("sparsity", {}).items()) or "-"
        lines.append(
            f"{i:>5} {len(e['kept_heads']):>3}/{record.num_heads:<3} {len(e['kept_ffn']):>5}/{record.ffn_width:<5} "
            f"{sparsity:<40}"
        )
    p, f = record.parameters, record.flops
    lines += [
        "",
        f"encoder parameters: {p['encoder_pruned']:,} of {p['encoder_dense']:,} dense "
        f"({100 * p['encoder_pruned'] / p['encoder_dense']:.1f} %), {p['encoder_nonzero']:,} non-zero "
        f"({100 * p['encoder_nonzero'] / p['encoder_dense']:.1f} %)",
        f"encoder FLOPs at sequence length {f['seq_len']}: {f['encoder_pruned'] / 1e9:.3f} G of "
        f"{f['encoder_dense'] / 1e9:.3f} G dense ({100 * f['encoder_ratio']:.1f} %; dense kernels: unstructured "
        f"zeros do not count)",
    ]
    if record.target:
        lines.append(record.target.describe())
    return "\n".join(lines)
