"""What pruning did, as pruning.json records it: typed, versioned, and read back the way it was written.

PruningRecord   the layers kept, the sizes before and after, parameters and FLOPs, the options that chose them
SpeedTarget     for a --target-speedup run: the target, what was aimed at and predicted, by which latency model
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import DSEEError
from ..speed.key import SpeedKey

# 1: no speed target; 2: the target's figure named "speedup"; 3: one name per fact (target_speedup), typed
RECORD_VERSION = 3
READS = (1, 2, 3)


def _known(cls, data: dict, what: str) -> dict:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise DSEEError(f"{what} has unknown fields {unknown}: was it written by a newer dsee-deploy?")
    return data


@dataclass
class SpeedTarget:
    """A speed target and the layout search's figures for it (speed-ups against the dense engine)."""

    target_speedup: float  # what was asked (--target-speedup)
    predicted_speedup: float  # the latency model's figure for the layout chosen
    latency_model: dict  # that model's key: geometry, machine, runtime, and a SpeedKey's fields
    aimed_speedup: float | None = None  # above the target by the model's own error (pruning.search.aim_for)
    checked_engines: int = 0  # exported engines that error was learnt from
    predicted_ms: float | None = None
    dense_ms: float | None = None

    @property
    def speed(self) -> SpeedKey:
        """Where the speed-up is measured: precision, batch, sequence, threads and provider."""
        return SpeedKey.from_dict(self.latency_model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpeedTarget:
        data = dict(data)
        if "speedup" in data:  # format 2
            data["target_speedup"] = data.pop("speedup")
        return cls(**_known(cls, data, "pruning.json's speed target"))

    def describe(self) -> str:
        k = self.latency_model
        aimed = self.aimed_speedup or self.target_speedup
        checked = self.checked_engines
        error = (
            f"'s error on {checked} exported engine{'s' if checked > 1 else ''}" if checked else "'s error"
        )
        margin = (
            f", aimed at {aimed:.2f}x for the latency model{error}" if aimed > self.target_speedup else ""
        )
        timing = (
            f" ({self.dense_ms:.2f} ms dense -> {self.predicted_ms:.2f} ms"
            if self.dense_ms and self.predicted_ms
            else " ("
        )
        return (
            f"speed target {self.target_speedup:g}x{margin}: predicted {self.predicted_speedup:.2f}x{timing}, "
            f"{k['precision']} engines on {k['processor']}, batch {k['batch']}, sequence {k['seq_len']}, "
            f"{k['threads']} threads)"
        )


@dataclass
class PruningRecord:
    """pruning.json: exactly what was pruned, by which options. `layers` holds per layer the heads and FFN
    neurons kept ({"kept_heads", "kept_ffn"}, indices into the dense layer) and the unstructured sparsity of
    each masked projection."""

    config: dict  # PruneConfig.to_dict(), merged over the first pruning's for a second one
    structured: bool
    unstructured: bool
    importance: dict  # {"structured": ..., "unstructured": ...}: the scores used
    num_layers: int
    num_heads: int
    head_size: int
    hidden_size: int
    ffn_width: int
    layers: list[dict]
    parameters: dict  # encoder_dense, encoder_pruned, encoder_nonzero
    flops: dict  # seq_len, encoder_dense, encoder_pruned, encoder_ratio
    target: SpeedTarget | None = None
    format_version: int = field(default=RECORD_VERSION)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format_version"] = RECORD_VERSION
        if self.target is None:
            data.pop("target")
        else:
            data["target"] = self.target.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "pruning.json") -> PruningRecord:
        data = dict(data)
        version = data.get("format_version")
        if version not in READS:
            raise DSEEError(
                f"{where} has format version {version}; this dsee-deploy reads {', '.join(map(str, READS))}: "
                f"upgrade dsee-deploy or prune again with dsee-prune"
            )
        data["format_version"] = RECORD_VERSION
        target = data.pop("target", None)
        try:
            record = cls(**_known(cls, data, where))
        except TypeError as exc:  # a field missing: a hand-edited or truncated record
            raise DSEEError(
                f"{where} is not a complete pruning record ({exc}): prune again with dsee-prune"
            ) from exc
        record.target = SpeedTarget.from_dict(target) if target else None
        return record

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> PruningRecord:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise DSEEError(f"'{path}' is not valid JSON ({exc}): restore it or re-run dsee-prune") from exc
        if not isinstance(data, dict):
            raise DSEEError(f"'{path}' does not hold a pruning record: restore it or re-run dsee-prune")
        return cls.from_dict(data, where=f"'{path}'")

    @property
    def kept(self) -> tuple[list[int], list[int]]:
        """Heads and FFN neurons kept, per layer."""
        return [len(e["kept_heads"]) for e in self.layers], [len(e["kept_ffn"]) for e in self.layers]
