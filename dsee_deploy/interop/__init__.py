"""Other tools' formats in and out: PEFT's LoRA adapters (`peft`)."""

from .peft import is_peft_adapter, load_peft_adapter, to_peft

__all__ = ["is_peft_adapter", "load_peft_adapter", "to_peft"]
