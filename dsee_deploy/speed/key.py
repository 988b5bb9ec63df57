"""The conditions a speed-up is measured at, defined once with their defaults: a speed target's latency model,
dsee-export's measured speed-up and the records of both (pruning.json's target, the manifest's speedup) carry
them as one SpeedKey."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from ..errors import DSEEError

PRECISIONS = ("fp32", "int8")
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SpeedKey:
    precision: str = "fp32"  # of the engines the figure is for
    batch: int = 1
    seq_len: int = 128
    threads: int | None = None  # ONNX Runtime intra-op threads; None: every core of the machine
    provider: str = CPU

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DSEEError(
                f"latency precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
            )
        if self.batch < 1 or self.seq_len < 2 or (self.threads is not None and self.threads < 1):
            raise DSEEError(
                f"a speed-up is measured at batch >= 1, sequence >= 2 and threads >= 1 (or all cores), got batch "
                f"{self.batch}, sequence {self.seq_len}, threads {self.threads}"
            )

    def on(self, model_config) -> SpeedKey:
        """This key as it is measured for `model_config` on this machine: every core counted, and the sequence
        cut to the model's longest input (a target at 128 tokens of a model with 64 positions is one at 64)."""
        from ..architectures import longest_input

        return replace(
            self,
            threads=self.threads or os.cpu_count() or 1,
            seq_len=min(int(self.seq_len), longest_input(model_config)),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> SpeedKey:
        """The key within a record that holds its fields among others (a latency model's key, a manifest's
        speedup): fields it lacks take their defaults."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if record.get(f.name) is not None})


DEFAULT_SPEED = SpeedKey()  # batch 1, sequence 128, fp32, every core, the CPU
