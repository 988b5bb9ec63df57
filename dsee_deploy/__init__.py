"""dsee-deploy: DSEE tuning and pruning for transformers, turned into small, fast inference engines.

`load_merged` and `load_dsee` need the `tune` extra (torch, transformers); importing the package does not.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_merged(checkpoint, base_model=None):
    """(model, tokenizer): the checkpoint's plain transformers model, DSEE update merged into the weights."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "safetensors")
    from .checkpoint import load_merged as _load_merged

    return _load_merged(checkpoint, base_model)


def load_dsee(checkpoint, base_model=None):
    """(model, tokenizer, info): the base model with the checkpoint's DSEE layers, unmerged."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "safetensors")
    from .checkpoint import load_dsee as _load_dsee

    return _load_dsee(checkpoint, base_model)


__all__ = ["__version__", "load_dsee", "load_merged"]
