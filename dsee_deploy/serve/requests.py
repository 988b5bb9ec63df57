"""Reading and checking dsee-serve's request bodies, shared by its routes: /v1/predict and /v1/embed (parse_inputs),
/v1/generate (parse_generation), OpenAI's /v1/embeddings (parse_embeddings), each body read with a size and time
limit (read_body).

Bodies are parsed here rather than by pydantic, so that every bad request gets one status and one line saying
what to change: malformed JSON 400, a wrong shape 422 (400 on /v1/embeddings, as OpenAI answers), too many or
too long inputs 413, a body too slow 408.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.requests import Request

from ..errors import DSEEError
from ..runtime.generate import GenerationConfig
from ..runtime.text import Input
from .inputs import check_text
from .options import ServeOptions

# What a /v1/generate body may set, and the bounds of its stop strings.
PARAMETERS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "stop")
MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 256

# What a /v1/embeddings body may hold (OpenAI's fields), and its encodings.
EMBEDDINGS_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")
ENCODINGS = ("float", "base64")

# JSON can spell one character in up to 12 bytes (a surrogate pair as two \uXXXX escapes).
BYTES_PER_CHAR = 12
# A token id in a JSON array: up to 10 digits, a comma and a space.
BYTES_PER_ID = 12


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class EmbeddingsRequest:
    """A checked /v1/embeddings body."""

    inputs: list[Input]  # texts, and TokenIds for token arrays
    model: str  # answered back as sent (one engine is served, whatever it is called)
    base64: bool  # encoding_format "base64": little-endian float32 bytes, base64-encoded


def _json(body: bytes, example: str):
    """The body's JSON, or a 400 that shows `example`."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc}): send {example}") from exc
    except RecursionError:
        raise RequestError(400, f"the body nests JSON too deeply to parse: send {example}") from None


def _too_many(field: str, count: int, options: ServeOptions) -> RequestError:
    return RequestError(
        413,
        f'"{field}" holds {count} inputs, over the limit of {options.max_inputs}: split the request, '
        f"or start dsee-serve with a larger --max-inputs",
    )


def _too_long(where: str, chars: int, options: ServeOptions) -> RequestError:
    return RequestError(
        413,
        f"{where} has a text of {chars} characters, over the limit of {options.max_chars}: "
        f"shorten it, or start dsee-serve with a larger --max-chars",
    )


def parse_inputs(body: bytes, options: ServeOptions) -> list:
    """The inputs of a request body, or a RequestError that says what to change."""
    data = _json(body, '{"inputs": ["a text"]}')
    if not isinstance(data, dict) or "inputs" not in data:
        raise RequestError(
            422, 'the body has no "inputs": send {"inputs": ["a text", ["a text", "its pair"]]}'
        )
    inputs = data["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, '"inputs" must be a non-empty list of texts or [text, text pair] pairs')
    if len(inputs) > options.max_inputs:
        raise _too_many("inputs", len(inputs), options)
    items = []
    for i, x in enumerate(inputs):
        if isinstance(x, list) and len(x) == 2 and all(isinstance(t, str) for t in x):
            x = (x[0], x[1])
        elif not isinstance(x, str):
            raise RequestError(422, f"inputs[{i}] is not a text or a [text, text pair] pair of texts")
        try:
            check_text(x, f"inputs[{i}]")
        except DSEEError as exc:
            raise RequestError(422, str(exc)) from None
        longest = max(map(len, x)) if isinstance(x, tuple) else len(x)
        if longest > options.max_chars:
            raise _too_long(f"inputs[{i}]", longest, options)
        items.append(x)
    return items


def parse_embeddings(body: bytes, options: ServeOptions, engine) -> EmbeddingsRequest:
    """A /v1/embeddings body (OpenAI's embeddings request), or a RequestError: 400 where OpenAI answers 400, 413
    beyond the server's limits. `input` is a text, a list of texts, a token array (a list of ints: one input)
    or a list of token arrays; token arrays run as given (special tokens included), checked by the engine's
    tokenizer. `dimensions` must be the engine's width: it does not truncate embeddings. `user` is ignored."""
    data = _json(body, '{"input": ["a text"], "model": "any"}')
    if not isinstance(data, dict) or "input" not in data:
        raise RequestError(400, 'the body has no "input": send {"input": ["a text"], "model": "any"}')
    unknown = sorted(set(data) - set(EMBEDDINGS_FIELDS))
    if unknown:
        raise RequestError(
            400, f'unknown field "{unknown[0]}": the fields are {", ".join(EMBEDDINGS_FIELDS)}'
        )
    model, user = data.get("model", engine.path.name), data.get("user", "")
    for name, value in (("model", model), ("user", user)):
        if not isinstance(value, str):
            raise RequestError(400, f'"{name}" is {json.dumps(value)}: send a string')
    encoding = data.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        raise RequestError(
            400, f'"encoding_format" is {json.dumps(encoding)}: send "float" (the default) or "base64"'
        )
    dimensions = data.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions != engine.width):
        raise RequestError(
            400,
            f'"dimensions" is {json.dumps(dimensions)}, but this engine gives {engine.width}-dimensional '
            f'embeddings and does not truncate them: leave out "dimensions", or send {engine.width}',
        )
    return EmbeddingsRequest(_embeddings_inputs(data["input"], options, engine), model, encoding == "base64")


def _embeddings_inputs(value, options: ServeOptions, engine) -> list[Input]:
    """OpenAI's `input`, as engine inputs: texts, and TokenIds for token arrays."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(type(v) is int for v in value)):
        value = [value]  # one text, or one token array
    if not isinstance(value, list) or not value:
        raise RequestError(
            400, '"input" must be a text, a non-empty list of texts, a token array or a list of token arrays'
        )
    if len(value) > options.max_inputs:
        raise _too_many("input", len(value), options)
    items = []
    for i, x in enumerate(value):
        try:
            if isinstance(x, str):
                check_text(x, f"input[{i}]")
                if len(x) > options.max_chars:
                    raise _too_long(f"input[{i}]", len(x), options)
                items.append(x)
            else:
                items.append(engine.encoder.token_ids(x, f"input[{i}]"))
        except DSEEError as exc:
            raise RequestError(400, str(exc)) from None
    return items


async def read_body(request: Request, max_body: int, options: ServeOptions) -> bytes:
    """The request body, read while counting: refused (413) as soon as it passes `max_body` bytes, whatever
    Content-Length says or when the body is chunked, and (408) when the client takes longer than
    `options.body_timeout_s` to send it. Starlette's request.body() reads everything first."""
    declared = request.headers.get("content-length")
    too_large = RequestError(
        413,
        f"the body has more than {max_body} bytes, more than {options.max_inputs} inputs of "
        f"{options.max_chars} characters can take: split the request",
    )
    if declared and declared.isdigit() and int(declared) > max_body:
        raise too_large
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.body_timeout_s
    chunks, size = [], 0
    stream = request.stream()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), max(deadline - loop.time(), 0))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestError(
                    408,
                    f"the body took longer than {options.body_timeout_s:g} s to arrive: send it at once (the "
                    f"server's --body-timeout)",
                ) from None
            size += len(chunk)
            if size > max_body:
                raise too_large
            chunks.append(chunk)
    finally:
        await stream.aclose()
    return b"".join(chunks)


def parse_generation(body: bytes, options, engine) -> tuple[list[list[int]], GenerationConfig, bool, int]:
    """(prompt token ids, config, stream, prompt count) of a /v1/generate body, or a RequestError."""
    data = _json(body, '{"prompt": "a text", "max_new_tokens": 32}')
    if not isinstance(data, dict) or ("prompt" in data) == ("prompts" in data):
        raise RequestError(
            422, 'the body needs "prompt" (a text) or "prompts" (a list of texts): send {"prompt": "a text"}'
        )
    prompts = [data["prompt"]] if "prompt" in data else data["prompts"]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError(422, '"prompt" must be a text and "prompts" a non-empty list of texts')
    if len(prompts) > options.max_inputs:
        raise RequestError(
            413,
            f'"prompts" holds {len(prompts)} prompts, over the limit of {options.max_inputs}: split the request, '
            f"or start dsee-serve with a larger --max-inputs",
        )
    unknown = sorted(set(data) - {"prompt", "prompts", "stream", *PARAMETERS})
    if unknown:
        raise RequestError(
            422, f'unknown field "{unknown[0]}": the fields are prompt(s), stream, {", ".join(PARAMETERS)}'
        )
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(422, f'"stream" is {json.dumps(stream)}: send true or false')
    for i, p in enumerate(prompts):
        try:
            check_text(p, f"prompts[{i}]")
        except DSEEError as exc:
            raise RequestError(422, str(exc)) from None
        if len(p) > options.max_chars:
            raise RequestError(
                413,
                f"prompts[{i}] has {len(p)} characters, over the limit of {options.max_chars}: shorten it, or "
                f"start dsee-serve with a larger --max-chars",
            )
    values = {k: data[k] for k in PARAMETERS if k in data}
    stop = values.get("stop")
    if isinstance(stop, list):
        if len(stop) > MAX_STOP:
            raise RequestError(
                422,
                f'"stop" holds {len(stop)} strings, over the limit of {MAX_STOP}: send at most {MAX_STOP}',
            )
        values["stop"] = stop = tuple(stop)
    for s in (stop,) if isinstance(stop, str) else stop if isinstance(stop, tuple) else ():
        if isinstance(s, str) and len(s) > MAX_STOP_CHARS:
            raise RequestError(
                422,
                f'"stop" has a string of {len(s)} characters, over the limit of {MAX_STOP_CHARS}: send shorter '
                f"stop strings",
            )
    try:
        config = GenerationConfig(**values)
        config.check()
        ids = engine.prompt_ids(prompts, config)
    except (DSEEError, TypeError) as exc:
        raise RequestError(422, str(exc)) from None
    return ids, config, stream, len(prompts)
