"""Reading and checking dsee-serve's request bodies, shared by its routes: /v1/predict and /v1/embed (parse_inputs),
/v1/generate (parse_generation), each body read with a size and time limit (read_body).

Bodies are parsed here rather than by pydantic, so that every bad request gets one status and one line saying
what to change: malformed JSON 400, a wrong shape 422, too many or too long inputs 413, a body too slow 408.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from ..errors import DSEEError
from ..runtime.generate import GenerationConfig
from .inputs import check_text
from .options import ServeOptions

# What a /v1/generate body may set, and the bounds of its stop strings.
PARAMETERS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "stop")
MAX_STOP = 4  # OpenAI's limit
MAX_STOP_CHARS = 256

# JSON can spell one character in up to 12 bytes (a surrogate pair as two \uXXXX escapes).
BYTES_PER_CHAR = 12


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_inputs(body: bytes, options: ServeOptions) -> list:
    """The inputs of a request body, or a RequestError that says what to change."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f'the body is not valid JSON ({exc}): send {{"inputs": ["a text"]}}') from exc
    except RecursionError:
        raise RequestError(
            400, 'the body nests JSON too deeply to parse: send {"inputs": ["a text"]}'
        ) from None
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
        raise RequestError(
            413,
            f'"inputs" holds {len(inputs)} inputs, over the limit of {options.max_inputs}: split the request, '
            f"or start dsee-serve with a larger --max-inputs",
        )
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
            raise RequestError(
                413,
                f"inputs[{i}] has a text of {longest} characters, over the limit of {options.max_chars}: "
                f"shorten it, or start dsee-serve with a larger --max-chars",
            )
        items.append(x)
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
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(
            400, f'the body is not valid JSON ({exc}): send {{"prompt": "a text", "max_new_tokens": 32}}'
        ) from None
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
