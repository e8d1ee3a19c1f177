"""Whose turn it is: at most ``count`` jobs run at once, the others wait in the order they came.

A job asks for a turn (``ask``), awaits its ticket, and gives the ticket back exactly once when
it is answered, whatever happened in between (``give_back``): a ticket still waiting leaves the
line, a ticket that had its turn hands it to the next in line. So a job cancelled while it waits
costs nothing, and a job answered while its thread is still stuck in an upload frees its turn
for the next job at once (the stuck thread is not a turn: src/sdxl_worker/runtime/threads.py).
Thread-safe, and each ticket is woken on its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class Ticket:
    """One job's place: ``ready`` is done when its turn has come."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.ready: asyncio.Future = loop.create_future()
        self.granted = False  # set under the lock the moment the turn is this ticket's


class Turns:
    def __init__(self, count: int = 1):
        self.count = count
        self.running = 0  # tickets granted and not given back
        self._line: deque[Ticket] = deque()
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._line)

    def ask(self) -> Ticket:
        """A ticket for the running loop; its ``ready`` is already done when a turn is free now."""
        ticket = Ticket(asyncio.get_running_loop())
        with self._lock:
            if self.running < self.count and not self._line:
                self.running += 1
                ticket.granted = True
            else:
                self._line.append(ticket)
        if ticket.granted:
            ticket.ready.set_result(None)
        return ticket

    def give_back(self, ticket: Ticket) -> None:
        """The job is answered (or gone): its place in line, or its turn, goes to the next job."""
        with self._lock:
            if not ticket.granted:
                self._line.remove(ticket)
                return
            ticket.granted = False
            self.running -= 1
        self._hand_on()

    def _hand_on(self) -> None:
        while True:
            with self._lock:
                if self.running >= self.count or not self._line:
                    return
                ticket = self._line.popleft()
                self.running += 1
                ticket.granted = True
            try:
                ticket.loop.call_soon_threadsafe(_wake, ticket.ready)
                return
            except RuntimeError:  # its loop is closed: nobody waits for that job any more
                with self._lock:
                    ticket.granted = False
                    self.running -= 1


def _wake(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)
