"""dsee-deploy: DSEE tuning and pruning for transformers, turned into small, fast inference engines.

The pipeline is four verbs, each taking its inputs and a config dataclass and returning a typed result:

    import dsee_deploy as dd
    ckpt = dd.tune("train.tsv", "runs/sst2", eval="dev.tsv", dsee=dd.DSEEConfig(rank=16))   # CheckpointInfo
    pruned = dd.prune("runs/sst2", dd.PruneConfig(heads=0.5, ffn=0.5), "runs/sst2-s")     # CheckpointInfo
    manifest = dd.export("runs/sst2-s", "engines/sst2-s", dd.ExportConfig(quantize="int8"))  # Manifest
    results = dd.bench(["engines/sst2-s"], ["engines/dense"], dd.BenchConfig(rounds=5))      # BenchResults

A PEFT LoRA adapter directory is taken wherever a checkpoint is, and `dd.to_peft(checkpoint, out)` writes one;
`dd.to_sentence_transformers(checkpoint, out)` writes a directory that `SentenceTransformer(out)` loads.

`tune`, `prune`, `load_merged`, `load_dsee` and `to_peft` need the `tune` extra (torch, transformers), `export` the
`export` extra too; importing the package needs neither, and `bench` on engines needs only the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# The verbs `export` and `bench` share their names with the packages that hold them (dsee_deploy.export,
# dsee_deploy.bench). Importing a package binds it as an attribute of its parent; those two are imported
# here, first (they are light: no torch), so that the functions defined below are what `dd.export` and
# `dd.bench` name from then on. Their contents stay importable as `from dsee_deploy.export import ...`.
from . import bench as _bench_package  # noqa: F401
from . import export as _export_package  # noqa: F401
from .bench.config import BenchConfig
from .bench.run import BenchResults
from .errors import ConfigError, DSEEError
from .export.config import ExportConfig
from .manifest import Manifest
from .pipeline.export import ExportFailed

if TYPE_CHECKING:
    from .checkpoint import CheckpointInfo
    from .pruning.config import PruneConfig
    from .tuning.config import DSEEConfig
    from .tuning.options import TuneConfig

__version__ = "0.1.0"
# The sample sentences shipped with the package (GLUE SST-2 layout: train.tsv, dev.tsv).
SAMPLES = Path(__file__).parent / "samples"


def tune(train, output, **kwargs) -> CheckpointInfo:
    """Tune a model with DSEE and save a checkpoint; see dsee_deploy.pipeline.tune.tune for the arguments."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from .pipeline.tune import tune as _tune

    return _tune(train, output, **kwargs)


def prune(checkpoint, config: PruneConfig, output, **kwargs) -> CheckpointInfo:
    """Prune a checkpoint into a new one; see dsee_deploy.pipeline.prune.prune for the arguments."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from .pipeline.prune import prune as _prune

    return _prune(checkpoint, config, output, **kwargs)


def export(checkpoint, output, config: ExportConfig | None = None, **kwargs) -> Manifest:
    """Export a checkpoint (or transformers model directory) to a validated engine; see
    dsee_deploy.pipeline.export.export for the arguments."""
    from .pipeline.export import export as _export

    return _export(checkpoint, output, config, **kwargs)


def bench(engines, baselines, config: BenchConfig | None = None, **kwargs) -> BenchResults:
    """Time engines against dense baselines; see dsee_deploy.bench.run.bench for the arguments."""
    from .bench.run import bench as _bench

    return _bench(engines, baselines, config, **kwargs)


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


def to_peft(checkpoint, output, base_model=None, overwrite: bool = False) -> Path:
    """Write a DSEE checkpoint without sparse entries as a PEFT LoRA adapter directory (needs `peft`); see
    dsee_deploy.interop.peft.to_peft. A PEFT adapter directory goes the other way wherever a checkpoint goes."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "safetensors")
    from .interop.peft import to_peft as _to_peft

    return _to_peft(checkpoint, output, base_model, overwrite)


def to_sentence_transformers(
    source, output, *, engine=None, overwrite: bool = False, base_model: str | None = None
) -> Path:
    """Write a checkpoint or model directory as a sentence-transformers directory (needs the `embeddings` extra),
    with a dsee-export feature-extraction `engine` as its onnx/model.onnx; see
    dsee_deploy.interop.sentence_transformers.to_sentence_transformers."""
    from .errors import require_extra

    require_extra("tune", "torch", "transformers", "safetensors")
    from .interop.sentence_transformers import to_sentence_transformers as _to_st

    return _to_st(source, output, engine=engine, overwrite=overwrite, base_model=base_model)


_LAZY = {
    # The configs and results of the torch side, imported when first named (the 'tune' extra).
    "DSEEConfig": ("tuning.config", "DSEEConfig"),
    "TuneConfig": ("tuning.options", "TuneConfig"),
    "PruneConfig": ("pruning.config", "PruneConfig"),
    "CheckpointInfo": ("checkpoint", "CheckpointInfo"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'dsee_deploy' has no attribute {name!r}")


__all__ = [
    "SAMPLES",
    "BenchConfig",
    "BenchResults",
    "CheckpointInfo",
    "ConfigError",
    "DSEEConfig",
    "DSEEError",
    "ExportConfig",
    "ExportFailed",
    "Manifest",
    "PruneConfig",
    "TuneConfig",
    "__version__",
    "bench",
    "export",
    "load_dsee",
    "load_merged",
    "prune",
    "to_peft",
    "to_sentence_transformers",
    "tune",
]
