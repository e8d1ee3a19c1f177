"""The studio's jobs: each one runs from a source and its outputs go to whoever watches it.

A *source* is an async generator function ``source(job) -> outputs``: the worker's own RunPod
handler (handler.py's runpod_config), or a RunPod endpoint (endpoint.py). A job runs as an
asyncio task iterating it; cancelling that task is the page's Cancel, the same path as RunPod's
cancel (the handler's Runner sets the job's Stop and the denoising ends within one step).

Every output becomes an event kept on the job, so a page that connects late, or reconnects, still
sees where the job is: ``preview`` (step, total_steps, stage and the preview), ``progress`` (step
reports without a preview), ``status`` (an endpoint's IN_QUEUE or IN_PROGRESS), then one of
``result``, ``error`` or ``cancelled``; nothing after that. Only the latest preview and step report
are kept (a job's previews would otherwise be megabytes), and a job nobody watches for
``UNWATCHED_S`` (the tab was closed) is cancelled.

Job ids are random (``secrets.token_urlsafe``): knowing one job's id tells nothing of another's.
``Limits`` caps what strangers could pile up: jobs queued or running, the bytes of their bodies
held until they end, and the event streams open at once; past a cap, ``Busy`` says which.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from sdxl_worker.errors import MB, megabytes

log = logging.getLogger(__name__)

Source = Callable[[dict], AsyncIterator[dict]]
ProgressCallback = Callable[[dict, dict], None]  # (job, {"step", "total_steps", "stage"}), from any thread
JS_SAFE = 2**53 - 1  # larger integers (seeds up to 2^63) lose digits in a browser's JSON.parse
KEPT_JOBS = 20  # finished jobs whose events stay for a late watcher; older ones are dropped
UNWATCHED_S = 10.0  # a running job with no page watching it this long is cancelled
ENDED = ("result", "error", "cancelled")
REPLACED = ("preview", "progress", "status", "notice")  # a newer one of these replaces the one before


@dataclass(frozen=True)
class Limits:
    jobs: int = 8  # queued or running at once
    held_bytes: int = 256 * MB  # bodies of the jobs queued or running, together
    streams: int = 32  # event streams open at once (a page holds one)


class Busy(Exception):
    """A cap reached: one sentence for the page (HTTP 429)."""


@dataclass
class StudioJob:
    id: str
    size: int = 0  # bytes of the body it came in, held until it ends
    started: float = field(default_factory=time.monotonic)
    events: list[dict] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    ended: bool = False
    watchers: int = 0
    numbered: int = 0  # events so far; each kept event carries its number

    def add(self, event: str, data: dict) -> None:
        if self.ended:  # a step report from the worker's thread after the end: the end stands
            return
        data = {**data, "seconds": round(time.monotonic() - self.started, 3)}
        if event in REPLACED:
            self.events = [kept for kept in self.events if kept["event"] != event]
        self.numbered += 1
        self.events.append({"event": event, "data": data, "number": self.numbered})
        self.ended = event in ENDED
        self.changed.set()
        self.changed = asyncio.Event()


def kind_of(output: dict) -> str:
    if "error" in output:
        return "error"
    if "preview" in output:
        return "preview"
    if "images" in output:
        return "result"
    if "result" in output:
        return "notice"  # a result too large for a stream chunk is on its way (delivery/size_guard.py)
    if "status" in output and "step" not in output:
        return "status"  # a RunPod endpoint's job state: IN_QUEUE, IN_PROGRESS
    return "progress"


def for_the_page(value):
    """``value`` with integers a browser cannot hold exactly written as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > JS_SAFE:
        return str(value)
    if isinstance(value, dict):
        return {key: for_the_page(item) for key, item in value.items()}
    if isinstance(value, list):
        return [for_the_page(item) for item in value]
    return value


def sse(event: dict) -> bytes:
    """One Server-Sent Event: its name, and its data as one line of JSON."""
    return f"event: {event['event']}\ndata: {json.dumps(for_the_page(event['data']))}\n\n".encode()


class Jobs:
    """The jobs started from the page (the source queues them as a worker does)."""

    def __init__(self, source: Source, unwatched_s: float = UNWATCHED_S, limits: Limits = Limits()):
        self.source, self.unwatched_s, self.limits = source, unwatched_s, limits
        self.jobs: dict[str, StudioJob] = {}
        self.streams = 0  # event streams open now
        self.arriving = 0  # bytes of job bodies still being received
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> list[StudioJob]:
        """The jobs queued or running."""
        return [job for job in self.jobs.values() if not job.ended]

    def room_for(self, size: int) -> None:
        """Busy unless a job of ``size`` body bytes fits under the caps now."""
        open_jobs = self.open()
        if len(open_jobs) >= self.limits.jobs:
            raise Busy(f"This studio already has {len(open_jobs)} jobs queued or running, its limit; "
                       f"wait for one to end or cancel one.")
        if sum(job.size for job in open_jobs) + self.arriving + size > self.limits.held_bytes:
            raise Busy(f"The jobs queued here already hold close to {megabytes(self.limits.held_bytes)} of input "
                       f"images, this studio's limit; wait for one to end, or send smaller images.")

    def start(self, job_input: dict, size: int = 0) -> StudioJob:
        """Start a job (Busy past a cap); ``size``: the bytes of the body it came in."""
        self.room_for(size)
        self._loop = asyncio.get_running_loop()
        job = StudioJob(secrets.token_urlsafe(16), size=size)
        self.jobs[job.id] = job
        job.task = self._loop.create_task(self._run(job, {"id": job.id, "input": job_input}))
        job.task.add_done_callback(lambda _task: self._settle(job))
        self._loop.call_later(self.unwatched_s, self._cancel_if_unwatched, job.id)
        return job

    def _trim(self) -> None:
        finished = [key for key, kept in self.jobs.items() if kept.ended]
        for old in finished[:-KEPT_JOBS]:
            del self.jobs[old]

    def _settle(self, job: StudioJob) -> None:
        """The job's task is done: a job that did not end by itself was cancelled (the page's Cancel,
        before its task began or while it ran); it ends so, and gives its place under the caps back."""
        if not job.ended:
            job.add("cancelled", {"message": "Cancelled."})
            self._trim()

    def progress(self, job: dict, report: dict) -> None:
        """A step report from the worker's job thread (Runner's on_progress): onto the loop."""
        studio_job = self.jobs.get(job.get("id"))
        if studio_job is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(studio_job.add, "progress", report)

    async def _run(self, job: StudioJob, request: dict) -> None:
        try:
            async for output in self.source(request):
                kind = kind_of(output)
                if kind == "error" and not isinstance(output["error"], str):  # an endpoint's error object
                    output = {**output, "error": json.dumps(output["error"])[:500]}
                job.add(kind, output)
                if job.ended:
                    break
            if not job.ended:
                job.add("error", {"error": "The job ended without a result."})
        except Exception as error:  # a source that fails (the endpoint unreachable): the page says so
            log.warning("studio job %s failed: %s", job.id, error)
            job.add("error", {"error": str(error) or type(error).__name__})
        finally:
            self._trim()

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.ended or job.task is None or job.task.done():
            return False
        job.task.cancel()
        return True

    def _cancel_if_unwatched(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.ended:
            return
        if job.watchers == 0:
            log.info("studio job %s: no page watches it (closed?); cancelling it", job_id)
            self.cancel(job_id)
        else:
            self._loop.call_later(self.unwatched_s, self._cancel_if_unwatched, job_id)

    def watch(self, job_id: str) -> AsyncIterator[dict]:
        """The job's kept events, then each new one as it comes, until it ends. Busy, before the
        answer starts, when as many streams as the limit are open already."""
        if self.streams >= self.limits.streams:
            raise Busy(self._too_many_streams())
        return self._events(self.jobs[job_id])

    def _too_many_streams(self) -> str:
        return (f"This studio already has {self.streams} event streams open, its limit; close other studio "
                f"tabs and reload.")

    async def _events(self, job: StudioJob) -> AsyncIterator[dict]:
        # Counted here, where a finally is sure to run; a flood that passed watch() together is
        # still held to the limit: the streams past it end at once with an error event.
        if self.streams >= self.limits.streams:
            yield {"event": "error", "data": {"error": self._too_many_streams()}, "number": 0}
            return
        self.streams += 1
        job.watchers += 1
        try:
            sent = 0  # the number of the last event sent; superseded previews are skipped
            while True:
                changed = job.changed
                for event in [kept for kept in job.events if kept["number"] > sent]:
                    yield event
                    sent = event["number"]
                if job.ended:
                    return
                await changed.wait()
        finally:
            job.watchers -= 1
            self.streams -= 1
