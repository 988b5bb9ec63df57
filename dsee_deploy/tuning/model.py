"""Finding the targeted projections of a model, wrapping them in DSEE layers, merging and unwrapping."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from ..architectures import TARGETS, ArchSpec, get_module, get_spec, set_module
from ..errors import DSEEError
from .config import DSEEConfig
from .layer import DSEELayer
from .support import choose_support


def _generator(seed: int, name: str) -> torch.Generator:
    # One generator per update, seeded from the run seed and the update's name: the same seed gives the same
    # A and Ω whatever order modules are visited in.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def inject_dsee(
    model: nn.Module, config: DSEEConfig, spec: ArchSpec | None = None, init: bool = True
) -> nn.Module:
    """Wrap every targeted projection of every block in a DSEELayer, in place.

    With `init`, A is initialised and the sparse support chosen (grebsmo, magnitude or random) from the
    pre-trained weights; without it, everything is left zero for a checkpoint's tensors to be loaded into.
    Freezes the base model; the caller decides what else trains (the task head).
    """
    spec = spec or get_spec(model.config.model_type)
    config = config.for_architecture(spec)
    for p in model.base_model.parameters():
        p.requires_grad_(False)
    for i, block in enumerate(spec.blocks(model)):
        for target in config.target_modules:
            site = spec.site(target)
            layer = get_module(block, site.path)
            if not isinstance(layer, DSEELayer):
                layer = DSEELayer(layer)
                set_module(block, site.path, layer)
            out_f, in_f = layer.out_in_weight.shape
            block_rows = out_f // site.parts
            if init and config.num_sparse > block_rows * in_f:
                raise DSEEError(
                    f"--num-sparse {config.num_sparse} is more than the {block_rows * in_f:,} entries of the "
                    f"{target} matrix ({block_rows} x {in_f}) of this {model.config.model_type}: pass at most "
                    f"{block_rows * in_f}"
                )
            rows = slice(site.part * block_rows, (site.part + 1) * block_rows)
            update = layer.add_update(target, rows, config.rank, config.alpha, config.num_sparse)
            if init:
                gen = _generator(config.seed, f"{i}.{target}")
                update.reset_parameters(gen)
                update.sparse_indices.copy_(
                    choose_support(
                        layer.out_in_weight[rows],
                        config.num_sparse,
                        config.sparse_init,
                        gen,
                        config.grebsmo_rank,
                        config.grebsmo_threshold,
                    )
                )
    return model


@torch.no_grad()
def add_sparse(model: nn.Module, config: DSEEConfig, spec: ArchSpec | None = None) -> int:
    """Give every update that has no sparse entries (a LoRA adapter's) config.num_sparse of them, at zero,
    on the support inject_dsee would choose: the model's function is unchanged, and S trains from here on.
    Returns the number of updates given a support."""
    spec = spec or get_spec(model.config.model_type)
    given = 0
    for i, block in enumerate(spec.blocks(model)):
        for target in _targets_of(block, spec):
            layer = get_module(block, spec.site(target).path)
            update = layer.updates[target]
            if update.sparse_values.numel() or not config.num_sparse:
                continue
            weight = layer.out_in_weight[update.rows]
            count = min(config.num_sparse, weight.numel())
            gen = _generator(config.seed, f"{i}.{target}")
            indices = choose_support(
                weight, count, config.sparse_init, gen, config.grebsmo_rank, config.grebsmo_threshold
            )
            update.set_sparse(indices, torch.zeros(count))
            given += 1
    return given


@torch.no_grad()
def grow_rank(model: nn.Module, config: DSEEConfig, rank: int, seed: int) -> DSEEConfig:
    """Grow every update of `model` from config.rank to `rank`: A gets new rows (initialised as inject_dsee
    does, from `seed`), B new columns at zero, and alpha grows with the rank so that the scale alpha / r stays. The model's
    function is unchanged; the new directions train from here on. Returns the config the checkpoint records."""
    if rank < config.rank:
        raise DSEEError(
            f"--retune-rank {rank} is below the checkpoint's rank {config.rank}: pass at least {config.rank}, "
            "or leave it out to re-tune at the checkpoint's rank"
        )
    grown = replace(config, rank=rank, alpha=config.alpha * rank / config.rank)
    if rank == config.rank:
        return grown
    for name, layer in dsee_layers(model):
        for target, update in layer.updates.items():
            a, b, added = update.lora_A, update.lora_B, rank - config.rank
            extra = torch.empty(added, update.in_features)  # Kaiming-uniform, as DSEEUpdate.reset_parameters
            nn.init.kaiming_uniform_(
                extra, a=math.sqrt(5), generator=_generator(seed + rank, f"{name}.{target}")
            )
            trains = a.requires_grad
            update.lora_A = nn.Parameter(torch.cat([a, extra.to(a)]), requires_grad=trains)
            update.lora_B = nn.Parameter(
                torch.cat([b, b.new_zeros(b.shape[0], added)], 1), requires_grad=trains
            )
            update.scaling = grown.scaling
    return grown


def _targets_of(block: nn.Module, spec: ArchSpec) -> list[str]:
    """The logical targets of `block` that hold a DSEE update."""
    found = []
    for target in TARGETS:
        layer = get_module(block, spec.site(target).path)
        if isinstance(layer, DSEELayer) and target in layer.updates:
            found.append(target)
    return found


def train_head(model: nn.Module, missing_keys: list[str]) -> None:
    """Besides the DSEE updates, train the task head (everything outside the base model) and any tensor the
    base checkpoint did not hold (a freshly initialised pooler would otherwise stay random)."""
    prefix = model.base_model_prefix + "."
    missing = set(missing_keys)
    bare = (
        model.base_model is model
    )  # an encoder without a head (sentence embeddings): its names lack the prefix
    for name, param in model.named_parameters():
        if bare:  # nothing outside the base; its pooler is not what sentence embeddings pool: left as loaded
            train = name in missing and not name.startswith("pooler.")
        else:
            train = not name.startswith(prefix) or name in missing
        if train:
            param.requires_grad_(True)


def dsee_layers(model: nn.Module) -> Iterator[tuple[str, DSEELayer]]:
    for name, module in model.named_modules():
        if isinstance(module, DSEELayer):
            yield name, module


def merge_dsee(model: nn.Module) -> nn.Module:
    for _, layer in dsee_layers(model):
        layer.merge()
    return model


def unmerge_dsee(model: nn.Module) -> nn.Module:
    for _, layer in dsee_layers(model):
        layer.unmerge()
    return model


def unwrap_dsee(model: nn.Module) -> nn.Module:
    """Merge every update and put the plain base projections back: a plain transformers model remains."""
    for name, layer in list(dsee_layers(model)):
        layer.merge()
        set_module(model, name, layer.base_layer)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; for a wrapped model, total counts the base weights and the updates."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
