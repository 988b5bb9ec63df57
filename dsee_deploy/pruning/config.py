"""Pruning options: a dataclass saved (with a format version) in pruning.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..architectures import TARGETS
from ..errors import ConfigError, versioned_fields
from .importance import STRUCTURED, UNSTRUCTURED

FORMAT_VERSION = 1
SCOPES = ("global", "layer")


@dataclass
class PruneConfig:
    heads: float = field(
        default=0.0, metadata={"help": "Fraction of all attention heads to remove.", "flag": "--prune-heads"}
    )
    ffn: float = field(
        default=0.0, metadata={"help": "Fraction of all FFN neurons to remove.", "flag": "--prune-ffn"}
    )
    unstructured: float = field(
        default=0.0, metadata={"help": "Fraction of weights to zero.", "flag": "--prune-unstructured"}
    )
    importance: str = field(
        default="",
        metadata={
            "help": "Scores: abs (|update|), wabs (|W + update|), taylor (|dL/dgate|, structured only). "
            "Default: taylor for heads/FFN, wabs for unstructured.",
            "choices": STRUCTURED,
        },
    )
    scope: str = field(
        default="global",
        metadata={
            "help": "global: one ranking across layers (layers end up different); layer: same ratio per layer.",
            "flag": "--prune-scope",
            "choices": SCOPES,
        },
    )
    unstructured_modules: tuple[str, ...] = field(
        default=TARGETS,
        metadata={"help": "Projections unstructured pruning applies to.", "flag": "--prune-modules"},
    )
    min_heads: int = field(
        default=0, metadata={"help": "Heads every layer keeps at least (0: may lose all)."}
    )
    min_ffn: int = field(default=0, metadata={"help": "FFN neurons every layer keeps at least."})
    taylor_samples: int = field(
        default=512, metadata={"help": "Training examples scored for taylor importance."}
    )
    flops_seq_len: int = field(
        default=128, metadata={"help": "Sequence length of the FLOPs in pruning.json."}
    )

    def __post_init__(self) -> None:
        self.unstructured_modules = tuple(self.unstructured_modules)
        for name, flag in (
            ("heads", "--prune-heads"),
            ("ffn", "--prune-ffn"),
            ("unstructured", "--prune-unstructured"),
        ):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{flag} must be in [0, 1), got {value}: it is the fraction to remove")
        if self.importance and self.importance not in STRUCTURED:
            raise ConfigError(f"--importance must be one of {', '.join(STRUCTURED)}, got '{self.importance}'")
        if self.unstructured and self.importance == "taylor":
            raise ConfigError(
                f"--importance taylor scores heads and neurons; unstructured pruning takes {UNSTRUCTURED}"
            )
        if self.scope not in SCOPES:
            raise ConfigError(f"--prune-scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        unknown = sorted(set(self.unstructured_modules) - set(TARGETS))
        if unknown:
            raise ConfigError(f"unknown unstructured modules {unknown}: choose from {', '.join(TARGETS)}")
        if self.min_heads < 0 or self.min_ffn < 0 or self.taylor_samples < 1 or self.flops_seq_len < 1:
            raise ConfigError(
                "--min-heads and --min-ffn must be >= 0, --taylor-samples and --flops-seq-len >= 1"
            )

    @property
    def structured(self) -> bool:
        return self.heads > 0 or self.ffn > 0

    @property
    def any(self) -> bool:
        return self.structured or self.unstructured > 0

    def structured_importance(self) -> str:
        return self.importance or "taylor"

    def unstructured_importance(self) -> str:
        return self.importance or "wabs"

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            **asdict(self),
            "unstructured_modules": list(self.unstructured_modules),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruneConfig:
        return cls(
            **versioned_fields(cls, data, FORMAT_VERSION, "pruning config", "prune again with dsee-prune")
        )
