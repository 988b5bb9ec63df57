"""The embeddable engine: an exported directory in, labels and scores (or embeddings) out.

Needs onnxruntime, tokenizers and numpy only (the core install); it never imports torch or transformers. It is
the runtime layer (dsee_deploy.runtime: session, tokenization, feeds) plus the task's answer
(dsee_deploy.tasks), read through the engine's Manifest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..architectures import get_spec
from ..errors import DSEEError
from ..manifest import Manifest
from ..runtime import TextEncoder, make_session, run_texts
from ..runtime.generate import Decoder, has_cache
from ..runtime.text import Input, TokenIds, read_json, run_encodings
from .engine_generation import Generation
from .inputs import check_inputs

log = logging.getLogger("dsee_deploy.serve")


class Engine(Generation):
    """An engine directory written by dsee-export (model.onnx, manifest.json, tokenizer.json, config.json).

    Safe to call from several threads: ORT's InferenceSession.run is thread-safe, and the tokenizer is only
    read after `load` (see runtime.TextEncoder).
    """

    def __init__(
        self,
        path: Path,
        session,
        encoder: TextEncoder,
        manifest: Manifest,
        labels: list[str],
        config: dict | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.task: str = manifest.task
        self.labels = labels
        self.max_length = encoder.max_length
        self.width: int | None = None  # values per input of the task's output, once load has run one
        self.provider: str = session.get_providers()[0]  # what ORT actually runs on, after any fallback
        self.input_names = [i.name for i in session.get_inputs()]
        self._spec = get_spec(manifest.architecture)
        self._task = manifest.spec
        self._session = session
        self._encoder = encoder
        self._decoder = None  # a causal LM's KV-cache graph: generate()
        if has_cache(session):
            config = config or {}
            eos = config.get("eos_token_id")
            eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            positions = self._spec.max_tokens(config) if config else None
            self._decoder = Decoder(session, eos, encoder.padding.id, positions)
            self._bos = config.get("bos_token_id")
        if self._task.verb == "generate":  # prompts and texts to score: tokenized as they are
            self._prompts = _prompt_tokenizer(path)
        self.feeds(*encoder.pad(encoder.encode(["a"])))  # refuses unknown inputs

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_length: int | None = None,
        spin_us: int | None = None,
        verify: bool = True,
    ) -> Engine:
        """Load a dsee-export directory.

        `threads` sets ORT's intra-op threads (default: ORT's choice, one per physical core). `providers`
        overrides the pick: TensorRT, then CUDA, then CPU, among those onnxruntime has. `max_length`: inputs
        are truncated to the length the model was tuned with (the manifest's), as every evaluation of the
        engine truncates them; pass a length to override. `spin_us` bounds how long ORT's idle threads
        busy-wait for more work (ORT's default when None): dsee-serve spins briefly, since between runs the
        cores belong to its event loop and its clients; 0 never spins. `verify` checks every file against the
        sha256 the manifest records (it reads each file once: ~0.1 s for MiniLM's 90 MB; pass False where the
        directory is verified elsewhere, e.g. a read-only image checked at build time).
        """
        path = Path(path)
        _check_max_length(max_length)
        manifest = Manifest.read(path, verify=verify)
        model = _graph_file(path, manifest)
        _check_threads(threads, spin_us)
        config = _read_config(path, manifest, max_length)
        limit = max_length or manifest.max_length
        session, encoder = _open(path, model, limit, threads, providers, spin_us)
        engine = cls(path, session, encoder, manifest, _labels(config), config)
        engine._check_outputs()
        log.info(
            "engine %s: %s, provider %s, intra-op threads %s, max length %d",
            path,
            engine.task,
            engine.provider,
            threads or "ORT default",
            limit,
        )
        return engine

    def _check_outputs(self) -> None:
        """One short input through the graph: it runs, and its output fits the task and config.json's labels
        (else a server would report ready and answer every request 500)."""
        try:
            width = self.run(["a"]).shape[-1]
        except DSEEError:
            raise
        except Exception as exc:  # ORT's own error types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DSEEError(
                f"engine '{self.path}' does not run ({reason}): export it again with dsee-export"
            ) from exc
        self.width = width
        expected = self._task.output_width(self.labels, self.manifest.hidden_size)
        if expected is not None and width != expected:
            raise DSEEError(
                f"engine '{self.path}' gives {width} outputs per input, but its {self.task} task with config.json "
                f"expects {expected}: the graph and config.json come from different models; export it again"
            )

    def predict(self, inputs: Sequence[Input], batch_size: int = 32) -> list[dict]:
        """Per input: {"label", "score", "scores": {label: probability}} (classification, softmax of the
        logits) or {"value"} (regression). An input is a text or a (text, text_pair) pair."""
        if self._task.verb != "predict":
            raise DSEEError(self._wrong_task("predict"))
        logits = self.run(inputs, batch_size)  # (n, num_labels) float32
        labels = self.labels or [f"LABEL_{i}" for i in range(logits.shape[1])]  # config.json without id2label
        if self._task.labelled and self.labels and logits.shape[1] != len(labels):
            raise DSEEError(
                f"engine '{self.path}' gives {logits.shape[1]} logits but config.json names {len(labels)} "
                f"labels: export it again so that config.json id2label matches the model"
            )
        return self._task.answer(logits, labels)

    def embed(self, inputs: Sequence[Input], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings, (n, hidden) float32, of a feature-extraction engine. An input is a text, a (text,
        text_pair) pair, or token ids from `engine.encoder.token_ids(ids, where)`, run as given."""
        return self.embed_counted(inputs, batch_size)[0]

    def embed_counted(self, inputs: Sequence[Input], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """`embed`'s embeddings, and the tokens each input ran as (after truncation, special tokens included):
        what OpenAI's usage.prompt_tokens counts, from the one tokenization the engine runs."""
        if self._task.verb != "embed":
            raise DSEEError(self._wrong_task("embed"))
        items = self._items(inputs)
        if not items:
            return self.run([]), []
        encodings = self._encoder.encode(items)
        embeddings = run_encodings(encodings, self._encoder, self.feeds, self.run_feeds, batch_size)
        return embeddings, [len(e.ids) for e in encodings]

    def run(self, inputs: Sequence[Input], batch_size: int = 32) -> np.ndarray:
        """The task's raw graph output (logits or sentence embeddings) for `inputs`, in their order."""
        items = self._items(inputs)
        if not items:
            width = self._session.get_outputs()[0].shape[-1]
            return np.zeros((0, width if isinstance(width, int) else 0), np.float32)

        return run_texts(items, self._encoder, self.feeds, self.run_feeds, batch_size)

    def _items(self, inputs: Sequence[Input]) -> list[Input]:
        """`inputs` checked: texts valid Unicode, token ids within this engine's vocabulary and max length (a
        TokenIds made for another engine would otherwise fail inside ORT, or index past the embeddings)."""
        items = check_inputs(inputs)
        for i, x in enumerate(items):
            if isinstance(x, TokenIds):
                self._encoder.token_ids(x.ids, f"inputs[{i}]")
        return items

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The task's graph output for ready graph inputs (see `feeds`)."""
        return self._session.run([self._task.engine_output], feeds)[0]

    @property
    def encoder(self) -> TextEncoder:
        """How this engine tokenizes: its tokenizer, truncating at `max_length`."""
        return self._encoder

    def feeds(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
        """This engine's graph inputs for padded token ids, as the architecture builds them (a KV-cache
        decoder's past is empty: the whole sequence runs at once)."""
        if self._decoder is None:
            return self._spec.feeds(self.input_names, ids, mask, types)
        c = self._decoder.cache
        names = [n for n in self.input_names if n not in set(c.past)]
        empty = {
            n: np.zeros((len(ids), h, 0, c.head_size), c.dtype) for n, h in zip(c.past, c.heads, strict=True)
        }
        return {**self._spec.feeds(names, ids, mask, types), **empty}

    def _wrong_task(self, verb: str) -> str:
        if verb == "embed":
            return (
                f"engine '{self.path}' is a {self.task} engine, so it has no sentence embeddings: export the "
                f"model with feature extraction (dsee-export CKPT --output DIR --task feature-extraction) and "
                f"embed with that engine"
            )
        if self._task.verb == "embed":
            return f"engine '{self.path}' is a feature-extraction engine, so it has no labels: call embed()"
        if self._task.verb == "generate":
            return (
                f"engine '{self.path}' is a {self.task} engine: predict() serves classification and regression "
                f"engines; call generate() on this one"
            )
        return (
            f"engine '{self.path}' is a {self.task} engine: predict() serves classification and regression "
            f"engines"
        )

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r}, task={self.task!r}, provider={self.provider!r})"


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
        raise DSEEError(f"max_length={max_length!r} is not a token count: pass an int of 2 or more")
    if max_length is not None and max_length < 2:
        raise DSEEError(f"max_length={max_length} is too short: pass 2 or more, or leave it unset")


def _graph_file(path: Path, manifest: Manifest) -> Path:
    """The ONNX graph ORT runs (model.onnx beside a TensorRT plan), refused where it or the tokenizer is missing."""
    model = path / manifest.engine
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
    return model


def _check_threads(threads: int | None, spin_us: int | None) -> None:
    if spin_us is not None and spin_us < 0:
        raise DSEEError(
            f"spin_us={spin_us} is not a duration: pass 0 or more microseconds, or leave it unset"
        )
    if threads is not None and threads < 1:
        raise DSEEError(f"threads={threads} is not a thread count: pass 1 or more, or leave it unset")


def _read_config(path: Path, manifest: Manifest, max_length: int | None) -> dict:
    """The engine's config.json (labels, model geometry), refused where `max_length` is beyond its positions."""
    if not (path / "config.json").is_file():
        raise DSEEError(
            f"engine '{path}' has no config.json (its labels and model geometry): export it again with "
            f"dsee-export CKPT --output {path} --overwrite"
        )
    config = read_json(path / "config.json", {})
    positions = get_spec(manifest.architecture).max_tokens(config) if config else None
    if max_length is not None and positions and max_length > positions:
        raise DSEEError(
            f"max_length={max_length} is beyond the model's {positions} positions: pass {positions} or less, "
            f"or leave it unset ({manifest.max_length}, what it was tuned with)"
        )
    return config


def _open(
    path: Path,
    model: Path,
    limit: int,
    threads: int | None,
    providers: Sequence[str] | None,
    spin_us: int | None,
) -> tuple:
    """(ORT session of `model`, TextEncoder truncating to `limit`), one line of DSEEError where either fails."""
    import onnxruntime as ort  # as in runtime.session: imported when an engine loads, not with the package

    try:
        session = make_session(model, threads=threads, providers=providers, spin_us=spin_us)
        encoder = TextEncoder.from_dir(path, limit)
    except DSEEError:
        raise
    except Exception as exc:  # ORT and tokenizers raise their own types for unreadable files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DSEEError(
            f"engine '{path}' could not be loaded ({reason}): export it again with dsee-export "
            f"(onnxruntime {ort.__version__} is installed here)"
        ) from exc
    return session, encoder


def _prompt_tokenizer(path: Path):
    """The engine's tokenizer for prompts: no special tokens added, no truncation (a prompt too long for the
    model is refused, never cut), no padding. Its own instance: TextEncoder's truncation is set once for
    thread safety, so it cannot be switched off per call."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]
