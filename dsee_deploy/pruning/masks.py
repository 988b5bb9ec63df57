"""Unstructured masks: choosing them, applying them in place, and storing them as packed bits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..architectures import ArchSpec, get_module
from ..tuning.layer import DSEELayer, projection_shape
from .importance import effective_weight
from .select import magnitude_masks


def mask_sites(model: nn.Module, spec: ArchSpec, targets: tuple[str, ...]):
    """(name, module, row slice) of each logical matrix: 'layer.3.query' -> c_attn and its query rows (GPT-2)."""
    for i, block in enumerate(spec.blocks(model)):
        for target in targets:
            site = spec.site(target)
            module = get_module(block, site.path)
            base = module.base_layer if isinstance(module, DSEELayer) else module
            if not isinstance(base, (nn.Linear, Conv1D)):
                continue  # an attention skipped after losing every head
            rows = projection_shape(module)[0] // site.parts
            if rows == 0 or 0 in base.weight.shape:
                continue  # nothing left to mask
            yield f"layer.{i}.{target}", module, slice(site.part * rows, (site.part + 1) * rows)


def choose_masks(
    model: nn.Module, spec: ArchSpec, ratio: float, importance: str, scope: str, targets
) -> dict:
    scores = {
        name: effective_weight(module, importance)[rows]
        for name, module, rows in mask_sites(model, spec, targets)
    }
    return magnitude_masks(scores, ratio, scope)


@torch.no_grad()
def apply_masks(model: nn.Module, spec: ArchSpec, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place; DSEE layers also mask their update from now on."""
    sites = {name: (module, rows) for name, module, rows in mask_sites(model, spec, tuple(_targets(masks)))}
    by_module: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    for name, mask in masks.items():
        if name not in sites:
            raise ValueError(f"mask '{name}' has no matrix in this model")
        module, rows = sites[name]
        base = module.base_layer if isinstance(module, DSEELayer) else module
        full_shape = base.weight.T.shape if isinstance(base, Conv1D) else base.weight.shape  # (out, in)
        full = by_module.setdefault(id(module), (module, torch.ones(full_shape, dtype=torch.bool)))[1]
        if full[rows].shape != mask.shape:
            raise ValueError(
                f"mask '{name}' has shape {tuple(mask.shape)}, the matrix is {tuple(full[rows].shape)}"
            )
        full[rows] = mask
    for module, full in by_module.values():
        if isinstance(module, DSEELayer):
            module.set_mask(full)
        else:
            w = module.weight
            w.mul_((full.T if isinstance(module, Conv1D) else full).to(w.dtype))


def _targets(masks: dict) -> set[str]:
    return {name.rsplit(".", 1)[1] for name in masks}


def save_masks(masks: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # One bit per weight (np.packbits), shapes in the metadata: 1/32 of the fp32 matrices.
    packed = {name: torch.from_numpy(np.packbits(m.numpy().ravel())) for name, m in masks.items()}
    shapes = {name: list(m.shape) for name, m in masks.items()}
    save_file(packed, str(path), metadata={"format": "dsee-deploy-masks", "shapes": json.dumps(shapes)})


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    masks = {}
    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
        for name in f.keys():
            bits = np.unpackbits(f.get_tensor(name).numpy())[: int(np.prod(shapes[name]))]
            masks[name] = torch.from_numpy(bits.astype(bool)).view(*shapes[name])
    return masks
