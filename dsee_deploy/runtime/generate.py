"""Text generation through a decoder graph with a KV cache (export/decoder.py): the prompt runs once with an
empty past, then one token per step with the previous step's present keys and values as the past.

numpy, onnxruntime and tokenizers only, as the rest of the runtime. The cache stays in ONNX Runtime's own
buffers between steps: each step's present outputs are bound as the next step's past inputs (IO binding), so
no step copies the cache out to numpy or back. (The graph's Concat of past and new keys still writes the cache
once per step; a shared past/present buffer needs ORT's GroupQueryAttention, which GPT-2's graph does not use.)

Sampling follows transformers' order of logits processors: temperature, then top-k, then top-p (nucleus), then
a draw from numpy's PCG64 seeded per call, so that a seed gives the same tokens on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..architectures import position_ids
from ..errors import DSEEError


@dataclass
class GenerationConfig:
    """What `Engine.generate` and dsee-serve's /v1/generate take; `check` refuses bad values in one line."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings; EOS always stops

    def check(self) -> None:
        def number(name, value, kind=(int, float)):
            if isinstance(value, bool) or not isinstance(value, kind):
                raise DSEEError(f"{name}={value!r} is not a number: pass a {kind_name(kind)}")

        number("max_new_tokens", self.max_new_tokens, int)
        if self.max_new_tokens < 1:
            raise DSEEError(f"max_new_tokens={self.max_new_tokens} generates nothing: pass 1 or more")
        if not isinstance(self.do_sample, bool):
            raise DSEEError(f"do_sample={self.do_sample!r} is not true or false")
        number("temperature", self.temperature)
        # Greedy decoding reads no temperature; 0 is how OpenAI's API spells greedy, so it is taken there.
        if not math.isfinite(self.temperature) or not (
            self.temperature > 0 or (self.temperature == 0 and not self.do_sample)
        ):
            raise DSEEError(
                f"temperature={self.temperature} is not a temperature: pass a number above 0 (1 leaves the "
                f"model's distribution as it is), or do_sample=false for greedy decoding"
            )
        number("top_k", self.top_k, int)
        if self.top_k < 0:
            raise DSEEError(f"top_k={self.top_k} is negative: pass 0 (no top-k filter) or more")
        number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise DSEEError(
                f"top_p={self.top_p} is outside (0, 1]: pass e.g. 0.9, or 1 for no nucleus filter"
            )
        if self.seed is not None:
            number("seed", self.seed, int)
            if self.seed < 0:
                raise DSEEError(f"seed={self.seed} is negative: pass 0 or more")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if not isinstance(self.stop, tuple | list) or not all(isinstance(s, str) and s for s in self.stop):
            shown = list(self.stop) if isinstance(self.stop, tuple | list) else self.stop
            raise DSEEError(f"stop={shown!r}: pass a non-empty string or a list of them")
        self.stop = tuple(self.stop)


def kind_name(kind) -> str:
    return "whole number" if kind is int else "number"


@dataclass
class Cache:
    """The decoder graph's cache: past input and present output names, per layer that keeps heads."""

    past: list[str]
    present: list[str]
    heads: list[int]  # per past input (key and value of each layer)
    head_size: int
    dtype: np.dtype

    @classmethod
    def of(cls, session) -> Cache:
        inputs = {i.name: i for i in session.get_inputs()}
        past = [n for n in inputs if n.startswith("past_key_values.")]
        present = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
        dtype = np.float16 if past and inputs[past[0]].type == "tensor(float16)" else np.float32
        heads = [int(inputs[n].shape[1]) for n in past]
        size = int(inputs[past[0]].shape[3]) if past else 0
        return cls(past, present, heads, size, np.dtype(dtype))


def has_cache(session) -> bool:
    return any(i.name.startswith("past_key_values.") for i in session.get_inputs())


class Decoder:
    """Greedy decoding and sampling over a KV-cache decoder session, for token ids in and out."""

    def __init__(self, session, eos_ids: Sequence[int], pad_id: int, positions: int | None):
        self.session = session
        self.cache = Cache.of(session)
        self.eos = np.array(sorted(set(eos_ids)), np.int64)
        self.pad_id = pad_id
        self.positions = positions
        self.logits_dtype = np.float32

    def steps(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig, done: np.ndarray | None = None
    ) -> Iterator[np.ndarray]:
        """Yield each step's next token per prompt, (batch,) int64, until every row has sampled an EOS, or is
        marked in `done` by the caller (a stop string), or `config.max_new_tokens` steps are done; a row that
        ended gets `pad_id` from then on. Prompts are left padded into one batch."""
        import onnxruntime as ort

        batch, width = len(prompts), max(len(p) for p in prompts)
        ids = np.full((batch, width), self.pad_id, np.int64)
        mask = np.zeros((batch, width), np.int64)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
        positions = position_ids(mask)
        rng = np.random.Generator(np.random.PCG64(config.seed)) if config.do_sample else None
        c = self.cache
        past = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, h, 0, c.head_size), c.dtype)) for h in c.heads
        ]
        done = np.zeros(batch, bool) if done is None else done
        for _ in range(config.max_new_tokens):
            binding = self.session.io_binding()
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", mask)
            binding.bind_cpu_input("position_ids", positions)
            for name, value in zip(c.past, past, strict=True):
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("logits")
            for name in c.present:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits = outputs[0].numpy()[:, -1].astype(np.float32)  # (batch, vocab): the last position's
            past = outputs[1:]
            token = choose(logits, config, rng)
            token[done] = self.pad_id
            ended = np.isin(token, self.eos)
            yield token
            done |= ended
            if done.all():
                return
            ids, positions = token[:, None], positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)


def choose(logits: np.ndarray, config: GenerationConfig, rng) -> np.ndarray:
    """The next token per row of `logits` (batch, vocab): argmax, or a draw after temperature, top-k, top-p."""
    if not config.do_sample:
        return logits.argmax(-1).astype(np.int64)
    scores = logits.astype(np.float64) / config.temperature
    if config.top_k and config.top_k < scores.shape[-1]:
        kth = np.partition(scores, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if config.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, -1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        drop = np.cumsum(sorted_probs, -1) - sorted_probs >= config.top_p
        sorted_probs[drop] = 0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_probs, -1)
        probs /= probs.sum(-1, keepdims=True)
    draws = rng.random(len(probs))[:, None]
    return np.minimum((probs.cumsum(-1) < draws).sum(-1), probs.shape[-1] - 1).astype(np.int64)


class TextStream:
    """The text of one row's generated ids, released as it becomes final: a token that ends inside a
    multi-byte character (byte-level BPE) is held back until the character completes; `stop` strings end it.

    Each token costs the same however long the text has grown: only the ids since the last release are decoded
    (the text of ids[prefix:] less that of ids[prefix:read], as vLLM and TGI detokenize incrementally), and a
    stop string is looked for only where the new text can complete it. Decoding all ids at every token made a
    4,000-token generation quadratic."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""  # the text so far, cut at a stop string; may end in a held-back incomplete character
        self.sent = 0  # characters of it released so far
        self.stopped = False
        self._prefix = self._read = 0  # ids[:read] are released; ids[prefix:read] decode to self._known
        self._known = ""

    def add(self, token: int) -> str:
        """Append `token`; the new text it releases (maybe empty). Sets `stopped` at a stop string."""
        self.ids.append(int(token))
        window = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        released = self.text[: self.sent]
        text = released + window[len(self._known) :]
        for s in self.stop:
            at = text.find(s, max(0, self.sent - len(s) + 1))  # one ending in released text was seen before
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text
        if text.endswith("\ufffd") and not self.stopped:  # an incomplete character: wait for its next byte
            return ""
        # A later token can only extend the text the earlier ones decode to, except where a stop string was
        # cut: release what is new, never text already sent.
        delta, self.sent = text[self.sent :], max(self.sent, len(text))
        self._prefix, self._read = self._read, len(self.ids)
        self._known = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        return delta
