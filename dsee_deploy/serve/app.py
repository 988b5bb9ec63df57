"""The HTTP app of dsee-serve: FastAPI around one Engine, with micro-batching, input limits and metrics.

    POST /v1/predict  {"inputs": ["text", ["text", "text pair"], ...]}  -> {"predictions": [...]}
    POST /v1/embed    {"inputs": [...]}  -> {"embeddings": [[...], ...]}  (feature-extraction engines)
    POST /v1/embeddings  OpenAI's embeddings API on the same engines and batches (embeddings.py)
    POST /v1/generate {"prompt": "text", "max_new_tokens": 32, "stream": false}  (causal-LM engines: generation.py)
    GET  /v1/model    the engine's manifest, with how it is served
    GET  /healthz     the process is up;  GET /readyz  the engine is warm and requests are taken
    GET  /metrics     Prometheus: requests, errors, latency, batch sizes, queue depth

Request bodies are read and checked by requests.py, each bad request answered with one status and one line
saying what to change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DSEEError
from . import openapi
from .batching import MicroBatcher
from .connections import RequestLimit
from .embeddings import add_embeddings_route
from .engine import Engine
from .generation import GenerationBatcher
from .options import ServeOptions
from .requests import BYTES_PER_CHAR, BYTES_PER_ID
from .routes import (
    ENDPOINTS,
    Metrics,
    Served,
    add_inference_routes,
    add_info_routes,
    disconnected,
    without_paths,
)

# ENDPOINTS, Metrics, disconnected and without_paths live in routes.py now, and are still importable from here.
__all__ = ["ENDPOINTS", "Metrics", "create_app", "disconnected", "listen", "without_paths"]

log = logging.getLogger("dsee_deploy.serve")


def create_app(engine: Engine, options: ServeOptions | None = None) -> FastAPI:
    """A FastAPI app serving `engine`: /v1/predict (or /v1/embed and /v1/embeddings, or /v1/generate),
    /v1/model, /healthz, /readyz, /metrics."""
    options = options or ServeOptions()
    endpoint = engine.manifest.spec.verb
    if endpoint == "generate" and engine._decoder is None:
        raise DSEEError(
            f"engine '{engine.path}' is a causal-LM engine without a KV cache: export it again without "
            f"--no-kv-cache to serve /v1/generate"
        )
    batcher = _batcher(engine, options, endpoint)
    metrics = Metrics(batcher)
    batcher.on_batch = metrics.observe_batch
    # Bodies longer than this cannot pass the limits; refuse them before reading them. An input is a text pair,
    # or (/v1/embeddings) a token array of at most max_length ids.
    per_input = max(2 * options.max_chars * BYTES_PER_CHAR, engine.max_length * BYTES_PER_ID)
    max_body = options.max_inputs * (per_input + 16) + 1024
    served = Served(engine, options, endpoint, batcher, metrics, max_body)

    # FastAPI's own OpenAPI generator would leave out the inference routes (plain Starlette routes, routes.py):
    # the document at /openapi.json is written in openapi.py, with this server's limits.
    app = FastAPI(
        title="dsee-serve", lifespan=_lifespan(served), docs_url=None, redoc_url=None, openapi_url=None
    )
    tokens = (engine.encoder.max_length, engine.encoder.vocab_size)
    schema = json.dumps(openapi.document(options, endpoint, engine.task, tokens))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
    app.add_middleware(RequestLimit, limit=options.max_connections)
    add_inference_routes(app, served)
    add_embeddings_route(app, served)
    add_info_routes(app, served, schema)
    return app


def _batcher(engine: Engine, options: ServeOptions, endpoint: str) -> MicroBatcher | GenerationBatcher:
    """What feeds the engine: a GenerationBatcher decoding prompts together, or a MicroBatcher of inputs."""
    if endpoint == "generate":
        return GenerationBatcher(engine, options.max_batch_size, options.max_wait_ms)

    def run(inputs: list) -> list:  # one batch, in the batcher's thread
        if endpoint == "embed":  # (embedding, tokens it ran as) per input: /v1/embeddings answers the count
            embeddings, tokens = engine.embed_counted(inputs, batch_size=options.max_batch_size)
            return list(zip(embeddings.tolist(), tokens, strict=True))
        return engine.predict(inputs, batch_size=options.max_batch_size)

    return MicroBatcher(run, options.max_batch_size, options.max_wait_ms)


def _lifespan(served: Served):
    """The app's lifespan: start the batcher and warm the engine before /readyz says yes; drain at the end."""
    engine, batcher = served.engine, served.batcher

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        # The first ORT run allocates and plans; do it before /readyz says yes.
        warm = (
            (lambda: engine.generate(["warm up"], max_new_tokens=2))
            if served.endpoint == "generate"
            else None
        )
        await asyncio.get_running_loop().run_in_executor(None, warm or (lambda: engine.run(["warm up"])))
        served.ready = True
        log.info("ready: %s on %s, POST /v1/%s", engine.path, engine.provider, served.endpoint)
        yield
        served.ready = False
        await batcher.close()  # uvicorn has finished the requests in flight; answer whatever is queued

    return lifespan


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own answers (unknown route 404, wrong method 405) in the shape of every other error."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
    if allow:
        message += f" (this route takes {allow})"
    return Response(
        json.dumps({"error": message}),
        exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def listen(host: str, port: int):
    """The listening socket, bound now (uvicorn serves on it): binding is where a port in use shows."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise DSEEError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port, or stop what uses it"
        ) from exc
    sock.set_inheritable(True)
    return sock
