"""The DSEE checkpoint: its files (store), a PEFT LoRA adapter read as one (peft_config, peft_adapter), and
loading either back as a model (load)."""

from .load import load_dsee, load_merged, recorded_base
from .peft_adapter import load_peft_adapter
from .peft_config import is_peft_adapter
from .store import (
    ADAPTER_FILE,
    CHECKPOINT_FILES,
    CONFIG_FILE,
    FORMAT_VERSION,
    MASKS_FILE,
    METRICS_FILE,
    PRUNING_FILE,
    CheckpointInfo,
    adapter_state,
    prepare_output_dir,
    read_checkpoint_info,
    read_pruning,
    save_checkpoint,
)

__all__ = [
    "ADAPTER_FILE",
    "CHECKPOINT_FILES",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "MASKS_FILE",
    "METRICS_FILE",
    "PRUNING_FILE",
    "CheckpointInfo",
    "adapter_state",
    "is_peft_adapter",
    "load_dsee",
    "load_merged",
    "load_peft_adapter",
    "prepare_output_dir",
    "read_checkpoint_info",
    "read_pruning",
    "recorded_base",
    "save_checkpoint",
]
