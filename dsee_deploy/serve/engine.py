"""The embeddable engine: an exported directory in, labels and scores (or embeddings) out.

Needs onnxruntime, tokenizers and numpy only (the core install); it never imports torch or transformers.
A batch is tokenized without padding, sorted by length and split into buckets that are each padded to their own
longest input, so a long input does not make every short one pay for its padding.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DSEEError

log = logging.getLogger("dsee_deploy.serve")

# Best first, among those onnxruntime has; CPU is always last, for the nodes the others do not take.
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# The graph output each task reads. causal-lm engines load (their manifest can be read) but do not run here.
TASK_OUTPUTS = {
    "classification": "logits",
    "regression": "logits",
    "feature-extraction": "sentence_embedding",
    "causal-lm": "logits",
}
FEEDABLE = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# The cost of one ORT run, in tokens, for planning buckets. Measured on engines/sst2-s (MiniLM, 2 threads): a
# run costs ~0.8 ms beyond its tokens, which take ~40 us each. Per-sequence costs do not depend on how a batch
# is split, so they drop out of the plan.
RUN_COST_TOKENS = 20
# tokenizer_config.json says model_max_length = 1e30 when the model sets no limit
_NO_LIMIT = 1_000_000

Input = str | tuple[str, str]


@dataclass(frozen=True)
class Padding:
    id: int
    type_id: int
    left: bool


class Engine:
    """An engine directory written by dsee-export (model.onnx, manifest.json, tokenizer.json, config.json).

    Safe to call from several threads: ORT's InferenceSession.run is thread-safe, and the tokenizer is only read
    after `load`. (tokenizers' encode_batch runs concurrently without harm, but its setters raise 'Already
    borrowed' when they race an encode, so truncation and padding are set once, in `load`, and never again.)
    """

    def __init__(
        self,
        path: Path,
        session,
        tokenizer,
        manifest: dict,
        labels: list[str],
        max_length: int,
        padding: Padding,
    ):
        self.path = path
        self.manifest = manifest
        self.task: str = manifest["task"]
        self.labels = labels
        self.max_length = max_length
        self.provider: str = session.get_providers()[0]  # what ORT actually runs on, after any fallback
        self.input_names = [i.name for i in session.get_inputs()]
        self._session = session
        self._tokenizer = tokenizer
        self._padding = padding
        unknown = [n for n in self.input_names if n not in FEEDABLE]
        if unknown:
            raise DSEEError(
                f"engine '{path}' takes input {unknown[0]!r}, which this engine cannot feed (it feeds "
                f"{', '.join(FEEDABLE)}): export the model again with dsee-export"
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_length: int | None = None,
        spin_us: int | None = None,
    ) -> Engine:
        """Load a dsee-export directory.

        `threads` sets ORT's intra-op threads (default: ORT's choice, one per physical core). `providers`
        overrides the pick: TensorRT, then CUDA, then CPU, among those onnxruntime has. `max_length` overrides
        the tokenizer's model_max_length; longer inputs are truncated. `spin_us` bounds how long ORT's idle
        threads busy-wait for more work (ORT's default when None): dsee-serve spins briefly, since between
        runs the cores belong to its event loop and its clients; 0 never spins.
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        manifest = _read_manifest(path)
        model = path / manifest.get("engine", "model.onnx")
        if model.suffix != ".onnx":  # a TensorRT plan: ORT runs the ONNX graph exported beside it, if kept
            if not (path / "model.onnx").is_file():
                raise DSEEError(
                    f"engine '{path}' is a {model.name} without model.onnx, which ONNX Runtime cannot run: "
                    f"serve it with Triton's tensorrt backend, or export with --format onnx for this engine"
                )
            model = path / "model.onnx"
        if not model.is_file():
            raise DSEEError(
                f"engine '{path}' has no {model.name}: export it again with dsee-export CKPT --output {path}"
            )
        if not (path / "tokenizer.json").is_file():
            raise DSEEError(
                f"engine '{path}' has no tokenizer.json: export it again with dsee-export, which saves the "
                f"fast tokenizer beside the model"
            )
        if spin_us is not None and spin_us < 0:
            raise DSEEError(
                f"spin_us={spin_us} is not a duration: pass 0 or more microseconds, or leave it unset"
            )
        if threads is not None and threads < 1:
            raise DSEEError(f"threads={threads} is not a thread count: pass 1 or more, or leave it unset")
        config = _read_json(path / "config.json", {})
        tok_config = _read_json(path / "tokenizer_config.json", {})

        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about node placement on every GPU load: noise to users
        if threads:
            options.intra_op_num_threads = threads
        if spin_us is not None:
            set_spin(options, spin_us)
        chosen = list(providers) if providers else _pick_providers(ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(model), options, providers=[_with_options(p) for p in chosen])
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # ORT and tokenizers raise their own types for unreadable files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DSEEError(
                f"engine '{path}' could not be loaded ({reason}): export it again with dsee-export "
                f"(onnxruntime {ort.__version__} is installed here)"
            ) from exc
        limit = max_length or _max_length(tok_config, config)
        tokenizer.no_padding()  # exported tokenizer.json files often pad everything to a fixed length
        tokenizer.enable_truncation(limit, strategy="longest_first")
        engine = cls(
            path,
            session,
            tokenizer,
            manifest,
            _labels(config),
            limit,
            _padding(tokenizer, tok_config, config),
        )
        log.info(
            "engine %s: %s, provider %s, intra-op threads %s, max length %d",
            path,
            engine.task,
            engine.provider,
            threads or "ORT default",
            limit,
        )
        return engine

    def predict(self, inputs: Sequence[Input], batch_size: int = 32) -> list[dict]:
        """Per input: {"label", "score", "scores": {label: probability}} (classification, softmax of the
        logits) or {"value"} (regression). An input is a text or a (text, text_pair) pair."""
        if self.task not in _PREDICTIONS:
            raise DSEEError(self._wrong_task("predict"))
        logits = self.run(inputs, batch_size)  # (n, num_labels) float32
        return _PREDICTIONS[self.task](self, logits)

    def embed(self, inputs: Sequence[Input], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings, (n, hidden) float32, of a feature-extraction engine."""
        if self.task != "feature-extraction":
            raise DSEEError(self._wrong_task("embed"))
        return self.run(inputs, batch_size)

    def run(self, inputs: Sequence[Input], batch_size: int = 32) -> np.ndarray:
        """The task's raw graph output (logits or sentence embeddings) for `inputs`, in their order."""
        items = _check_inputs(inputs)
        if batch_size < 1:
            raise DSEEError(f"batch_size={batch_size} is not a batch size: pass 1 or more")
        output = TASK_OUTPUTS[self.task]
        if not items:
            width = self._session.get_outputs()[0].shape[-1]
            return np.zeros((0, width if isinstance(width, int) else 0), np.float32)
        encodings = self._tokenizer.encode_batch(items)
        lengths = [len(e.ids) for e in encodings]
        order = sorted(range(len(items)), key=lengths.__getitem__)
        result = None
        for start, stop in plan_buckets([lengths[i] for i in order], batch_size):
            rows = order[start:stop]
            feeds = self._feeds([encodings[i] for i in rows], lengths[rows[-1]])
            (values,) = self._session.run([output], feeds)  # (len(rows), ...) for this bucket
            if result is None:
                result = np.empty((len(items), *values.shape[1:]), values.dtype)
            result[rows] = values
        return result

    def _feeds(self, encodings, width: int) -> dict[str, np.ndarray]:
        n, pad = len(encodings), self._padding
        ids = np.full((n, width), pad.id, np.int64)
        types = np.full((n, width), pad.type_id, np.int64)
        mask = np.zeros((n, width), np.int64)
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            cols = slice(width - k, width) if pad.left else slice(0, k)
            ids[row, cols] = enc.ids
            types[row, cols] = enc.type_ids
            mask[row, cols] = 1
        tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        if "position_ids" in self.input_names:  # counts real tokens only, so left padding works too
            tensors["position_ids"] = np.maximum(mask.cumsum(1) - 1, 0)
        return {name: tensors[name] for name in self.input_names}

    def _wrong_task(self, verb: str) -> str:
        if verb == "embed":
            return (
                f"engine '{self.path}' is a {self.task} engine, so it has no sentence embeddings: export the "
                f"model with feature extraction (dsee-export CKPT --output DIR --task feature-extraction) and "
                f"embed with that engine"
            )
        if self.task == "feature-extraction":
            return f"engine '{self.path}' is a feature-extraction engine, so it has no labels: call embed()"
        return (
            f"engine '{self.path}' is a {self.task} engine: predict() serves classification and regression "
            f"engines; text generation is not served by this version"
        )

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r}, task={self.task!r}, provider={self.provider!r})"


# session.intra_op.spin_duration_us came with onnxruntime PR #27916 (April 2026); this is the first release we
# ran it on. Older releases accept the key without a word and spin as long as they always did.
BOUNDED_SPIN_SINCE = (1, 31)


def spin_in_force(spin_us: int) -> int:
    """The spin bound this onnxruntime can honour for a requested `spin_us`: 0 (no spinning) where it cannot
    bound the spin at all, since its unbounded default would take the cores of whatever runs next."""
    import onnxruntime as ort

    version = tuple(int(x) for x in ort.__version__.split(".")[:2] if x.isdigit())
    if spin_us and version < BOUNDED_SPIN_SINCE:
        log.warning(
            "onnxruntime %s cannot bound its threads' spin (%d.%d can): they will not spin at all; "
            "pip install -U onnxruntime for the bounded spin",
            ort.__version__,
            *BOUNDED_SPIN_SINCE,
        )
        return 0
    return spin_us


def set_spin(options, spin_us: int) -> int:
    """Let the intra-op threads of `options`' session busy-wait at most `spin_us` microseconds for work (0:
    never); returns the bound in force (see spin_in_force)."""
    spin_us = spin_in_force(spin_us)
    if spin_us == 0:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return spin_us


def plan_buckets(
    lengths: Sequence[int], max_batch: int, run_cost: int = RUN_COST_TOKENS
) -> list[tuple[int, int]]:
    """Split ascending `lengths` into contiguous buckets [start, stop) of at most `max_batch`, each padded to
    its longest, minimising the total of `run_cost` per bucket plus padded tokens (dynamic programming)."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest plan for the first j inputs
    start = [0] * (n + 1)
    for stop in range(1, n + 1):
        width = lengths[stop - 1]  # ascending: the last input of a bucket is its longest
        for s in range(max(0, stop - max_batch), stop):
            cost = best[s] + run_cost + (stop - s) * width
            if cost < best[stop]:
                best[stop], start[stop] = cost, s
    buckets, stop = [], n
    while stop:
        buckets.append((start[stop], stop))
        stop = start[stop]
    return buckets[::-1]


def _classify(engine: Engine, logits: np.ndarray) -> list[dict]:
    labels = engine.labels or [f"LABEL_{i}" for i in range(logits.shape[1])]  # config.json without id2label
    if logits.shape[1] != len(labels):
        raise DSEEError(
            f"engine '{engine.path}' gives {logits.shape[1]} logits but config.json names {len(labels)} "
            f"labels: export it again so that config.json id2label matches the model"
        )
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))})
    return out


def _regress(engine: Engine, logits: np.ndarray) -> list[dict]:
    return [{"value": v} for v in logits[:, 0].astype(np.float64).tolist()]


_PREDICTIONS = {"classification": _classify, "regression": _regress}


def _check_inputs(inputs) -> list[Input]:
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
        raise DSEEError(
            f"inputs is a {type(inputs).__name__}: pass a list of texts or (text, text_pair) pairs, "
            f"e.g. predict(['a gripping film'])"
        )
    items = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            items.append(x)
        elif isinstance(x, tuple | list) and len(x) == 2 and all(isinstance(t, str) for t in x):
            items.append((x[0], x[1]))
        else:
            raise DSEEError(
                f"inputs[{i}] is {_describe(x)}: pass a text or a (text, text_pair) pair of texts"
            )
    return items


def _describe(x) -> str:
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise DSEEError(f"engine directory '{path}' does not exist: pass a directory written by dsee-export")
    manifest = _read_json(path / "manifest.json", None)
    if manifest is None:
        raise DSEEError(
            f"'{path}' has no manifest.json, so it was not written by dsee-export: export the model with "
            f"dsee-export CKPT --output {path}"
        )
    task = manifest.get("task")
    if task not in TASK_OUTPUTS:
        raise DSEEError(
            f"'{path}/manifest.json' names task {task!r}: expected one of {', '.join(TASK_OUTPUTS)}; export "
            f"the model again with dsee-export"
        )
    return manifest


def _read_json(path: Path, missing):
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DSEEError(f"'{path}' is not readable JSON ({exc}): export the engine again") from exc


def _pick_providers(available: Sequence[str]) -> list[str]:
    return [p for p in PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _with_options(provider: str):
    if provider != "TensorrtExecutionProvider":
        return provider
    # TensorRT builds an engine per input shape profile: keep them between runs and processes.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dsee-deploy" / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    return provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}


def _max_length(tok_config: dict, config: dict) -> int:
    limit = tok_config.get("model_max_length")
    if isinstance(limit, int | float) and 0 < limit < _NO_LIMIT:
        return int(limit)
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    return int(positions) if positions else 512


def _labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def _padding(tokenizer, tok_config: dict, config: dict) -> Padding:
    token = tok_config.get("pad_token")
    token = token.get("content") if isinstance(token, dict) else token
    pad_id = tokenizer.token_to_id(token) if token else None
    if pad_id is None:
        pad_id = config.get("pad_token_id") or 0
    return Padding(
        id=int(pad_id),
        type_id=int(tok_config.get("pad_token_type_id", 0)),
        left=tok_config.get("padding_side", "right") == "left",
    )
