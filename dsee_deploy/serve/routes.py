"""The routes of dsee-serve, registered onto the app of create_app (app.py) one group at a time:

    add_inference_routes  POST /v1/predict, /v1/embed and /v1/generate: inputs through the engine's batcher
                          (POST /v1/embeddings, OpenAI's, is embeddings.py's, through the same answer_batched)
    add_info_routes       GET /v1/model, /openapi.json, /healthz, /readyz, /metrics

Every route reads what it serves from one `Served`, and counts what it answers in its `Metrics`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import ClientDisconnect

from ..errors import DSEEError
from .batching import Draining, MicroBatcher
from .engine import Engine
from .generation import GenerationBatcher, Job
from .options import ServeOptions
from .requests import RequestError, parse_generation, parse_inputs, read_body

log = logging.getLogger("dsee_deploy.serve")

# The task each endpoint serves, and the key of its answer.
ENDPOINTS = {"predict": "predictions", "embed": "embeddings", "generate": "generations"}

GONE = "the client closed the connection"
DRAINING = "the server is shutting down: retry on another replica"


class Metrics:
    """Prometheus metrics in a registry of their own, so that several apps can live in one process."""

    def __init__(self, batcher: MicroBatcher | GenerationBatcher):
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


@dataclass
class Served:
    """What the routes of one app share: the engine, how it is served, the batcher feeding it, the metrics."""

    engine: Engine
    options: ServeOptions
    endpoint: str  # the engine's verb: "predict", "embed" or "generate"
    batcher: MicroBatcher | GenerationBatcher  # a GenerationBatcher when endpoint is "generate"
    metrics: Metrics
    max_body: int  # bodies longer than this cannot pass the limits: refused before they are read
    ready: bool = False  # the engine is warm and requests are taken (set by the app's lifespan)

    def answer(self, route: str, status: int, payload: dict, started: float) -> Response:
        """`payload` as JSON with `status`, counted in the metrics of `route`."""
        self.metrics.observe_request(route, status, time.perf_counter() - started)
        # A body left unread (too large, too slow) cannot be skipped on a kept-alive connection: close it.
        headers = {"connection": "close"} if status in (408, 413) else None
        return Response(json.dumps(payload), status, headers=headers, media_type="application/json")


def add_inference_routes(app: FastAPI, served: Served) -> None:
    """POST /v1/predict, /v1/embed and /v1/generate; each but the engine's own answers 404 saying which it is."""

    async def predict(request: Request) -> Response:
        return await _serve(served, request, "predict")

    async def embed(request: Request) -> Response:
        return await _serve(served, request, "embed")

    async def generate(request: Request) -> Response:
        if served.endpoint != "generate":
            return await _serve(served, request, "generate")
        return await _generate(served, request)

    # Plain Starlette routes: these handlers read the body and build the Response themselves, so FastAPI's
    # request handling (dependencies, response serialization) has nothing to do but still costs the event
    # loop ~60 us a request (0.24-0.29 -> 0.18-0.21 ms of its CPU on engines/sst2-s-int8) -- time a batched
    # server spends between engine runs, one request after the other.
    app.add_route("/v1/predict", predict, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/embed", embed, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/generate", generate, methods=["POST"], include_in_schema=False)


def add_info_routes(app: FastAPI, served: Served, schema: str) -> None:
    """GET /v1/model, /openapi.json (`schema`, written by openapi.py), /healthz, /readyz and /metrics."""
    engine = served.engine

    @app.get("/v1/model")
    async def model() -> dict:
        serving = {
            "engine": engine.path.name,
            "task": engine.task,
            "endpoint": f"/v1/{served.endpoint}",
            "provider": engine.provider,
            "labels": engine.labels,
            "max_length": engine.max_length,
            **asdict(served.options),
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
        ready = served.ready and served.batcher.running
        return Response(json.dumps({"ready": ready}), 200 if ready else 503, media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _serve(served: Served, request: Request, route: str) -> Response:
    """POST /v1/predict or /v1/embed (or /v1/generate on an engine that does not generate): one answer a request."""

    async def work() -> dict:
        if route != served.endpoint:
            raise RequestError(404, wrong_endpoint(served.engine, route, served.endpoint))
        inputs = parse_inputs(await read_body(request, served.max_body, served.options), served.options)
        results = await served.batcher.submit(inputs)
        if route == "embed":  # the batcher answers (embedding, tokens), the tokens for /v1/embeddings' usage
            results = [embedding for embedding, _ in results]
        return {ENDPOINTS[route]: results}

    return await answer_batched(served, route, work)


async def answer_batched(served: Served, route: str, work: Callable[[], Awaitable[dict]]) -> Response:
    """The answer of a route whose inputs run through the micro-batcher: `work()`'s payload, or the error it
    raised as a status and one line, counted in the metrics of `route` (the same for every such route)."""
    started = time.perf_counter()
    status, payload = 200, None
    try:
        payload = await work()
    except RequestError as exc:
        status, payload = exc.status, {"error": str(exc)}
    except DSEEError as exc:  # the engine refused this request's input (it ran alone: see the batcher)
        status, payload = 422, {"error": str(exc)}
    except ClientDisconnect:  # nobody to answer; counted as nginx counts it
        status, payload = 499, {"error": GONE}
    except Draining:
        status, payload = 503, {"error": DRAINING}
    except Exception as exc:  # an engine failure answers 500 and the server goes on
        log.exception("engine failed on a request to /v1/%s", route)
        status, payload = 500, {"error": f"the engine failed: {type(exc).__name__}: {exc}"}
    return served.answer(route, status, payload, started)


async def _generate(served: Served, request: Request) -> Response:
    """POST /v1/generate on a causal-LM engine: the generations whole, or streamed as server-sent events."""
    started = time.perf_counter()
    try:
        body = await read_body(request, served.max_body, served.options)
        ids, config, stream, count = parse_generation(body, served.options, served.engine)
        job = served.batcher.submit(ids, config)
    except RequestError as exc:
        return served.answer("generate", exc.status, {"error": str(exc)}, started)
    except ClientDisconnect:
        return served.answer("generate", 499, {"error": GONE}, started)
    except Draining:
        return served.answer("generate", 503, {"error": DRAINING}, started)
    if stream:
        return StreamingResponse(
            _stream(served, job, started),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    return await _collect(served, request, job, count, started)


async def _events(served: Served, job: Job, started: float):
    """The job's events, to its end; an engine failure raises here."""
    while (event := await job.events.get()) is not None:
        if isinstance(event, Exception):
            raise event
        if "finish_reason" in event:
            served.metrics.observe_generation(len(event["token_ids"]), time.perf_counter() - started)
        yield event


async def _stream(served: Served, job: Job, started: float):
    """The job's events as server-sent events, then "[DONE]"."""
    status = 499  # unless the stream ends: Starlette cancels it when the client disconnects
    try:
        async for event in _events(served, job, started):
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"
        status = 200
    except Exception as exc:  # the status line is sent: the failure goes in the stream
        log.exception("engine failed on a request to /v1/generate")
        status = 500
        yield f"data: {json.dumps({'error': f'the engine failed: {type(exc).__name__}: {exc}'})}\n\n"
    finally:
        job.gone = status == 499
        served.metrics.observe_request("generate", status, time.perf_counter() - started)


async def _collect(served: Served, request: Request, job: Job, count: int, started: float) -> Response:
    """The job's `count` generations in one answer, once the last has ended; 499 if the client leaves first."""
    generations: list = [None] * count

    async def collect() -> None:
        async for event in _events(served, job, started):
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
            return served.answer("generate", 499, {"error": GONE}, started)
        collecting.result()
    except Exception as exc:
        log.exception("engine failed on a request to /v1/generate")
        return served.answer(
            "generate", 500, {"error": f"the engine failed: {type(exc).__name__}: {exc}"}, started
        )
    finally:
        leaving.cancel()
    return served.answer("generate", 200, {"generations": generations}, started)


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


def wrong_endpoint(engine: Engine, route: str, endpoint: str) -> str:
    """The 404 of a route this engine does not serve (/v1/embeddings as /v1/embed), naming the one it does."""
    if endpoint == "generate":
        return f"engine '{engine.path.name}' is a causal-LM engine: POST /v1/generate"
    if route == "generate":
        return (
            f"engine '{engine.path.name}' is a {engine.task} engine, so it generates no text: POST /v1/{endpoint}, or "
            f"serve a causal-LM engine"
        )
    if route in ("embed", "embeddings"):
        return (
            f"engine '{engine.path.name}' is a {engine.task} engine, so it has no embeddings: POST /v1/predict, or "
            f"serve an engine exported with --task feature-extraction"
        )
    return f"engine '{engine.path.name}' is a feature-extraction engine, so it has no labels: POST /v1/embed"
