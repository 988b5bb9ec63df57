"""The HTTP app of dsee-serve: FastAPI around one Engine, with micro-batching, input limits and metrics.

    POST /v1/predict  {"inputs": ["text", ["text", "text pair"], ...]}  -> {"predictions": [...]}
    POST /v1/embed    {"inputs": [...]}  -> {"embeddings": [[...], ...]}  (feature-extraction engines)
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
import os
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import DSEEError
from . import openapi
from .batching import Draining, MicroBatcher
from .connections import RequestLimit
from .engine import Engine
from .options import ServeOptions
from .requests import BYTES_PER_CHAR, RequestError, parse_generation, parse_inputs, read_body

log = logging.getLogger("dsee_deploy.serve")

# The task each endpoint serves, and the key of its answer.
ENDPOINTS = {"predict": "predictions", "embed": "embeddings", "generate": "generations"}


class Metrics:
    """Prometheus metrics in a registry of their own, so that several apps can live in one process."""

    def __init__(self, batcher: MicroBatcher):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dsee_requests", "Requests answered, by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "dsee_request_errors",
            "Requests answered 4xx or 5xx, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dsee_request_latency_seconds",
            "Time from reading a request to answering it.",
            ["endpoint"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "dsee_batch_size",
            "Inputs per engine run.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "dsee_batch_seconds",
            "Time of one engine run (tokenize, run, post-process).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )
        self.tokens = Counter("dsee_generated_tokens", "Tokens generated (/v1/generate).", registry=r)
        self.time_per_token = Histogram(
            "dsee_time_per_token_seconds",
            "Per prompt of /v1/generate: time from reading the request to its last token, over its tokens.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
            registry=r,
        )
        Gauge("dsee_queue_depth", "Inputs waiting for a batch.", registry=r).set_function(
            lambda: batcher.queue_depth
        )
        if hasattr(batcher, "rows"):  # generation
            Gauge("dsee_generation_rows", "Prompts decoding now (/v1/generate).", registry=r).set_function(
                lambda: batcher.rows
            )
            self.cancelled = Counter(
                "dsee_generations_cancelled",
                "Prompts of /v1/generate whose decoding stopped because their client went away.",
                registry=r,
            )
            batcher.on_cancelled = self.observe_cancelled

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_generation(self, tokens: int, seconds: float) -> None:
        """One prompt's generation ended: its tokens, and the time per token since its request was read."""
        self.tokens.inc(tokens)
        if tokens:
            self.time_per_token.observe(seconds / tokens)

    def observe_cancelled(self, prompts: int, tokens: int) -> None:
        """Prompts dropped because their client went away, and the tokens they had (decoded for nobody)."""
        self.cancelled.inc(prompts)
        self.tokens.inc(tokens)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)


def create_app(engine: Engine, options: ServeOptions | None = None) -> FastAPI:
    """A FastAPI app serving `engine`: /v1/predict (or /v1/embed), /v1/model, /healthz, /readyz, /metrics."""
    options = options or ServeOptions()
    endpoint = engine.manifest.spec.verb
    if endpoint == "generate" and engine._decoder is None:
        raise DSEEError(
            f"engine '{engine.path}' is a causal-LM engine without a KV cache: export it again without "
            f"--no-kv-cache to serve /v1/generate"
        )

    def run(inputs: list) -> list:  # one batch, in the batcher's thread
        if endpoint == "embed":
            return engine.embed(inputs, batch_size=options.max_batch_size).tolist()
        return engine.predict(inputs, batch_size=options.max_batch_size)

    if endpoint == "generate":
        from .generation import GenerationBatcher

        batcher = GenerationBatcher(engine, options.max_batch_size, options.max_wait_ms)
    else:
        batcher = MicroBatcher(run, options.max_batch_size, options.max_wait_ms)
    metrics = Metrics(batcher)
    batcher.on_batch = metrics.observe_batch
    state = {"ready": False}
    # Bodies longer than this cannot pass the limits; refuse them before reading them.
    max_body = options.max_inputs * (2 * options.max_chars * BYTES_PER_CHAR + 16) + 1024

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        # The first ORT run allocates and plans; do it before /readyz says yes.
        warm = (lambda: engine.generate(["warm up"], max_new_tokens=2)) if endpoint == "generate" else None
        await asyncio.get_running_loop().run_in_executor(None, warm or (lambda: engine.run(["warm up"])))
        state["ready"] = True
        log.info("ready: %s on %s, POST /v1/%s", engine.path, engine.provider, endpoint)
        yield
        state["ready"] = False
        await batcher.close()  # uvicorn has finished the requests in flight; answer whatever is queued

    # FastAPI's own OpenAPI generator would leave out the inference routes (plain Starlette routes, below): the
    # document at /openapi.json is written in openapi.py, with this server's limits.
    app = FastAPI(title="dsee-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    schema = json.dumps(openapi.document(options, endpoint, engine.task))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's own answers (unknown route 404, wrong method 405) in the shape of every other error.
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

    app.state.engine, app.state.batcher, app.state.metrics = engine, batcher, metrics
    app.add_middleware(RequestLimit, limit=options.max_connections)

    async def serve(request: Request, route: str) -> Response:
        started = time.perf_counter()
        status, payload = 200, None
        try:
            if route != endpoint:
                raise RequestError(404, _wrong_endpoint(engine, route, endpoint))
            inputs = parse_inputs(await read_body(request, max_body, options), options)
            payload = {ENDPOINTS[route]: await batcher.submit(inputs)}
        except RequestError as exc:
            status, payload = exc.status, {"error": str(exc)}
        except DSEEError as exc:  # the engine refused this request's input (it ran alone: see the batcher)
            status, payload = 422, {"error": str(exc)}
        except ClientDisconnect:  # nobody to answer; counted as nginx counts it
            status, payload = 499, {"error": "the client closed the connection"}
        except Draining:
            status, payload = 503, {"error": "the server is shutting down: retry on another replica"}
        except Exception as exc:  # an engine failure answers 500 and the server goes on
            log.exception("engine failed on a request to /v1/%s", route)
            status, payload = 500, {"error": f"the engine failed: {type(exc).__name__}: {exc}"}
        metrics.observe_request(route, status, time.perf_counter() - started)
        # A body left unread (too large, too slow) cannot be skipped on a kept-alive connection: close it.
        headers = {"connection": "close"} if status in (408, 413) else None
        return Response(json.dumps(payload), status, headers=headers, media_type="application/json")

    async def generate(request: Request) -> Response:
        from fastapi.responses import StreamingResponse

        if endpoint != "generate":
            return await serve(request, "generate")
        started = time.perf_counter()
        try:
            body = await read_body(request, max_body, options)
            ids, config, stream, count = parse_generation(body, options, engine)
            job = batcher.submit(ids, config)
        except RequestError as exc:
            return answer("generate", exc.status, {"error": str(exc)}, started)
        except ClientDisconnect:
            return answer("generate", 499, {"error": "the client closed the connection"}, started)
        except Draining:
            return answer(
                "generate", 503, {"error": "the server is shutting down: retry on another replica"}, started
            )

        async def results():  # the job's events, to its end; an engine failure raises here
            while (event := await job.events.get()) is not None:
                if isinstance(event, Exception):
                    raise event
                if "finish_reason" in event:
                    metrics.observe_generation(len(event["token_ids"]), time.perf_counter() - started)
                yield event

        if stream:

            async def sse():
                status = 499  # unless the stream ends: Starlette cancels it when the client disconnects
                try:
                    async for event in results():
                        yield f"data: {json.dumps(event)}\n\n"
                    yield "data: [DONE]\n\n"
                    status = 200
                except Exception as exc:  # the status line is sent: the failure goes in the stream
                    log.exception("engine failed on a request to /v1/generate")
                    status = 500
                    yield f"data: {json.dumps({'error': f'the engine failed: {type(exc).__name__}: {exc}'})}\n\n"
                finally:
                    job.gone = status == 499
                    metrics.observe_request("generate", status, time.perf_counter() - started)

            return StreamingResponse(
                sse(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        generations: list = [None] * count

        async def collect() -> None:
            async for event in results():
                if "finish_reason" in event:
                    index = event.pop("index")
                    generations[index] = event

        collecting = asyncio.ensure_future(collect())
        leaving = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():  # the client went away: its rows leave the batch at the next token
                job.gone = True
                collecting.cancel()
                return answer("generate", 499, {"error": "the client closed the connection"}, started)
            collecting.result()
        except Exception as exc:
            log.exception("engine failed on a request to /v1/generate")
            return answer(
                "generate", 500, {"error": f"the engine failed: {type(exc).__name__}: {exc}"}, started
            )
        finally:
            leaving.cancel()
        return answer("generate", 200, {"generations": generations}, started)

    def answer(route: str, status: int, payload: dict, started: float) -> Response:
        metrics.observe_request(route, status, time.perf_counter() - started)
        headers = {"connection": "close"} if status in (408, 413) else None
        return Response(json.dumps(payload), status, headers=headers, media_type="application/json")

    async def predict(request: Request) -> Response:
        return await serve(request, "predict")

    async def embed(request: Request) -> Response:
        return await serve(request, "embed")

    # Plain Starlette routes: these handlers read the body and build the Response themselves, so FastAPI's
    # request handling (dependencies, response serialization) has nothing to do but still costs the event
    # loop ~60 us a request (0.24-0.29 -> 0.18-0.21 ms of its CPU on engines/sst2-s-int8) -- time a batched
    # server spends between engine runs, one request after the other.
    app.add_route("/v1/predict", predict, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/embed", embed, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/generate", generate, methods=["POST"], include_in_schema=False)

    @app.get("/v1/model")
    async def model() -> dict:
        serving = {
            "engine": engine.path.name,
            "task": engine.task,
            "endpoint": f"/v1/{endpoint}",
            "provider": engine.provider,
            "labels": engine.labels,
            "max_length": engine.max_length,
            **asdict(options),
        }
        return {**without_paths(engine.manifest.to_dict()), "serving": serving}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> Response:
        return Response(schema, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = state["ready"] and batcher.running
        return Response(json.dumps({"ready": ready}), 200 if ready else 503, media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def disconnected(request: Request) -> None:
    """Returns when the client of `request` (its body read) closes the connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def without_paths(value):
    """`value` with every absolute path replaced by its last part: a client learns no directory of the server."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/\\")) or value
    return value


def _wrong_endpoint(engine: Engine, route: str, endpoint: str) -> str:
    if endpoint == "generate":
        return f"engine '{engine.path.name}' is a causal-LM engine: POST /v1/generate"
    if route == "generate":
        return (
            f"engine '{engine.path.name}' is a {engine.task} engine, so it generates no text: POST /v1/{endpoint}, or "
            f"serve a causal-LM engine"
        )
    if route == "embed":
        return (
            f"engine '{engine.path.name}' is a {engine.task} engine, so it has no embeddings: POST /v1/predict, or "
            f"serve an engine exported with --task feature-extraction"
        )
    return f"engine '{engine.path.name}' is a feature-extraction engine, so it has no labels: POST /v1/embed"


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
