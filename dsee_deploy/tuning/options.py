"""Options of a tuning run (data, training, re-tuning after pruning): one dataclass, each field with its help
text (dsee-tune's flags are made from them). DSEE's own options are DSEEConfig, pruning's PruneConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..tasks import CausalLM, Classification, FeatureExtraction, Regression

FORMAT_VERSION = 1
# DSEE's default peak learning rate: the best measured with the default rank and targets
# (benchmarks/tuning/defaults_vs_recipe: 2e-3 over 1e-3 on SST-2).
DSEE_LR = 2e-3
# What dsee-tune trains: auto, or a task of the registry that has training data of its own.
TASK_CHOICES = ("auto", Classification.kind, Regression.kind, CausalLM.kind, FeatureExtraction.kind)
SCHEDULES = ("gradual", "oneshot")


@dataclass
class TuneConfig:
    task: str = field(
        default="auto",
        metadata={
            "help": "auto: causal-lm for .txt, regression for non-integer labels, classification otherwise; "
            "feature-extraction: sentence embeddings, from scored pairs, (anchor, positive) pairs, or text with "
            "--teacher.",
            "choices": TASK_CHOICES,
            "group": "data and model",
        },
    )
    text_column: str | None = field(
        default=None,
        metadata={
            "help": "Text column (default: GLUE names such as sentence, sentence1).",
            "group": "data and model",
        },
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Second text column for sentence pairs.", "group": "data and model"}
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "Label column (default: label, Quality or score).", "group": "data and model"},
    )
    label_names: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Names for the labels, comma-separated, in the order of their values (e.g. negative,positive "
            "for 0,1): what the engine answers instead of the values.",
            "group": "data and model",
        },
    )
    max_length: int = field(
        default=128,
        metadata={
            "help": "Maximum tokens per example; engines truncate there too.",
            "group": "data and model",
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples.", "group": "data and model"}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use only the first N evaluation examples.", "group": "data and model"},
    )
    epochs: float = field(default=2.0, metadata={"help": "Training epochs.", "group": "training"})
    max_steps: int = field(
        default=-1,
        metadata={"help": "Stop after N optimizer steps (overrides --epochs).", "group": "training"},
    )
    batch_size: int = field(
        default=32, metadata={"help": "Training batch size per device.", "group": "training"}
    )
    lr: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate, linear warm-up then decay (default 2e-3 for DSEE, 5e-5 with "
            "--full-finetune).",
            "group": "training",
        },
    )
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads PyTorch trains with (0: all cores).", "group": "training"},
    )
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Fraction of steps spent warming up.", "group": "training"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay.", "group": "training"})
    metric: str = field(
        default="",
        metadata={
            "help": "Metric that picks the best checkpoint (default: the task's); recorded in the checkpoint, "
            "carried over by --resume, and reported by dsee-export and dsee-bench.",
            "group": "training",
        },
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed for data order, dropout and DSEE's initialisation.", "group": "training"},
    )
    full_finetune: bool = field(
        default=False,
        metadata={
            "help": "Train every weight instead (the baseline DSEE is compared with); writes a plain "
            "transformers model.",
            "group": "training",
        },
    )
    retune_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Epochs of tuning after pruning (default: --epochs).",
            "group": "re-tuning after pruning",
        },
    )
    retune_rank: int | None = field(
        default=None,
        metadata={
            "help": "Grow every update to rank R for re-tuning (default: keep the rank): A gets new directions, B "
            "starts them at zero (the function is unchanged) and alpha grows with r, so the pruned model has more "
            "to recover with. Trainable parameters grow with R; the rest stays frozen.",
            "group": "re-tuning after pruning",
        },
    )
    prune_schedule: str = field(
        default="gradual",
        metadata={
            "help": "gradual: the heads and FFN neurons to remove fade out over the first --prune-warmup of "
            "re-tuning, then are cut and the model is tuned at its final layout; oneshot: cut, then re-tune.",
            "choices": SCHEDULES,
            "group": "re-tuning after pruning",
        },
    )
    prune_warmup: float = field(
        default=1 / 3,
        metadata={
            "help": "Fraction of the re-tuning epochs over which a gradual schedule fades the removed units out.",
            "group": "re-tuning after pruning",
        },
    )
    distill: bool | None = field(
        default=None,
        metadata={
            "help": "Re-tune with distillation from the unpruned model (default: on with --target-speedup or "
            "--teacher, off otherwise).",
            "group": "re-tuning after pruning",
        },
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Distil from this fine-tuned model (a dsee-tune checkpoint or a transformers directory, e.g. a "
            "--full-finetune output) with the same tokenizer and labels: in the tuning epochs and, instead of the "
            "unpruned model, in re-tuning.",
            "group": "re-tuning after pruning",
        },
    )
    distill_hidden: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the layer-wise distillation (MSE between the student's and the teacher's hidden "
            "states, layer by layer; 0: logits only).",
            "group": "re-tuning after pruning",
        },
    )
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the distillation loss.", "group": "re-tuning after pruning"}
    )
    distill_temperature: float = field(
        default=2.0,
        metadata={"help": "Softmax temperature for distillation.", "group": "re-tuning after pruning"},
    )

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names)
        if len(set(self.label_names)) != len(self.label_names):
            raise ConfigError(
                f"--label-names {','.join(self.label_names)} names a label twice: name each once"
            )
        if self.task not in TASK_CHOICES:
            raise ConfigError(f"--task must be one of {', '.join(TASK_CHOICES)}, got '{self.task}'")
        if self.max_length < 8:
            raise ConfigError(f"--max-length {self.max_length} is too short: pass at least 8")
        if self.epochs < 0:
            raise ConfigError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads}: pass 1 or more, or 0 for all cores")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.retune_rank is not None and self.retune_rank < 1:
            raise ConfigError(f"--retune-rank must be >= 1, got {self.retune_rank}")
        if self.retune_rank and self.full_finetune:
            raise ConfigError("--retune-rank grows DSEE's updates: it does not combine with --full-finetune")
        if self.prune_schedule not in SCHEDULES:
            raise ConfigError(
                f"--prune-schedule must be one of {', '.join(SCHEDULES)}, got '{self.prune_schedule}'"
            )
        if not 0 < self.prune_warmup < 1:
            raise ConfigError(f"--prune-warmup must be in (0, 1), got {self.prune_warmup}")
        if self.teacher and self.distill is False:
            raise ConfigError("--teacher is what distillation learns from: drop --no-distill or --teacher")
        if self.distill_hidden < 0 or not 0 <= self.distill_alpha <= 1:
            raise ConfigError("--distill-hidden must be >= 0 and --distill-alpha in [0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warm-up ratio must be in [0, 1), got {self.warmup_ratio}")

    @property
    def learning_rate(self) -> float:
        return self.lr or (5e-5 if self.full_finetune else DSEE_LR)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}
