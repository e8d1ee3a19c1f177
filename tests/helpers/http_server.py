"""`python handler.py --serve` in a subprocess on loopback, and the same server's app in this process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import ROOT, free_port, stop_process

KEY = "test-key-0123456789abcdef"


@dataclass
class Served:
    url: str  # PORT
    health_url: str  # PORT_HEALTH
    process: subprocess.Popen
    log: Path
    pings: list = field(default_factory=list)  # every /ping status seen while it started

    def log_text(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def server_process(folder: Path, wait_ready: bool = True, **env):
    """The HTTP server on the tiny model (PORT and PORT_HEALTH free loopback ports, these variables
    added); yields a Served once /ping answers 200 (or at once, without ``wait_ready``)."""
    port, health = free_port(), free_port()
    env = dict(os.environ, BASE_MODEL="tiny", REFINER_MODEL="tiny", PYTHONUNBUFFERED="1", SERVE_HOST="127.0.0.1",
               PORT=str(port), PORT_HEALTH=str(health), **env)
    log = folder / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "handler.py", "--serve"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{health}", process, log)
    try:
        if wait_ready:
            wait_for_ping(served, 200)
        yield served
    finally:
        stop_process(process, grace_s=20)


def wait_for_ping(served: Served, status: int, within_s: float = 120) -> None:
    """Poll /ping every 20 ms, recording each status, until it answers ``status``."""
    give_up = time.monotonic() + within_s
    while time.monotonic() < give_up:
        assert served.process.poll() is None or status != 200, f"the server exited: {served.log_text()[-2000:]}"
        try:
            answer = httpx.get(served.health_url + "/ping", timeout=5).status_code
        except httpx.TransportError:
            answer = None
        if not served.pings or served.pings[-1] != answer:
            served.pings.append(answer)
        if answer == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"/ping never answered {status}: {served.pings}; {served.log_text()[-2000:]}")


def app_for(worker, concurrency: int = 1, queue: int = 1):
    """The server's app on ``worker``, ready (as start-up leaves it), for ``served`` in this process."""
    from sdxl_worker.api.app import create_app
    from sdxl_worker.api.jobs import Jobs
    from sdxl_worker.runtime.serve import Runner

    jobs = Jobs(concurrency, queue)
    jobs.ready(worker, lambda on_progress: Runner(worker, None, concurrency, on_progress=on_progress))
    return create_app(jobs)
