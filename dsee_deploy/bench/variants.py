"""What dsee-bench times: ONNX Runtime engines (dsee-export output directories) and, beside them, the PyTorch
models users ship today (eager on the dense model) and research code ships (DSEE update as a separate branch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..architectures import get_spec
from ..errors import DSEEError
from ..flops import encoder_flops
from ..manifest import Manifest
from ..runtime import make_session
from ..runtime.text import read_json
from ..tasks import Classification


@dataclass
class Variant:
    name: str
    kind: str  # "onnxruntime", "pytorch eager", "pytorch + DSEE branch"
    precision: str
    path: str  # the ONNX graph, or the model / checkpoint directory for PyTorch
    root: str  # the directory holding the tokenizer, config.json and labels (an export directory)
    baseline: bool
    parameters: int
    size_bytes: int
    hidden: int
    head_size: int
    heads: list[int]
    ffn: list[int]
    inputs: list[str]
    vocab: int
    max_length: int
    provider: str = "-"
    labels: list[str] = field(default_factory=list)
    task: str = Classification.kind
    architecture: str = "bert"  # a model_type of the registry; every variant sets its own
    metric: str = ""
    positive_label: str = ""
    label_values: list[str] = field(default_factory=list)  # the data's values of renamed labels
    target_speedup: float | None = None  # the speed target it was pruned for (--target-speedup)
    predicted_speedup: float | None = None  # the latency model's speed-up for its layout

    def flops(self, seq_len: int) -> int:
        return encoder_flops(self.hidden, self.head_size, self.heads, self.ffn, seq_len)

    def feeds(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> dict:
        """This variant's inputs, built by its architecture's one rule."""
        return get_spec(self.architecture).feeds(self.inputs, ids, mask, types)

    def to_dict(self) -> dict:
        return asdict(self)


def engine_variant(spec: str, baseline: bool) -> Variant:
    """A dsee-export directory, given as PATH or NAME=PATH."""
    name, _, path = spec.rpartition("=")
    root = Path(path)
    flag = "--baseline" if baseline else "--engine"
    if not (root / "manifest.json").is_file():
        raise DSEEError(f"{flag} '{path}' is not a dsee-export directory (no manifest.json): export it first")
    manifest = Manifest.read(root)  # verified: a damaged, swapped or failed engine is refused here
    config = read_json(root / "config.json", None)
    if not isinstance(config, dict) or "vocab_size" not in config:
        raise DSEEError(
            f"{flag} '{path}' has no readable config.json with the model's geometry: export it again"
        )
    if not manifest.engine.endswith(".onnx"):
        raise DSEEError(
            f"{flag} '{path}' holds a {manifest.engine} engine: dsee-bench times ONNX engines; pass the "
            f"ONNX export of the same checkpoint"
        )
    engine = root / manifest.engine
    arch = get_spec(manifest.architecture)
    hidden = manifest.hidden_size or arch.hidden_size(config)
    return Variant(
        name=name or root.name,
        kind="onnxruntime",
        precision=manifest.precision,
        path=str(engine),
        root=str(root),
        baseline=baseline,
        parameters=manifest.parameters["onnx"],
        size_bytes=engine.stat().st_size,
        hidden=hidden,
        head_size=manifest.head_size or hidden // arch.num_heads(config),
        heads=manifest.heads,
        ffn=manifest.ffn,
        inputs=manifest.inputs,
        vocab=config["vocab_size"],
        max_length=manifest.max_length,
        labels=[config["id2label"][str(i)] for i in range(len(config.get("id2label", {})))],
        task=manifest.task,
        architecture=manifest.architecture,
        metric=manifest.metric,
        positive_label=manifest.positive_label,
        label_values=list(config.get("label_values", [])),
        target_speedup=(manifest.speed_target or {}).get("target_speedup"),
        predicted_speedup=(manifest.speed_target or {}).get("predicted_speedup"),
    )


def source_of(variant: Variant) -> Path:
    """The checkpoint or model directory an engine was exported from (recorded in its manifest)."""
    return Path(Manifest.read(variant.root, verify=False).source)  # verified when the variant was made


def torch_variant(source: Path, like: Variant, kind: str, name: str) -> Variant:
    """PyTorch on `source`: 'pytorch eager' (a transformers directory or a merged checkpoint) or
    'pytorch + DSEE branch' (a DSEE checkpoint, unmerged). Tokenizer, labels and inputs follow `like`, the
    engine exported from `source`."""
    model = load_torch(source, kind)
    layers = None
    if (source / "pruning.json").is_file() and kind != "pytorch eager":
        layers = json.loads((source / "pruning.json").read_text())["layers"]
    return Variant(
        name=name,
        kind=kind,
        precision="fp32",
        path=str(source),
        root=like.root,
        baseline=kind == "pytorch eager",
        parameters=sum(p.numel() for p in model.parameters()),
        size_bytes=_weights_size(source, kind),
        hidden=like.hidden,
        head_size=like.head_size,
        heads=[len(e["kept_heads"]) for e in layers] if layers else list(like.heads),
        ffn=[len(e["kept_ffn"]) for e in layers] if layers else list(like.ffn),
        inputs=[i for i in like.inputs if i in _torch_inputs(model)],
        vocab=like.vocab,
        max_length=like.max_length,
        labels=like.labels,
        label_values=like.label_values,
        task=like.task,
        architecture=like.architecture,
        metric=like.metric,
        positive_label=like.positive_label,
    )


def _torch_inputs(model) -> set[str]:
    """The graph inputs the PyTorch model takes as it is timed (transformers makes positions itself)."""
    import inspect

    names = set(inspect.signature(model.forward).parameters)
    return names - {"position_ids"}


def _weights_size(source: Path, kind: str) -> int:
    """Bytes of weights PyTorch loads: the model's safetensors, plus the base model's for a DSEE checkpoint."""
    size = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    if (source / "dsee_config.json").is_file():
        from ..models import resolve_model

        base = json.loads((source / "dsee_config.json").read_text())["base_model"]["name_or_path"]
        base_dir = Path(resolve_model(base))
        size += sum(f.stat().st_size for f in base_dir.glob("*.safetensors")) if base_dir.is_dir() else 0
    return size


_MODELS: dict[str, object] = {}


def load_torch(source: Path, kind: str):
    from ..checkpoint import is_peft_adapter

    key = f"{kind}:{source}"
    if key not in _MODELS:
        if kind == "pytorch + DSEE branch":
            from ..checkpoint import load_dsee

            model = load_dsee(source)[0]
        elif (source / "dsee_config.json").is_file() or is_peft_adapter(source):
            from ..checkpoint import load_merged

            model = load_merged(source)[0]
        else:
            from transformers import AutoConfig

            from ..tasks import task_of_model

            cls = task_of_model(AutoConfig.from_pretrained(source)).model_class()
            try:
                model = cls.from_pretrained(source, use_safetensors=True)  # never unpickled
            except (OSError, ValueError) as exc:
                raise DSEEError(
                    f"the dense source '{source}' of the PyTorch variant has no safetensors weights (pickle "
                    f"weights are never loaded): save it with save_pretrained(), or pass --no-torch"
                ) from exc
        _MODELS[key] = model.eval()
    return _MODELS[key]


def runner(
    variant: Variant, tokens: tuple[np.ndarray, np.ndarray], threads: int, spin_us: int
) -> Callable[[], object]:
    """A no-argument call that runs `variant` once on `tokens` (ids and mask, as feeds_for makes them)."""
    inputs = variant.feeds(*tokens)
    if variant.kind == "onnxruntime":
        session = _session(variant.path, threads, variant.provider, spin_us)
        return lambda: session.run(None, inputs)
    import torch

    torch.set_num_threads(threads)
    model = load_torch(Path(variant.path), variant.kind)
    tensors = {n: torch.from_numpy(v) for n, v in inputs.items()}

    def run():
        with torch.inference_mode():
            return model(**tensors)

    return run


_SESSIONS: dict[tuple, object] = {}


def _session(path: str, threads: int, provider: str, spin_us: int):
    """One session per engine, intra-op threads fixed, spinning bounded (see BenchConfig.spin_us; the harness
    has checked that this onnxruntime can bound it): with ORT's default spin, the pool of a session that just
    ran keeps the cores busy while the next variant runs."""
    key = (path, threads, provider, spin_us)
    if key not in _SESSIONS:
        _SESSIONS[key] = make_session(
            path, threads=threads, providers=[provider], spin_us=spin_us, sequential=True
        )
    return _SESSIONS[key]


def feeds_for(variants: list[Variant], batch: int, seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(token ids drawn from the vocabulary, attention mask): all positions real, no padding, the same for
    every variant."""
    rng = np.random.default_rng(seed)
    vocab = min(v.vocab for v in variants)
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(batch, seq), dtype=np.int64)
    return ids, np.ones_like(ids)
