"""The threads work runs in: one long-lived denoise thread, and job threads made as jobs need them.

The pipelines always run in the same thread (``DENOISE``): one place where the models are used,
whatever thread a job came in on (an early measurement of a fresh thread per job being slower on
CPU no longer reproduces: ``python bench/concurrency.py`` measured 1.00x). Jobs themselves
(validation, downloads, previews, encoding, upload) run in
``JobThreads``: an idle thread takes the next job, a new one is made when none is idle, and a
thread left with nothing to do ends unless fewer than ``keep`` wait. A stopped job still stuck
in its upload keeps its own thread while the next job gets another, and a job that never
started never had one: the threads alive are always the jobs in them plus at most ``keep``
idle ones. How many jobs run at once is decided before a job gets here
(src/sdxl_worker/runtime/turns.py), not by how many threads there are.
The threads are daemons: a worker told to exit does not wait for them.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from typing import Callable


def _run(future: Future, work: Callable[[], object]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(work())
    except BaseException as error:  # handed to whoever waits on the future
        future.set_exception(error)


class LongLivedThreads:
    """``count`` daemon threads, started on first use, taking work from one queue in order."""

    def __init__(self, name: str, count: int = 1):
        self.name, self.count = name, count
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], object]) -> Future:
        """Run ``work()`` in one of the threads; the future holds its result or exception."""
        with self._lock:
            while len(self._threads) < self.count:
                thread = threading.Thread(target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
        future: Future = Future()
        self._work.put((future, work))
        return future

    def _serve(self) -> None:
        while True:
            future, work = self._work.get()
            _run(future, work)
            del future, work  # a finished job's tensors must not wait here for the next one


class JobThreads:
    """A thread for every piece of work submitted, reusing idle ones; at most ``keep`` stay idle."""

    def __init__(self, name: str, keep: int = 1):
        self.name, self.keep = name, keep
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # the inbox of each idle thread
        self._alive = self._busy = 0
        self._numbers = itertools.count()

    @property
    def alive(self) -> int:
        """Threads that exist now: the busy ones and the idle ones."""
        return self._alive

    @property
    def busy(self) -> int:
        """Threads running a piece of work (a stopped job's stuck upload included)."""
        return self._busy

    def submit(self, work: Callable[[], object]) -> Future:
        """Run ``work()`` at once, in an idle thread or a new one; the future holds its result."""
        future: Future = Future()
        with self._lock:
            self._busy += 1
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._alive += 1
        if inbox is not None:
            inbox.put((future, work))
            return future
        inbox = queue.SimpleQueue()
        inbox.put((future, work))
        thread = threading.Thread(target=self._serve, args=(inbox,), name=f"{self.name}-{next(self._numbers)}",
                                  daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread to be had (the process's limit): nothing was counted for it
            with self._lock:
                self._busy -= 1
                self._alive -= 1
            raise
        return future

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        while True:
            future, work = inbox.get()
            _run(future, work)
            del future, work  # a finished job's tensors must not wait here for the next one
            with self._lock:
                self._busy -= 1
                if len(self._idle) >= self.keep:
                    self._alive -= 1
                    return
                self._idle.append(inbox)


DENOISE = LongLivedThreads("denoise")
