"""Export options: one dataclass, each field with its help text (dsee-export's flags are made from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError
from ..tasks import FeatureExtraction

FORMAT_VERSION = 1
TASKS = ("auto", FeatureExtraction.kind)


QUANTIZE = ("int8", "int4")  # --quantize: dynamic int8; weight-only 4-bit (decoders)


@dataclass
class ExportConfig:
    format: str = field(
        default="onnx",
        metadata={
            "help": "Engine format: onnx, tensorrt (a serialized plan) or triton (a repository entry)."
        },
    )
    task: str = field(
        default="auto",
        metadata={
            "help": "'auto': the checkpoint's own task (a bare encoder gives feature extraction); "
            "'feature-extraction': outputs last_hidden_state and a pooled sentence_embedding.",
        },
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": "Sentence embedding pooling; 'auto' reads a sentence-transformers config, else mean.",
            "choices": ("auto", "mean", "cls"),
        },
    )
    normalize: bool | None = field(
        default=None,
        metadata={
            "help": "L2-normalise the sentence embedding (default: as a sentence-transformers config says)."
        },
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "int8: dynamic int8 for CPU, applied to the fused graph. int4: weight-only 4-bit "
            "(MatMulNBits) for KV-cache decoders, whose decode steps are bound by reading the weights.",
            "choices": QUANTIZE,
        },
    )
    fp16: bool = field(default=False, metadata={"help": "fp16 weights and compute, for GPU targets."})
    validate_data: str | None = field(
        default=None,
        metadata={
            "help": "A labelled file (.tsv/.csv/.jsonl) of the checkpoint's task: report its metrics (the one "
            "that selected the checkpoint first; accuracy for classification, Pearson and Spearman for "
            "regression), and how often PyTorch and each engine agree (the same class, or within 0.01)."
        },
    )
    max_metric_drop: float = field(
        default=1.0,
        metadata={"help": "With --validate-data: fail if int8/fp16 loses more than this many metric points."},
    )
    threads: int = field(
        default=0,
        metadata={
            "help": "CPU threads for PyTorch and ONNX Runtime while exporting and validating (0: all cores); the "
            "measured speed-up is timed at the latency model's threads (see dsee-tune --latency-threads)."
        },
    )
    opset: int = field(default=18, metadata={"help": "ONNX opset (>= 17)."})
    atol: float = field(
        default=1e-4, metadata={"help": "Largest absolute difference accepted for the fp32 graph."}
    )
    optimize: bool = field(
        default=True,
        metadata={
            "help": "Apply ONNX Runtime's transformer fusions (not for --format tensorrt, which fuses on its own)."
        },
    )
    skip_layernorm: str = field(
        default="auto",
        metadata={
            "help": "Residual Add + LayerNorm as ONNX Runtime's SkipLayerNormalization ('fuse') or apart "
            "('unfuse', faster on CPU, where that kernel is scalar); 'auto': fuse for --fp16 (GPU), else unfuse.",
            "choices": ("auto", "fuse", "unfuse"),
        },
    )
    validate: bool = field(
        default=True, metadata={"help": "Check the engine against PyTorch (--no-validate: not recommended)."}
    )
    speedup: bool = field(
        default=True,
        metadata={
            "help": "For a checkpoint whose heads or FFN neurons were pruned: time the engine against a dense "
            "engine of the same geometry and precision on this machine (seconds), into the manifest."
        },
    )
    kv_cache: bool = field(
        default=True,
        metadata={
            "help": "A causal LM exports as a decoder with a KV cache (each layer's past keys and values in, "
            "present out; one graph for prompt and decode steps); --no-kv-cache: the whole sequence in, logits "
            "out, every step recomputing the prefix."
        },
    )
    min_shape: str = field(
        default="1x1",
        metadata={"help": "TensorRT: smallest BATCHxSEQ the engine accepts.", "group": "tensorrt"},
    )
    opt_shape: str = field(
        default="8x128",
        metadata={"help": "TensorRT: BATCHxSEQ it tunes its kernels for.", "group": "tensorrt"},
    )
    max_shape: str = field(
        default="32x512",
        metadata={"help": "TensorRT: largest BATCHxSEQ the engine accepts.", "group": "tensorrt"},
    )
    name: str | None = field(
        default=None,
        metadata={
            "help": "Triton: model name in the repository (default: the checkpoint's directory name).",
            "group": "triton",
        },
    )
    max_batch_size: int = field(default=32, metadata={"help": "Triton's max_batch_size.", "group": "triton"})
    max_queue_delay_us: int = field(
        default=500,
        metadata={"help": "Triton dynamic batching: longest wait for a fuller batch.", "group": "triton"},
    )

    def __post_init__(self) -> None:
        from .formats import FORMATS

        if self.format not in FORMATS:
            raise ConfigError(f"--format '{self.format}' is not supported: use {', '.join(FORMATS)}")
        if self.task not in TASKS:
            raise ConfigError(f"--task '{self.task}' is not supported: use {', '.join(TASKS)}")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads}: pass 1 or more, or 0 for all cores")
        if self.opset < 17:
            raise ConfigError(f"--opset {self.opset} is too old: pass 17 or newer")
        if self.quantize not in (None, *QUANTIZE):
            raise ConfigError(f"--quantize '{self.quantize}' is not supported: use {' or '.join(QUANTIZE)}")
        if self.quantize and self.fp16:
            raise ConfigError(
                f"--quantize {self.quantize} and --fp16 exclude each other: pick {self.quantize} for CPU or fp16 "
                f"for GPU"
            )
        if self.pooling not in ("auto", "mean", "cls"):
            raise ConfigError(f"--pooling '{self.pooling}' is not supported: use auto, mean or cls")
        if self.skip_layernorm not in ("auto", "fuse", "unfuse"):
            raise ConfigError(
                f"--skip-layernorm '{self.skip_layernorm}' is not supported: use auto, fuse or unfuse"
            )
        self.shapes()  # BATCHxSEQ strings are checked here

    @property
    def precision(self) -> str:
        return self.quantize or ("fp16" if self.fp16 else "fp32")

    def fuse_skip_layernorm(self) -> bool:
        return self.skip_layernorm == "fuse" or (self.skip_layernorm == "auto" and self.fp16)

    def shapes(self) -> dict[str, tuple[int, int]]:
        from .tensorrt import parse_shape

        return {
            flag: parse_shape(flag, getattr(self, flag[2:].replace("-", "_")))
            for flag in ("--min-shape", "--opt-shape", "--max-shape")
        }

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}
