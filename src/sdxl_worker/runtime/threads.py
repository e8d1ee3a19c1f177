"""Long-lived threads that run submitted work, one piece at a time each.

The pipelines always run in the same thread (``DENOISE``): on CPU a fresh thread per job made
torch's kernels markedly slower (one tiny-model UNet call 58.6 ms in a new thread, 32.8 ms in a
long-lived one). Jobs themselves (validation, downloads, previews, encoding, upload) run in a
small pool of their own (``JobThreads``), so the asyncio loop that takes jobs never blocks.
The threads are daemons: a worker told to exit does not wait for them.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable


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

    def lend_one(self) -> None:
        """One more thread, while one of them is held by work nobody waits for any more (a stopped
        job stuck in an upload): the next job starts at once. ``retire_one`` when that work ends."""
        with self._lock:
            self.count += 1

    def retire_one(self) -> None:
        """Undo one ``lend_one``: the next idle thread ends."""
        with self._lock:
            self.count -= 1
        self._work.put(None)

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:  # retired
                with self._lock:
                    self._threads.remove(threading.current_thread())
                return
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
            del future, work, item  # a finished job's tensors must not wait here for the next one


DENOISE = LongLivedThreads("denoise")
