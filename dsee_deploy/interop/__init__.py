"""Other tools' formats out: a checkpoint written as PEFT's LoRA adapter (`peft`). Reading PEFT adapters is the
checkpoint package's (checkpoint.peft_adapter): every command takes one where it takes a checkpoint."""

from .peft import to_peft

__all__ = ["to_peft"]
