"""Pruning options: a dataclass saved (with a format version) in pruning.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..architectures import TARGETS
from ..errors import ConfigError, versioned_fields
from ..speed.key import PRECISIONS, SpeedKey
from .importance import GRADIENT, STRUCTURED, UNSTRUCTURED

FORMAT_VERSION = 2
READS = (1, 2)  # version 1 had no speed target
SCOPES = ("global", "layer")
EQUAL_SHARE = 0.5  # --head-share's default: all heads together weigh as much as all FFN neurons


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
    target_speedup: float = field(
        default=0.0,
        metadata={
            "help": "Instead of ratios: keep the heads and FFN neurons (per layer, chosen together) that hold the "
            "most importance for an engine predicted this many times faster than the dense one, by a latency "
            "model measured on this machine (cached).",
        },
    )
    # The speed target's conditions: a SpeedKey (speed.key), whose defaults these are (PruneConfig.speed)
    latency_precision: str = field(
        default=SpeedKey.precision,
        metadata={"help": "Engine precision the speed target is for.", "choices": PRECISIONS},
    )
    latency_batch: int = field(
        default=SpeedKey.batch, metadata={"help": "Batch size the speed target is for."}
    )
    latency_seq_len: int = field(
        default=SpeedKey.seq_len, metadata={"help": "Sequence length the speed target is for."}
    )
    latency_threads: int = field(
        default=0, metadata={"help": "Intra-op threads the speed target is for (0: all cores)."}
    )
    importance: str = field(
        default="",
        metadata={
            "help": "Scores: abs (|update|), wabs (|W + update|), taylor (|dL/dgate|, structured only), fisher "
            "((dlog p/dgate)^2 with outputs drawn from the model: no labels; structured only). "
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
    head_share: float = field(
        default=EQUAL_SHARE,
        metadata={
            "help": "With --target-speedup: the share of importance the layout search gives all heads together "
            "(the FFN neurons share the rest). Below 0.5 the search keeps fewer heads and more neurons.",
        },
    )
    taylor_samples: int = field(
        default=512, metadata={"help": "Training examples scored for taylor and fisher importance."}
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
        if self.target_speedup and (self.heads or self.ffn):
            raise ConfigError(
                "--target-speedup chooses the heads and FFN neurons itself: drop --prune-heads / --prune-ffn"
            )
        if self.target_speedup and not self.target_speedup > 1:
            raise ConfigError(f"--target-speedup must be above 1, got {self.target_speedup:g}")
        if self.latency_precision not in PRECISIONS:
            raise ConfigError(f"--latency-precision must be one of {', '.join(PRECISIONS)}")
        if self.latency_batch < 1 or self.latency_seq_len < 2 or self.latency_threads < 0:
            raise ConfigError("--latency-batch must be >= 1, --latency-seq-len >= 2, --latency-threads >= 0")
        if self.importance and self.importance not in STRUCTURED:
            raise ConfigError(f"--importance must be one of {', '.join(STRUCTURED)}, got '{self.importance}'")
        if self.unstructured and self.importance in GRADIENT:
            raise ConfigError(
                f"--importance {self.importance} scores heads and neurons; unstructured pruning takes "
                f"{', '.join(UNSTRUCTURED)}"
            )
        if not 0 < self.head_share < 1:
            raise ConfigError(
                f"--head-share must be in (0, 1), got {self.head_share:g}: it is the heads' share"
            )
        if self.head_share != EQUAL_SHARE and not self.target_speedup:
            raise ConfigError(
                "--head-share weighs heads in the speed-target search: add --target-speedup or drop it"
            )
        if self.head_share != EQUAL_SHARE and self.importance == "fisher":
            raise ConfigError(
                "--head-share weighs heads against neurons for abs, wabs and taylor scores; fisher scores are "
                "on one scale already (an expected loss increase): drop --head-share or pick another --importance"
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
    def speed(self) -> SpeedKey:
        """Where the speed target is measured (latency_threads 0: every core)."""
        return SpeedKey(
            self.latency_precision, self.latency_batch, self.latency_seq_len, self.latency_threads or None
        )

    @property
    def structured(self) -> bool:
        return self.heads > 0 or self.ffn > 0 or self.target_speedup > 0

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
        data = dict(data)
        if data.get("format_version") in READS:
            data["format_version"] = FORMAT_VERSION
        return cls(
            **versioned_fields(cls, data, FORMAT_VERSION, "pruning config", "prune again with dsee-prune")
        )
