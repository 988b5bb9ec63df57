"""The checks every engine input passes: a list of texts or (text, text pair) pairs, each valid Unicode, or token
ids made by the engine's TextEncoder.token_ids (the Python API's Engine.predict and the server's request parsing
alike)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DSEEError
from ..runtime.text import Input, TokenIds


def check_inputs(inputs) -> list[Input]:
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
        raise DSEEError(
            f"inputs is a {type(inputs).__name__}: pass a list of texts or (text, text_pair) pairs, "
            f"e.g. predict(['a gripping film'])"
        )
    items = []
    for i, x in enumerate(inputs):
        if isinstance(x, TokenIds):  # checked against the vocabulary by the engine, which knows it
            items.append(x)
            continue
        if isinstance(x, str):
            items.append(x)
        elif isinstance(x, tuple | list) and len(x) == 2 and all(isinstance(t, str) for t in x):
            items.append((x[0], x[1]))
        else:
            raise DSEEError(
                f"inputs[{i}] is {describe_input(x)}: pass a text or a (text, text_pair) pair of texts"
            )
        check_text(items[-1], f"inputs[{i}]")
    return items


def check_text(item: Input, where: str) -> None:
    """Refuse text the tokenizer cannot take: a lone surrogate (valid in JSON and in a Python str, not in
    UTF-8) would otherwise fail deep inside tokenizers with a TypeError."""
    for text in item if isinstance(item, tuple) else (item,):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DSEEError(
                f"{where} is not valid Unicode text (a lone surrogate {text[exc.start]!r} at character "
                f"{exc.start}): send UTF-8 text"
            ) from None


def describe_input(x) -> str:
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"
