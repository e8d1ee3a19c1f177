"""Jobs over HTTP: the health the server reports, who gets a turn, and one job's outputs as events.

``Jobs`` starts *loading* (``/ping`` 204, job routes 503), becomes *ready* once start-up built
the worker, or *failed* with start-up's sentence. Ready, it runs each request's job on the same
Runner as the queue worker (sdxl_worker.runtime.serve): CONCURRENCY at once, SERVE_QUEUE more
waiting for a turn, and beyond that a 429 with ``Retry-After`` (a load-balancing endpoint has no
queue of its own; the client retries). Each job's step reports come from the Runner's
``on_progress`` (a job thread) and are routed to the request that asked for them.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import AsyncIterator

from sdxl_worker.api.replies import Refusal
from sdxl_worker.errors import INTERNAL, Failure

LOADING, READY, FAILED = "loading", "ready", "failed"
KEEPALIVE_S = 10.0  # an event stream silent this long (its job waits for a turn) gets a comment line
RETRY_AFTER_S = 5  # what a 429 or a 503 while loading tells the client to wait
REPLACED = "The GPU failed on an earlier job; this worker is being replaced, so send the job again."


class Jobs:
    def __init__(self, concurrency: int = 1, queue: int = 2):
        self.state, self.problem = LOADING, None
        self.worker = self.runner = None
        self.concurrency, self.limit = concurrency, concurrency + queue
        self.admitted = 0  # requests holding a turn or waiting for one
        self.stopping = asyncio.Event()  # SIGTERM: bodies still arriving are refused
        self._progress: dict[str, callable] = {}  # job id -> where its step reports go

    # --- health ---

    def ready(self, worker, runner_factory) -> None:
        """Start-up is done: jobs run on ``runner_factory(on_progress)`` (a Runner) from now on."""
        self.worker, self.runner = worker, runner_factory(self._report)
        self.state = READY

    def stop(self) -> None:
        """SIGTERM: running jobs are stopped (each answered "shutting down"), no new one starts."""
        self.stopping.set()
        if self.runner is not None:
            self.runner.shut_down()

    def fail(self, sentence: str) -> None:
        self.state, self.problem = FAILED, sentence

    def check_ready(self) -> None:
        if self.state == LOADING:
            raise Refusal(503, "The worker is still loading its models; send the request again in a few seconds.",
                          code="loading", retry_after_s=RETRY_AFTER_S)
        if self.state == FAILED:
            raise Refusal(503, self.problem, code="worker_failed")
        if self.runner.shutting_down:
            raise Refusal(503, "The worker is shutting down (SIGTERM); send the request to another worker.",
                          code="shutting_down", retry_after_s=1)

    # --- turns ---

    def admit(self) -> "Place":
        """A place for one request, running or among the SERVE_QUEUE waiting; else a 429."""
        self.check_ready()
        if self.admitted >= self.limit:
            raise Refusal(429, f"The worker is busy: {self.concurrency} job(s) running and "
                               f"{self.limit - self.concurrency} waiting, which is all it takes; send the request "
                               f"again in a few seconds.", code="busy", retry_after_s=RETRY_AFTER_S)
        self.admitted += 1
        return Place(self)

    # --- one job ---

    async def events(self, job_input: dict, s3_config=None) -> AsyncIterator[tuple[str, dict]]:
        """The job's events: ``("progress", {step, total_steps, stage})`` and ``("preview", {..., preview})``
        as it runs, then ``("result", payload)`` or ``("error", failure)``. Closing this generator
        early (the client went away) stops the job within one step."""
        job = {"id": "http-" + secrets.token_hex(8), "input": job_input}
        if s3_config is not None:
            job["s3Config"] = s3_config
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        self._progress[job["id"]] = lambda progress: loop.call_soon_threadsafe(queue.put_nowait, ("progress", progress))

        async def pump() -> None:
            try:
                async for output in self.runner.run(job):
                    queue.put_nowait(self._event(output))
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(pump())
        try:
            while (event := await _next(queue)) is not None:
                yield event
        finally:
            self._progress.pop(job["id"], None)
            if not task.done():
                task.cancel()  # the Runner's own cancel: the job stops within one step

    async def result(self, job_input: dict, s3_config=None) -> dict:
        """The job's final output (its payload, or its Failure), previews and progress passed over."""
        last = Failure("The job ended without an answer.", INTERNAL)
        async for kind, data in self.events(job_input, s3_config):
            if kind in ("result", "error"):
                last = data
        return last

    def _event(self, output: dict) -> tuple[str, dict]:
        if output.pop("refresh_worker", False):  # a poisoned CUDA context: no later job can run here
            self.fail(REPLACED)
        if "error" in output:
            return "error", output
        if "images" in output:
            return "result", output
        return ("preview" if "preview" in output else "notice"), output

    def _report(self, job: dict, progress: dict) -> None:
        route = self._progress.get(str(job.get("id")))
        if route is not None:
            try:
                route(dict(progress))
            except RuntimeError:  # the loop is closing: nobody waits for this report
                pass


class Place:
    """One admitted request's place. The route gives it back when it answers (``release``), unless
    it answered with a stream, which took the place over (``held_by_stream``) and gives it back when
    it ends (``end``); either way once."""

    def __init__(self, jobs: Jobs):
        self.jobs, self.released, self.held_by_stream = jobs, False, False

    def release(self) -> None:
        if not self.held_by_stream:
            self.end()

    def end(self) -> None:
        if not self.released:
            self.released = True
            self.jobs.admitted -= 1


async def _next(queue: asyncio.Queue):
    """The next event, or ``("", {})`` after KEEPALIVE_S of silence (a proxy would close an idle stream).
    Not asyncio.wait_for: before Python 3.12 it can lose an item that arrives as it times out."""
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter}, timeout=KEEPALIVE_S)
    finally:
        if not getter.done():
            getter.cancel()
    return getter.result() if getter.done() and not getter.cancelled() else ("", {})
