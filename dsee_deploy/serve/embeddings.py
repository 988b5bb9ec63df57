"""POST /v1/embeddings: OpenAI's embeddings API on a feature-extraction engine, for the clients written for it
(the `openai` package, LangChain, LlamaIndex, ...).

    {"input": "a text" | ["a text", ...] | [101, 2023, 102] | [[101, 2023, 102], ...], "model": "any",
     "encoding_format": "float" | "base64", "dimensions": width, "user": "ignored"}
    -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...] | "base64"}],
        "model": "any", "usage": {"prompt_tokens": N, "total_tokens": N}}

One engine is served, whatever `model` names: it is answered back as sent, as OpenAI does. The inputs join the
same micro-batches as /v1/embed's, within the same limits, and are counted in the same metrics (endpoint
"embeddings"); errors have the server's shape, {"error": "..."}, with OpenAI's 400 for a bad body (the openai
client raises BadRequestError). `usage` counts the tokens the engine ran: after truncation, special tokens
included.
"""

from __future__ import annotations

import base64

import numpy as np
from fastapi import FastAPI, Request, Response

from .requests import RequestError, parse_embeddings, read_body
from .routes import Served, answer_batched, wrong_endpoint


def add_embeddings_route(app: FastAPI, served: Served) -> None:
    """POST /v1/embeddings; an engine that is not feature-extraction answers 404 naming its own route."""

    async def embeddings(request: Request) -> Response:
        return await answer_batched(served, "embeddings", lambda: _embeddings(served, request))

    # A plain Starlette route, as /v1/embed (routes.py): its body is read and checked by parse_embeddings.
    app.add_route("/v1/embeddings", embeddings, methods=["POST"], include_in_schema=False)


async def _embeddings(served: Served, request: Request) -> dict:
    if served.endpoint != "embed":
        raise RequestError(404, wrong_endpoint(served.engine, "embeddings", served.endpoint))
    body = await read_body(request, served.max_body, served.options)
    parsed = parse_embeddings(body, served.options, served.engine)
    results = await served.batcher.submit(parsed.inputs)  # (embedding as a list of floats, tokens) per input
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(vector) if parsed.base64 else vector}
        for i, (vector, _) in enumerate(results)
    ]
    tokens = sum(count for _, count in results)
    return {
        "object": "list",
        "data": data,
        "model": parsed.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64(vector: list[float]) -> str:
    """The embedding as OpenAI's base64: its float32 values, little-endian, base64-encoded (the batcher's floats
    came from float32, so they convert back exactly)."""
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")
