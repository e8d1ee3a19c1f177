"""Why a job stops before its end: a stop signal, the worker's own deadline, or shutdown.

One ``Stop`` per job, shared by the thread that runs the job and the one that waits for it.
``stop(reason)`` may be called from anywhere (the event loop, a signal handler); ``check()``
raises ``JobStopped`` in the job's thread, between phases and in every denoising step, so a
stopped job ends within one step.
"""

from __future__ import annotations

import threading
import time

CANCELLED = "cancelled"  # RunPod's stop signal: a user's cancel, or the endpoint's execution timeout
TIMED_OUT = "timed out"  # JOB_TIMEOUT_S
SHUTTING_DOWN = "shutting down"  # SIGTERM


class JobStopped(Exception):
    """The job was stopped; the message is the sentence its answer carries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Stop:
    """A job's stop switch, with an optional deadline (seconds of the monotonic clock) that runs
    from ``begin()``: a job waiting for its turn has not started, and its time does not run."""

    def __init__(self, timeout_s: float | None = None, clock=time.monotonic):
        self.clock = clock
        self.timeout_s = timeout_s
        self.deadline: float | None = None
        self.reason: str | None = None
        self.where = "before it started"
        self._set = threading.Event()

    def begin(self) -> None:
        """The job starts now: its timeout counts from here."""
        if self.timeout_s:
            self.deadline = self.clock() + self.timeout_s

    def stop(self, reason: str) -> None:
        """Ask the job to stop; the first reason given is the one it reports."""
        if self.reason is None:
            self.reason = reason
        self._set.set()

    @property
    def stopped(self) -> bool:
        return self._set.is_set()

    def check(self, where: str | None = None) -> None:
        """Raise JobStopped when the job was stopped or ran past its deadline; ``where`` says how far it got."""
        if where is not None:
            self.where = where
        if not self._set.is_set() and self.deadline is not None and self.clock() >= self.deadline:
            self.stop(TIMED_OUT)
        if self._set.is_set():
            raise JobStopped(self.reason, self.message())

    def message(self) -> str:
        if self.reason == TIMED_OUT:
            return (f"The job ran longer than JOB_TIMEOUT_S={self.timeout_s:g} s and was stopped {self.where}; "
                    f"ask for fewer steps or images, or raise JOB_TIMEOUT_S.")
        if self.reason == SHUTTING_DOWN:
            return f"The worker is shutting down (SIGTERM) and stopped the job {self.where}; send it again."
        return f"The job was cancelled {self.where}."
