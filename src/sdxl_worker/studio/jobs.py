"""The studio's jobs: each one runs from a source and its outputs go to whoever watches it.

A *source* is an async generator function ``source(job) -> outputs``: the worker's own RunPod
handler (handler.py's runpod_config), or a RunPod endpoint (endpoint.py). A job runs as an
asyncio task iterating it; cancelling that task is the page's Cancel, the same path as RunPod's
cancel (the handler's Runner sets the job's Stop and the denoising ends within one step).

Every output becomes an event kept on the job, so a page that connects late still sees them all:
``preview`` (step, total_steps, stage and the preview), ``progress`` (step reports without a
preview), ``status`` (an endpoint's IN_QUEUE or IN_PROGRESS), then one of ``result``, ``error`` or ``cancelled``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

log = logging.getLogger(__name__)

Source = Callable[[dict], AsyncIterator[dict]]
ProgressCallback = Callable[[dict, dict], None]  # (job, {"step", "total_steps", "stage"}), from any thread
JS_SAFE = 2**53 - 1  # larger integers (seeds up to 2^63) lose digits in a browser's JSON.parse
KEPT_JOBS = 20  # finished jobs whose events stay for a late watcher; older ones are dropped
ENDED = ("result", "error", "cancelled")


@dataclass
class StudioJob:
    id: str
    started: float = field(default_factory=time.monotonic)
    events: list[dict] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["event"] in ENDED

    def add(self, event: str, data: dict) -> None:
        data = {**data, "seconds": round(time.monotonic() - self.started, 3)}
        self.events.append({"event": event, "data": data})
        self.changed.set()
        self.changed = asyncio.Event()


def kind_of(output: dict) -> str:
    if "error" in output:
        return "error"
    if "preview" in output:
        return "preview"
    if "images" in output:
        return "result"
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

    def __init__(self, source: Source):
        self.source = source
        self.jobs: dict[str, StudioJob] = {}
        self._numbers = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, job_input: dict) -> StudioJob:
        self._loop = asyncio.get_running_loop()
        job = StudioJob(f"studio-{next(self._numbers)}")
        self.jobs[job.id] = job
        for old in [key for key, kept in self.jobs.items() if kept.ended][:-KEPT_JOBS]:
            del self.jobs[old]
        job.task = self._loop.create_task(self._run(job, {"id": job.id, "input": job_input}))
        return job

    def progress(self, job: dict, report: dict) -> None:
        """A step report from the worker's job thread (Runner's on_progress): onto the loop."""
        studio_job = self.jobs.get(job.get("id"))
        if studio_job is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(studio_job.add, "progress", report)

    async def _run(self, job: StudioJob, request: dict) -> None:
        try:
            async for output in self.source(request):
                job.add(kind_of(output), output)
                if job.ended:
                    break
            if not job.ended:
                job.add("error", {"error": "The job ended without a result."})
        except asyncio.CancelledError:
            job.add("cancelled", {"message": "Cancelled."})
        except Exception as error:  # a source that fails (the endpoint unreachable): the page says so
            log.warning("studio job %s failed: %s", job.id, error)
            job.add("error", {"error": str(error) or type(error).__name__})

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job.ended or job.task is None:
            return False
        job.task.cancel()
        return True

    async def watch(self, job_id: str) -> AsyncIterator[dict]:
        """The job's events from the first, then each new one as it comes, until it ends."""
        job, sent = self.jobs[job_id], 0
        while True:
            changed = job.changed
            while sent < len(job.events):
                yield job.events[sent]
                sent += 1
            if job.ended:
                return
            await changed.wait()
