"""Texts to graph inputs: the engine's own tokenizer (tokenizer.json), truncated at one max length, and batches
planned by length. A batch is tokenized without padding, sorted by length and split into buckets that are each
padded to their own longest input, so a long input does not make every short one pay for its padding.
Pre-tokenized inputs (TokenIds) join the same batches as their own encodings."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DSEEError

# The cost of one ORT run, in tokens, for planning buckets. Measured on engines/sst2-s (MiniLM, 2 threads): a
# run costs ~0.8 ms beyond its tokens, which take ~40 us each. Per-sequence costs do not depend on how a batch
# is split, so they drop out of the plan.
RUN_COST_TOKENS = 20


@dataclass(frozen=True)
class TokenIds:
    """A pre-tokenized input (OpenAI's token arrays): the whole sequence the model runs, special tokens included,
    never truncated. It stands in for the tokenizer's Encoding (`ids`, `type_ids`) wherever texts are padded, so
    that it batches with texts. Made by TextEncoder.token_ids, which checks it against the tokenizer."""

    ids: tuple[int, ...]

    @property
    def type_ids(self) -> tuple[int, ...]:
        return (0,) * len(self.ids)  # one segment: a pair cannot be told apart in a flat list of ids


Input = str | tuple[str, str] | TokenIds


@dataclass(frozen=True)
class Padding:
    id: int
    type_id: int
    left: bool


class TextEncoder:
    """The tokenizer of an engine directory, truncating at `max_length`, padding per bucket.

    Safe to share between threads: tokenizers' encode_batch runs concurrently without harm, but its setters
    raise 'Already borrowed' when they race an encode, so truncation and padding are set once, here."""

    def __init__(self, tokenizer, max_length: int, padding: Padding, vocab_size: int | None = None):
        tokenizer.no_padding()  # exported tokenizer.json files often pad everything to a fixed length
        tokenizer.enable_truncation(max_length, strategy="longest_first")
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        # Ids a TokenIds may hold: the tokenizer's, and no more than the model embeds (config.json's vocab_size).
        self.vocab_size = min(tokenizer.get_vocab_size(with_added_tokens=True), vocab_size or math.inf)

    @classmethod
    def from_dir(cls, path: str | Path, max_length: int) -> TextEncoder:
        """The tokenizer.json of `path`, with the pad token and side of its tokenizer_config.json."""
        from tokenizers import Tokenizer

        path = Path(path)
        tok_config = read_json(path / "tokenizer_config.json", {})
        config = read_json(path / "config.json", {})
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        vocab_size = config.get("vocab_size")
        return cls(
            tokenizer,
            max_length,
            _padding(tokenizer, tok_config, config),
            vocab_size if isinstance(vocab_size, int) else None,
        )

    def encode(self, items: Sequence[Input]) -> list:
        """One encoding (`ids`, `type_ids`) per item, in order: texts tokenized, each TokenIds its own."""
        texts = [x for x in items if not isinstance(x, TokenIds)]
        if len(texts) == len(items):
            return self._tokenizer.encode_batch(list(items))
        encoded = iter(self._tokenizer.encode_batch(texts))
        return [x if isinstance(x, TokenIds) else next(encoded) for x in items]

    def token_ids(self, values, where: str) -> TokenIds:
        """`values` as a TokenIds, or a DSEEError naming `where`, what is wrong and the fix: a non-empty list of
        ints within the vocabulary, at most `max_length` of them (they are never truncated)."""
        if not isinstance(values, list | tuple) or not all(type(v) is int for v in values):
            raise DSEEError(
                f"{where} is not a list of token ids: send a text, or a list of integer token ids"
            )
        if not values:
            raise DSEEError(f"{where} is an empty list of token ids: send at least one token id, or a text")
        if len(values) > self.max_length:
            raise DSEEError(
                f"{where} has {len(values)} token ids, over the engine's max length of {self.max_length}: send "
                f"at most {self.max_length} (token ids are never truncated), or send the text"
            )
        bad = next((j for j, v in enumerate(values) if not 0 <= v < self.vocab_size), None)
        if bad is not None:
            raise DSEEError(
                f"{where} has token id {values[bad]} at position {bad}, outside the vocabulary (0 to "
                f"{self.vocab_size - 1}): send ids from this engine's tokenizer.json"
            )
        return TokenIds(tuple(values))

    def pad(self, encodings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, attention_mask, token_type_ids), each (n, longest), padded on the tokenizer's side."""
        n, width, pad = len(encodings), max(len(e.ids) for e in encodings), self.padding
        ids = np.full((n, width), pad.id, np.int64)
        types = np.full((n, width), pad.type_id, np.int64)
        mask = np.zeros((n, width), np.int64)
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            cols = slice(width - k, width) if pad.left else slice(0, k)
            ids[row, cols] = enc.ids
            types[row, cols] = enc.type_ids
            mask[row, cols] = 1
        return ids, mask, types


def run_texts(
    items: Sequence[Input],
    encoder: TextEncoder,
    feeds: Callable[[np.ndarray, np.ndarray, np.ndarray], dict],
    run: Callable[[dict], np.ndarray],
    batch_size: int = 32,
) -> np.ndarray | None:
    """`run(feeds(ids, mask, types))` over `items` in length buckets of at most `batch_size`; the rows of the
    outputs in the order of `items` (None for no items). The one way texts are run, by the engine and by every
    evaluation, so that they batch (and, for dynamic int8, quantize activations) alike."""
    return run_encodings(encoder.encode(items), encoder, feeds, run, batch_size)


def run_encodings(
    encodings: Sequence,
    encoder: TextEncoder,
    feeds: Callable[[np.ndarray, np.ndarray, np.ndarray], dict],
    run: Callable[[dict], np.ndarray],
    batch_size: int = 32,
) -> np.ndarray | None:
    """run_texts on inputs already encoded (by `encoder.encode`): for a caller that also needs their lengths."""
    if batch_size < 1:
        raise DSEEError(f"batch_size={batch_size} is not a batch size: pass 1 or more")
    lengths = [len(e.ids) for e in encodings]
    order = sorted(range(len(encodings)), key=lengths.__getitem__)
    result = None
    for start, stop in plan_buckets([lengths[i] for i in order], batch_size):
        rows = order[start:stop]
        values = run(feeds(*encoder.pad([encodings[i] for i in rows])))  # (len(rows), ...) for this bucket
        if result is None:
            result = np.empty((len(encodings), *values.shape[1:]), values.dtype)
        result[rows] = values
    return result


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


def read_json(path: Path, missing):
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DSEEError(f"'{path}' is not readable JSON ({exc}): export the engine again") from exc


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
