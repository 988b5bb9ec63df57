"""Token-classification data (named entities and other tags; issue 44): CoNLL-style files and jsonl with a
token list and a tag list per line, the tagging scheme (IOB1, IOB2, BIOES) read from the tags, the label set, and
word-level tags aligned to word pieces.

CoNLL-style: one `word ... tag` a line (any whitespace; the word first, the tag last, columns between ignored), a
blank line between sentences, `-DOCSTART-` lines skipped. The format is read by hand: `datasets`' own CoNLL
loader is a Hub script, which this project cannot download at run time, and the format is a few lines of code.
Alignment follows transformers' token-classification recipe: the first piece of a word carries its tag, the
other pieces and the special tokens are ignored in the loss (-100)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import DSEEError

TAG = re.compile(r"^(O|[BIES]-.+)$")
IGNORED = -100  # what the loss and the metric skip (transformers' CrossEntropyLoss ignore_index)
PREFIXES = "BIES"


def is_tag(value: str) -> bool:
    return bool(TAG.match(value))


def looks_like_conll(path: str | Path, lines: int = 50) -> bool:
    """Whether `path`'s first `lines` non-blank lines (DOCSTART aside) are `word ... tag`, every tag a tag."""
    seen = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2 or not is_tag(fields[-1]):
                return False
            seen += 1
            if seen >= lines:
                break
    return seen > 0


def read_conll(path: str | Path, flag: str = "--train") -> tuple[list[list[str]], list[list[str]]]:
    """(sentences as word lists, their tags) of a CoNLL-style file; a malformed line is refused in one line
    that names it."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []

    def close():
        if words:
            sentences.append(list(words))
            tags.append(list(labels))
            words.clear()
            labels.clear()

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DSEEError(f"{flag} '{path}' cannot be read ({exc}): pass a CoNLL-style text file") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2 or not is_tag(fields[-1]):
            raise DSEEError(
                f"{flag} '{path}' line {number} is {line.strip()!r}: a CoNLL-style line is `word tag` (the tag "
                f"last: O, or B-, I-, E-, S- and a type), a blank line between sentences"
            )
        words.append(fields[0])
        labels.append(fields[-1])
    close()
    if not sentences:
        raise DSEEError(f"{flag} '{path}' holds no sentence: pass a CoNLL-style file (`word tag` a line)")
    return sentences, tags


def read_tagged_jsonl(
    path: str | Path,
    flag: str = "--train",
    tokens: str = "tokens",
    tags: str = "ner_tags",
    names: list[str] | None = None,
) -> tuple[list[list[str]], list[list[str]]]:
    """(sentences, tags) of jsonl rows with a token list and a tag list (tag strings, or ids into `names`, as
    Hugging Face datasets store them)."""
    sentences, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                words, tagged = row[tokens], row[tags]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DSEEError(
                    f"{flag} '{path}' line {number} has no '{tokens}' and '{tags}' lists ({exc}): name the "
                    f"columns, or pass a CoNLL-style file"
                ) from exc
            if len(words) != len(tagged):
                raise DSEEError(
                    f"{flag} '{path}' line {number} has {len(words)} tokens and {len(tagged)} tags: one tag a token"
                )
            if tagged and isinstance(tagged[0], int):
                if not names:
                    raise DSEEError(
                        f"{flag} '{path}' has tag ids, not tags: pass the tag names (the dataset's ClassLabel "
                        f"names), or write the tags as strings"
                    )
                tagged = [names[i] for i in tagged]
            bad = next((t for t in tagged if not is_tag(str(t))), None)
            if bad is not None:
                raise DSEEError(
                    f"{flag} '{path}' line {number} has tag {bad!r}: tags are O, or B-, I-, E-, S- a type"
                )
            sentences.append([str(w) for w in words])
            labels.append([str(t) for t in tagged])
    return sentences, labels


def scheme_of(tags: list[list[str]]) -> str:
    """BIOES where any tag is E- or S-; IOB1 where entities mostly start with I- (B- only between two entities
    of one type); IOB2 otherwise. By majority: real IOB2 files hold a few entities that start with I- (CoNLL-2003's
    test.txt has some), and IOB1 files a few B-."""
    flat = {t[0] for sentence in tags for t in sentence}
    if flat & {"E", "S"}:
        return "BIOES"
    starts_with_i = starts_with_b = 0
    for sentence in tags:
        previous = "O"
        for tag in sentence:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                starts_with_i += 1
            elif tag.startswith("B-"):
                starts_with_b += 1
            previous = tag
    return "IOB1" if starts_with_i and starts_with_i >= starts_with_b else "IOB2"


def label_list(tags: list[list[str]]) -> list[str]:
    """The label set: O first, then by entity type and B, I, E, S (stable across files with the same types)."""
    found = {t for sentence in tags for t in sentence} - {"O"}
    return ["O", *sorted(found, key=lambda t: (t[2:], PREFIXES.index(t[0])))]


def align(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per word piece: its word's label on the word's first piece, IGNORED on the rest and on special tokens
    (word id None), as a fast tokenizer's `word_ids()` gives them."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORED if word is None or word == previous else word_labels[word])
        previous = word
    return out


def word_tags(
    predictions: list[list[int]], labels: list[list[int]], names: list[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """(true tags, predicted tags) per sentence at word level: the pieces whose label is not IGNORED (each word's
    first piece), from label ids aligned by `align` and the ids predicted for the same pieces."""
    true, predicted = [], []
    for pred_row, label_row in zip(predictions, labels, strict=True):
        kept = [(p, g) for p, g in zip(pred_row, label_row, strict=False) if g != IGNORED]
        true.append([names[g] for _, g in kept])
        predicted.append([names[p] for p, _ in kept])
    return true, predicted


def entity_scores(true: list[list[str]], predicted: list[list[str]], scheme: str = "IOB2") -> dict:
    """Entity-level precision, recall and F1 (x 100; an entity counts when its span and type are exact), and the
    same per entity type, computed by seqeval as conlleval computes them (BIOES read in seqeval's strict mode,
    which conlleval does not know)."""
    from seqeval.metrics import classification_report

    kwargs = {}
    if scheme == "BIOES":
        from seqeval.scheme import IOBES

        kwargs = {"mode": "strict", "scheme": IOBES}
    report = classification_report(true, predicted, output_dict=True, zero_division=0, **kwargs)
    overall = report["micro avg"]
    per_type = {
        name: {"precision": 100 * r["precision"], "recall": 100 * r["recall"], "f1": 100 * r["f1-score"],
               "support": int(r["support"])}
        for name, r in report.items()
        if not name.endswith(" avg")
    }  # fmt: skip
    return {
        "f1": 100 * overall["f1-score"],
        "precision": 100 * overall["precision"],
        "recall": 100 * overall["recall"],
        "per_type": per_type,
    }
