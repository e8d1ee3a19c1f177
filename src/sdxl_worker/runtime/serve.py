"""Jobs for an asyncio loop (runpod's job loop): run in worker threads, awaited without blocking.

``Runner.run(job)`` is an async generator. Each job runs ``run_job`` in a job thread (the
pipelines in the denoise thread, src/sdxl_worker/runtime/threads.py) and hands each output to
the loop, so while a job denoises the loop goes on taking stop signals, posting stream chunks
and progress. The job's ``Stop`` is set when:

- runpod cancels the job's task (a stop signal: the user's cancel, or the execution timeout);
- the job runs past JOB_TIMEOUT_S;
- the worker gets SIGTERM (``shut_down``): every running job is answered with an error saying
  the worker is shutting down, then the process exits, within ``EXIT_WITHIN_S`` of the signal.

Either way the denoising ends within one step and the job's memory is freed before the next.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
import time
from typing import AsyncIterator

from sdxl_worker.errors import Failure
from sdxl_worker.runtime.context import ProgressCallback
from sdxl_worker.runtime.job import run_job
from sdxl_worker.runtime.logs import protect
from sdxl_worker.runtime.stopping import CANCELLED, SHUTTING_DOWN, TIMED_OUT, Stop
from sdxl_worker.runtime.threads import JobThreads
from sdxl_worker.runtime.turns import Turns

log = protect(logging.getLogger(__name__))

EXIT_WITHIN_S = 8.0  # after SIGTERM: time for running jobs to be answered (RunPod kills at 10 s or later)
STOP_GRACE_S = 2.0  # a stopped job not answered by then (stuck in a download or upload) is answered for it
_POLL_S = 0.25  # how often a waiting handler looks at its job's Stop


class _AnsweredForIt(Failure):
    """The error answer of a stopped job whose thread did not answer within STOP_GRACE_S."""


class _Turn:
    """A job's turn, given back once: when the job is answered and its thread has ended, or
    ``grace_s`` after the answer while that thread still works (a cancelled job still validating
    or downloading, a stuck upload). So a stopped job's thread never runs beside the next job for
    longer than the grace, and never holds the worker up for longer either."""

    def __init__(self, turns: Turns, ticket):
        self.turns, self.ticket = turns, ticket
        self.grace_s = STOP_GRACE_S
        self._lock = threading.Lock()
        self._thread_working = self._answered = self._given = False

    def thread_started(self) -> None:
        with self._lock:
            self._thread_working = True

    def thread_ended(self) -> None:
        with self._lock:
            self._thread_working = False
            now = self._answered
        if now:
            self._give_back()

    def answered(self) -> None:
        with self._lock:
            self._answered = True
            now = not self._thread_working or self.grace_s <= 0
        if now:
            self._give_back()
        else:
            timer = threading.Timer(self.grace_s, self._give_back)
            timer.daemon = True
            timer.start()

    def _give_back(self) -> None:
        with self._lock:
            if self._given:
                return
            self._given = True
        self.turns.give_back(self.ticket)


class Runner:
    """Runs jobs on ``worker`` (sdxl_worker.runtime.worker.Worker), ``concurrency`` at a time, each stoppable.

    ``run_job`` is the work of one job (sdxl_worker.runtime.job.run_job) and ``clock`` the one its
    JOB_TIMEOUT_S is read on (time.monotonic); tests give a fast fake of each."""

    def __init__(self, worker, timeout_s: float | None = None, concurrency: int = 1,
                 on_progress: ProgressCallback | None = None, exit_process=None, pending=None, run_job=run_job,
                 clock=time.monotonic):
        self.worker, self.timeout_s = worker, timeout_s
        self.on_progress = on_progress
        self.pending = pending or (lambda: 0)  # jobs runpod holds, taken but not yet answered (its JobsProgress)
        self.turns = Turns(concurrency)
        self.threads = JobThreads("job", keep=concurrency)
        self.running: dict[Stop, str] = {}  # the jobs whose answer is not yet sent: stop -> job id
        self.shutting_down = False
        self._run_job, self._clock = run_job, clock
        self._exit_process = exit_process or _exit_process

    async def run(self, job: dict) -> AsyncIterator[dict]:
        """The job's outputs (previews, then the final payload or one error), as run_job yields them.

        The job waits for its turn (at most ``concurrency`` run at once); JOB_TIMEOUT_S counts from
        then. Stopped while it waits (SIGTERM), it is answered at once, saying it never started;
        cancelled while it waits, it just leaves the line. Answered or cancelled while its thread
        still works, its turn passes on when that thread ends, or STOP_GRACE_S later at the latest."""
        stop = Stop(self.timeout_s, self._clock)
        if self.shutting_down:
            stop.stop(SHUTTING_DOWN)
        self._track(stop, job)
        turn = _Turn(self.turns, self.turns.ask())
        try:
            while not turn.ticket.ready.done() and not stop.stopped:
                await asyncio.wait({turn.ticket.ready}, timeout=_POLL_S)
            if stop.stopped:
                yield Failure(stop.message(), stop.reason)
                return
            stop.begin()
            async for output in self._outputs(job, stop, turn):
                yield output
        finally:
            # Cancelled (runpod's stop signal), closed early, or done: the job's thread stops at its next step.
            stop.stop(CANCELLED)
            turn.answered()

    async def _outputs(self, job: dict, stop: Stop, turn: "_Turn") -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue = asyncio.Queue()

        def hand_over(item) -> None:
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, item)
            except RuntimeError:  # the loop is gone (the process is exiting): nobody waits for this job
                pass

        def work() -> None:
            try:
                for output in self._run_job(self.worker, job, self.on_progress, stop):
                    hand_over(output)
            finally:
                turn.thread_ended()
                hand_over(None)

        turn.thread_started()
        self.threads.submit(work)
        while (output := await self._next(outputs, stop)) is not None:
            yield output
            if isinstance(output, _AnsweredForIt):
                log.warning("job %s did not stop within %g s (%s); answered, its thread left to finish",
                            job.get("id"), STOP_GRACE_S, stop.where)
                turn.grace_s = 0  # it had its grace already: the next job starts now
                return

    async def _next(self, outputs: asyncio.Queue, stop: Stop):
        """The job's next output. Past its deadline the job is told to stop; once stopped (deadline,
        SIGTERM), its own answer is awaited for STOP_GRACE_S, then one is made for it."""
        stopped_at = None
        while True:
            if stop.deadline is not None and not stop.stopped and stop.clock() >= stop.deadline:
                stop.stop(TIMED_OUT)
            if stop.stopped and stopped_at is None:
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
                return _AnsweredForIt(stop.message(), stop.reason)
            # Not asyncio.wait_for: before Python 3.12 it hands back an output that arrives in the
            # same turn of the loop as a cancel, and the cancel is lost (the job then runs to its end).
            getter = asyncio.ensure_future(outputs.get())
            try:
                await asyncio.wait({getter}, timeout=_POLL_S)
            finally:
                if not getter.done():
                    getter.cancel()  # an output not yet taken stays in the queue
            if getter.done() and not getter.cancelled():
                return getter.result()

    def _track(self, stop: Stop, job: dict) -> None:
        """Count the job as running until its task is done: for runpod, that is once its answer is sent.
        A task cancelled while runpod posts a chunk never resumes this generator: its end stops the job too."""
        self.running[stop] = str(job.get("id", "local"))

        def done(_task) -> None:
            stop.stop(CANCELLED)
            self.running.pop(stop, None)

        asyncio.current_task().add_done_callback(done)

    def shut_down(self) -> None:
        """SIGTERM: stop every running job (each answers that the worker is shutting down), take no new
        one, and exit the process once they are answered, or after EXIT_WITHIN_S at the latest."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.warning("SIGTERM: stopping %d running job(s), then exiting", len(self.running))
        for stop in list(self.running):
            stop.stop(SHUTTING_DOWN)
        threading.Thread(target=self._exit_when_answered, name="shutdown", daemon=True).start()

    def _exit_when_answered(self) -> None:
        """Exit once no job is left: none running here, none runpod took and has not answered (a job
        taken just before the signal is answered "shutting down" as soon as runpod hands it over)."""
        give_up_at = time.monotonic() + EXIT_WITHIN_S
        while (self.running or self.pending() > 0) and time.monotonic() < give_up_at:
            time.sleep(0.05)
        if self.running or self.pending() > 0:
            log.warning("exiting after %g s with jobs unanswered: %s; runpod holds %d", EXIT_WITHIN_S,
                        ", ".join(self.running.values()) or "none here", self.pending())
        else:
            log.info("every job answered; exiting")
        self._exit_process()


def _exit_process() -> None:
    """Exit now: runpod's loop would otherwise wait out its stop-channel long poll (up to 90 s).
    Its heartbeat process is ended first, so no orphan keeps pinging."""
    for child in multiprocessing.active_children():
        child.terminate()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
