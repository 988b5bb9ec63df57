"""DSEE options: a dataclass saved with a format version and round-tripped through JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import ConfigError, versioned_fields

FORMAT_VERSION = 1
SPARSE_INITS = ("grebsmo", "magnitude", "random")


@dataclass
class DSEEConfig:
    # The defaults are the best recipe measured (benchmarks/tuning/defaults_vs_recipe: r 4, alpha 8, all six
    # projections, with TuneConfig's lr 2e-3), not LoRA's customary r 16 on query and value.
    rank: int = field(default=4, metadata={"help": "Rank r of the low-rank update B A."})
    alpha: float = field(
        default=8.0, metadata={"help": "Scale numerator: the update is multiplied by alpha / r."}
    )
    num_sparse: int = field(
        default=16,
        metadata={"help": "N, trainable sparse entries per targeted matrix (0 turns the sparse part off)."},
    )
    target_modules: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Logical projections to tune, from query, key, value, attn_out, ffn_in, ffn_out (default: "
            "the architecture's: all six for every registered one)."
        },
    )
    sparse_init: str = field(
        default="grebsmo",
        metadata={
            "help": "How to choose the sparse support: grebsmo (residual of a low-rank fit), magnitude, random.",
            "choices": SPARSE_INITS,
        },
    )
    grebsmo_rank: int = field(
        default=8,
        metadata={"help": "Rank of the low-rank fit whose residual picks the support (grebsmo only)."},
    )
    grebsmo_threshold: float = field(
        default=0.01, metadata={"help": "Hard threshold on the residual in the decomposition (grebsmo only)."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed for A's initialisation and for random / grebsmo supports."}
    )

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.num_sparse < 0:
            raise ConfigError(f"num_sparse must be >= 0, got {self.num_sparse}")
        from ..architectures import TARGETS

        unknown = [t for t in self.target_modules if t not in TARGETS]
        if unknown:
            raise ConfigError(
                f"unknown target module '{unknown[0]}': expected some of {', '.join(TARGETS)} "
                f"(e.g. --target-modules query,value)"
            )
        if self.sparse_init not in SPARSE_INITS:
            raise ConfigError(
                f"sparse_init must be one of {', '.join(SPARSE_INITS)}, got '{self.sparse_init}'"
            )
        if self.grebsmo_rank < 1:
            raise ConfigError(f"grebsmo_rank must be >= 1, got {self.grebsmo_rank}")

    def for_architecture(self, spec) -> DSEEConfig:
        """This config with the architecture's default target modules where it names none."""
        return replace(self, target_modules=self.target_modules or spec.default_targets)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, data: dict) -> DSEEConfig:
        return cls(**versioned_fields(cls, data, FORMAT_VERSION, "DSEE config", "re-run dsee-tune"))
