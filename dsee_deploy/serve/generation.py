"""dsee-serve's text generation: POST /v1/generate on a causal-LM engine with a KV cache.

    {"prompt": "The restaurant serves", "max_new_tokens": 32}            -> {"generations": [{"text", ...}]}
    {"prompts": ["a", "b"], "do_sample": true, "temperature": 0.8, "top_p": 0.9, "seed": 0, "stop": ["."]}
    {"prompt": "...", "stream": true}   -> server-sent events: one per token, {"index", "token_id", "text"},
                                           one per prompt when it ends, {"index", "text", "token_ids",
                                           "finish_reason"}, then "[DONE]"

Requests from several clients decode together: greedy requests that arrive while the engine is busy, or within
--max-wait-ms of each other, join one batch (each row keeps its own max_new_tokens and stop strings, so a
client gets exactly what it would get alone: greedy tokens do not depend on the batch). A sampled request runs
in a batch of its own, so that its seed gives the same tokens however many clients there are. A batch runs to
its last row's end; requests that arrive meanwhile wait for the next (static batching, not continuous: the
decoder graph's cache has one past length for the whole batch).

A client that goes away takes its rows out of the batch: the app marks its job `gone` when the connection
closes (streamed or not), and the decode loop ends those rows at the next token ("cancelled") and drops the job
if it has not started. Stop strings are bounded (requests.py: at most MAX_STOP of MAX_STOP_CHARS characters, as OpenAI takes
at most 4), and each token looks for them only where its text can complete one (TextStream): the work a request
puts on the shared loop is its prompts (--max-inputs) times its tokens (the model's positions).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from ..runtime.generate import GenerationConfig

_STOP = object()


@dataclass
class Job:
    """One request: its prompts' token ids, how to generate, and where its events go (an asyncio queue)."""

    ids: list[list[int]]
    config: GenerationConfig
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    started: float = field(default_factory=time.perf_counter)
    open_rows: int = 0
    gone: bool = (
        False  # its client went away: decode no more of it (set by the app, read by the decode thread)
    )

    def put(self, event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class GenerationBatcher:
    """One thread decodes batches of jobs with `engine.decode`; `submit` returns the job's event queue, which
    ends with None (or carries the exception that stopped it)."""

    def __init__(self, engine, max_batch_size: int, max_wait_ms: float, on_batch=None):
        self.engine = engine
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch  # (prompts in the batch, seconds), e.g. for metrics
        self.on_cancelled = None  # (prompts cancelled, tokens they had), e.g. for metrics
        self.rows = 0  # prompts decoding now
        self.draining = False
        self._queue: queue.Queue = queue.Queue()
        self._held: list[Job] = []  # taken from the queue while gathering a batch, for the next one
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.draining

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._held)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dsee-generate", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self.draining = True
        self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def submit(self, ids: list[list[int]], config: GenerationConfig) -> Job:
        """The job of these prompts, queued: read its `events`; set its `gone` if its client goes away."""
        from .batching import Draining

        if self.draining:
            raise Draining()
        job = Job(ids, config, asyncio.Queue(), asyncio.get_running_loop(), open_rows=len(ids))
        self._queue.put(job)
        return job

    def _next(self, timeout: float | None):
        """The next job (or _STOP) to decode; jobs whose client went away while queued are dropped."""
        while True:
            if self._held:
                job = self._held.pop(0)
            else:
                try:
                    job = (
                        self._queue.get(timeout=timeout)
                        if timeout is None or timeout > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    return None
            if job is _STOP or not job.gone:
                return job
            if self.on_cancelled:
                self.on_cancelled(len(job.ids), 0)

    def _work(self) -> None:
        while True:
            job = self._next(None)
            if job is _STOP:
                return
            batch = [job]
            if not job.config.do_sample:
                self._gather(batch)
            started = time.perf_counter()
            try:
                self._decode(batch)
            except Exception as exc:  # the request(s) answer 500; the server goes on
                for j in batch:
                    j.put(exc)
            if self.on_batch:
                self.on_batch(sum(len(j.ids) for j in batch), time.perf_counter() - started)

    def _gather(self, batch: list[Job]) -> None:
        """Add greedy jobs that are waiting, or arrive within max_wait, up to max_batch_size prompts."""
        deadline = time.perf_counter() + self.max_wait
        rows = len(batch[0].ids)
        skipped = []
        while rows < self.max_batch_size:
            job = self._next(deadline - time.perf_counter())
            if job is None:
                break
            if job is _STOP or job.config.do_sample or rows + len(job.ids) > self.max_batch_size:
                skipped.append(job)
                if job is _STOP:
                    break
                continue
            batch.append(job)
            rows += len(job.ids)
        self._held = skipped + self._held

    def _decode(self, batch: list[Job]) -> None:
        owners = [(job, i) for job in batch for i in range(len(job.ids))]
        prompts = [ids for job in batch for ids in job.ids]
        limits = [job.config.max_new_tokens for job in batch for _ in job.ids]
        stops = [job.config.stop for job in batch for _ in job.ids]
        self.rows = len(prompts)
        try:
            for event in self.engine.decode(
                prompts, batch[0].config, limits, stops, cancelled=lambda row: owners[row][0].gone
            ):
                job, index = owners[event["index"]]
                if "finish_reason" in event:
                    self.rows -= 1
                    if event["finish_reason"] == "cancelled":
                        if self.on_cancelled:
                            self.on_cancelled(1, len(event["token_ids"]))
                        continue  # nobody reads this job's events any more
                job.put({**event, "index": index})
                if "finish_reason" in event:
                    job.open_rows -= 1
                    if job.open_rows == 0:
                        job.put(None)
        finally:
            self.rows = 0
