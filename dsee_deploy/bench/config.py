"""dsee-bench options: one dataclass, each field with its help text (the CLI's flags and a suite's [bench]
keys are its fields)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

FORMAT_VERSION = 1


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 8, 32], metadata={"help": "Batch sizes, comma-separated."}
    )
    seq_lens: list[int] = field(
        default_factory=lambda: [32, 128], metadata={"help": "Sequence lengths, comma-separated."}
    )
    threads: int = field(
        default=os.cpu_count() or 1,
        metadata={"help": "Intra-op threads of every variant (default: all cores)."},
    )
    rounds: int = field(default=20, metadata={"help": "Interleaved rounds per shape."})
    warmup: int = field(default=3, metadata={"help": "Warm-up runs per variant and shape."})
    target_block_ms: float = field(
        default=250, metadata={"help": "How long the slowest variant's block of runs lasts in each round."}
    )
    # ONNX Runtime's intra-op threads busy-wait at most this long for more work, as dsee-serve runs them: within
    # a run they stay hot between operators; after a run they stop long before the next variant's block starts,
    # so interleaved sessions do not take each other's cores (ORT's default spin does). 0: no spinning.
    spin_us: int = field(
        default=100,
        metadata={
            "help": "How long idle ONNX Runtime threads busy-wait for work, in microseconds (as dsee-serve; 0: "
            "never). ORT's own default spins on after a run and takes the next variant's cores."
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "Labelled data (.tsv/.csv/.jsonl): every variant's task metric and accuracy, computed as "
            "the served engine computes them."
        },
    )
    torch_variants: bool = field(
        default=True,
        metadata={
            "help": "Also time PyTorch eager on the dense model and PyTorch with the DSEE branch.",
            "flag": "--torch",
        },
    )
    st_backends: bool = field(
        default=True,
        metadata={
            "help": "Sentence-embedding engines with --eval-data: time sentence-transformers' own backends of the "
            "dense model beside them (torch, ONNX int8, OpenVINO int8; those installed), texts in.",
            "flag": "--st-backends",
        },
    )
    profile: bool = field(
        default=False,
        metadata={"help": "Also profile each ONNX engine at the first shape (time per operator type)."},
    )
    prompt_len: int = field(
        default=32, metadata={"help": "Causal-LM engines: prompt tokens per row of the generation timing."}
    )
    new_tokens: int = field(
        default=64, metadata={"help": "Causal-LM engines: tokens generated per row (greedy, EOS ignored)."}
    )
    decode_rounds: int = field(
        default=5,
        metadata={"help": "Causal-LM engines: interleaved rounds of whole generations per batch size."},
    )
    title: str = field(default="", metadata={"help": "The report's title."})

    def __post_init__(self) -> None:
        for flag, values in (("--batch-sizes", self.batch_sizes), ("--seq-lens", self.seq_lens)):
            if not values or not all(isinstance(v, int) for v in values) or min(values) < 1:
                raise ConfigError(f"{flag} must be positive integers, comma-separated (e.g. 1,8,32)")
        for name in ("threads", "rounds", "warmup", "spin_us", "prompt_len", "new_tokens", "decode_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} (a suite's {name}) must be a whole number, not {value!r}")
        if min(self.prompt_len, self.new_tokens, self.decode_rounds) < 1:
            raise ConfigError("--prompt-len, --new-tokens and --decode-rounds must be 1 or more")
        if self.rounds < 3 or self.threads < 1 or self.spin_us < 0:
            raise ConfigError("--rounds must be at least 3, --threads at least 1 and --spin-us 0 or more")

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}
