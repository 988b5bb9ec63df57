"""The one ONNX Runtime layer: sessions (providers, threads, bounded spin), tokenization with length buckets,
and the feeds of a graph. The serving Engine, export validation and evaluation, and dsee-bench's timing and
accuracy all run graphs through it, so that what they measure is what the server computes.

numpy, onnxruntime and tokenizers only: a serving container imports it without torch.
"""

from .session import PROVIDERS, make_session, pick_providers, set_spin, spin_in_force
from .text import Padding, TextEncoder, plan_buckets, run_texts

__all__ = [
    "PROVIDERS",
    "Padding",
    "TextEncoder",
    "make_session",
    "pick_providers",
    "plan_buckets",
    "run_texts",
    "set_spin",
    "spin_in_force",
]
