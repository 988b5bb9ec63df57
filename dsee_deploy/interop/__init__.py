"""Other tools' formats out: a checkpoint written as PEFT's LoRA adapter (`peft`), a model written as a
sentence-transformers directory (`sentence_transformers`). Reading PEFT adapters is the checkpoint package's
(checkpoint.peft_adapter): every command takes one where it takes a checkpoint."""

from .peft import to_peft
from .sentence_transformers import to_sentence_transformers

__all__ = ["to_peft", "to_sentence_transformers"]
