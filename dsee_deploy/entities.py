"""Per-token scores to entities with character offsets, as transformers' token-classification pipeline makes them
(aggregation strategies none, simple, first, max, average), with numpy and a `tokenizers` Encoding only: the
Engine and the server have no transformers (issue 44).

It is written here, not called from transformers: the pipeline's aggregation is methods of a pipeline object that
needs a PyTorch model. The steps and their order follow TokenClassificationPipeline (transformers 4.57):
gather_pre_entities, aggregate (aggregate_words, group_entities), then the "O" entities dropped; the test
checks the result against the pipeline itself for every strategy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import DSEEError

STRATEGIES = ("none", "simple", "first", "max", "average")
IGNORE = ("O",)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Scores from logits over the last axis, shifted by the maximum as the pipeline computes them."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entities(
    text: str,
    encoding,
    scores: np.ndarray,
    labels: Sequence[str],
    strategy: str = "simple",
    decode: Callable[[list[str]], str] | None = None,
    subword_prefix: str | None = "##",
    unk_id: int | None = None,
) -> list[dict]:
    """The entities of `text`: `encoding` is its tokenizers Encoding (tokens, ids, offsets, special-token mask),
    `scores` (tokens, labels) its softmax scores; `decode` joins tokens to a string (the tokenizer's decoder);
    `subword_prefix` is the tokenizer model's continuing-subword prefix (None where it has none: a heuristic on
    spaces decides what continues a word, as the pipeline's fallback does)."""
    if strategy not in STRATEGIES:
        raise DSEEError(f"aggregation strategy '{strategy}' is not one of {', '.join(STRATEGIES)}")
    decode = decode or " ".join
    pre = _pre_entities(text, encoding, scores, subword_prefix, unk_id)
    if strategy in ("none", "simple"):
        found = []
        for entity in pre:
            best = int(entity["scores"].argmax())
            found.append(
                {
                    "entity": labels[best],
                    "score": entity["scores"][best],
                    "index": entity["index"],
                    "word": entity["word"],
                    "start": entity["start"],
                    "end": entity["end"],
                }
            )
    else:
        found = _words(pre, strategy, labels, decode)
    if strategy != "none":
        found = _group(found, decode)
    return [e for e in found if e.get("entity") not in IGNORE and e.get("entity_group") not in IGNORE]


def _pre_entities(text: str, encoding, scores: np.ndarray, subword_prefix, unk_id) -> list[dict]:
    pre = []
    for idx, token_scores in enumerate(scores):
        if encoding.special_tokens_mask[idx]:
            continue
        word = encoding.tokens[idx]
        start, end = encoding.offsets[idx]
        reference = text[start:end]
        if subword_prefix:
            is_subword = len(word) != len(reference)
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if unk_id is not None and encoding.ids[idx] == unk_id:
            word, is_subword = reference, False
        pre.append(
            {
                "word": word,
                "scores": token_scores,
                "start": start,
                "end": end,
                "index": idx,
                "is_subword": is_subword,
            }
        )
    return pre


def _words(pre: list[dict], strategy: str, labels, decode) -> list[dict]:
    """Tokens of one word agree on the word's label (first, max or average of their scores)."""
    groups: list[list[dict]] = []
    for entity in pre:
        if groups and entity["is_subword"]:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    words = []
    for group in groups:
        if strategy == "first":
            chosen = group[0]["scores"]
        elif strategy == "max":
            chosen = max(group, key=lambda e: e["scores"].max())["scores"]
        else:
            chosen = np.nanmean(np.stack([e["scores"] for e in group]), axis=0)
        best = int(chosen.argmax())
        words.append(
            {
                "entity": labels[best],
                "score": chosen[best],
                "word": decode([e["word"] for e in group]),
                "start": group[0]["start"],
                "end": group[-1]["end"],
            }
        )
    return words


def _tag(name: str) -> tuple[str, str]:
    if name.startswith(("B-", "I-")):
        return name[0], name[2:]
    return "I", name  # not in B-/I- form: a continuation


def _group(found: list[dict], decode) -> list[dict]:
    """Adjacent tokens (or words) of one type grouped into an entity; a B- starts a new one."""
    groups: list[list[dict]] = []
    for entity in found:
        bi, tag = _tag(entity["entity"])
        if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [
        {
            "entity_group": group[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([e["score"] for e in group])),
            "word": decode([e["word"] for e in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        }
        for group in groups
    ]
