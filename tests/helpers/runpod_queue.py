"""A loopback stand-in for RunPod's job queue, speaking the protocol runpod-python's job loop uses.

The worker under test is ``python handler.py`` with RunPod's variables pointing here
(``RunPodQueue.env()``), so it runs runpod's real ``JobScaler``, heartbeat and HTTP code:

- ``GET  /job-take/POD?...&job_in_progress=0|1``  the next job as JSON, or 204 after a short wait;
- ``GET  /job-take-batch/POD?...&batch_size=N``  (CONCURRENCY above 1) up to N jobs as a JSON list;
- ``GET  /job-stop/POD?...``   long poll: ``{"jobsToStop": [ids]}`` when a stop is queued, else 204
  after ``stop_poll_s`` (RunPod holds it open; so does this);
- ``POST /job-done/POD/JOB?...&isStream=true|false``  results, and progress (``status: IN_PROGRESS``);
- ``POST /job-stream/POD/JOB?...&isStream=false``  stream chunks;
- ``GET  /ping/POD?job_id=...&runpod_version=...``  the heartbeat.

Every request must carry the API key in ``Authorization``; each one is recorded with its
arrival time, so tests can ask what arrived and when.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.helpers import ROOT, stop_process

API_KEY = "rp-test-key-0123456789"
POD_ID = "pod-under-test"


@dataclass
class Posted:
    kind: str  # "done", "stream" or "ping"
    job_id: str | None
    body: object
    size: int
    at: float = field(default_factory=time.monotonic)
    query: dict = field(default_factory=dict)


class RunPodQueue:
    def __init__(self, stop_poll_s: float = 20.0, take_wait_s: float = 0.5):
        self.stop_poll_s, self.take_wait_s = stop_poll_s, take_wait_s
        self.jobs: queue.Queue = queue.Queue()
        self.stops: queue.Queue = queue.Queue()
        self.posted: list[Posted] = []
        self.taken: dict[str, float] = {}  # job id -> when the worker took it
        self.unauthorised = 0
        self.batch_takes = 0  # job-take-batch requests (CONCURRENCY above 1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def env(self) -> dict:
        """RunPod's variables, as the platform sets them, pointing at this queue."""
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_WEBHOOK_PING": f"{self.url}/ping/$RUNPOD_POD_ID?gpu=test",
            "RUNPOD_AI_API_KEY": API_KEY,
            "RUNPOD_POD_ID": POD_ID,
            "RUNPOD_PING_INTERVAL": "1000",
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what tests do ---

    def submit(self, job_id: str, job_input: dict, **extra) -> None:
        self.jobs.put({"id": job_id, "input": job_input, **extra})

    def stop(self, job_id: str) -> None:
        self.stops.put(job_id)

    def records(self, kind: str, job_id: str | None = None) -> list[Posted]:
        with self._lock:
            return [p for p in self.posted if p.kind == kind and (job_id is None or p.job_id == job_id)]

    def result(self, job_id: str, timeout: float = 120) -> Posted:
        """The job's final answer (not a progress report), waiting for it."""
        return self.wait_for(lambda: next((p for p in self.records("done", job_id)
                                           if not _is_progress(p.body)), None), timeout, f"no result for {job_id}")

    def progress(self, job_id: str) -> list[Posted]:
        return [p for p in self.records("done", job_id) if _is_progress(p.body)]

    def pings_for(self, job_id: str) -> list[Posted]:
        return [p for p in self.records("ping") if job_id in (p.query.get("job_id") or [""])[0].split(",")]

    @staticmethod
    def wait_for(found, timeout: float, what: str):
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            value = found()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"{what} within {timeout} s")

    # --- the server ---

    def _handler_class(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == API_KEY:
                    return True
                owner.unauthorised += 1
                self._answer(401)
                return False

            def _answer(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if not self._authorised():
                    return
                url = urlparse(self.path)
                parts, query = url.path.strip("/").split("/"), parse_qs(url.query)
                if parts[0] in ("job-take", "job-take-batch"):
                    try:
                        jobs = [owner.jobs.get(timeout=owner.take_wait_s)]
                    except queue.Empty:
                        return self._answer(204)
                    wanted = int(query.get("batch_size", ["1"])[0]) if parts[0] == "job-take-batch" else 1
                    owner.batch_takes += parts[0] == "job-take-batch"
                    while len(jobs) < wanted and not owner.jobs.empty():
                        jobs.append(owner.jobs.get())
                    for job in jobs:
                        owner.taken[job["id"]] = time.monotonic()
                    return self._answer(200, jobs if parts[0] == "job-take-batch" else jobs[0])
                if parts[0] == "job-stop":
                    try:
                        first = owner.stops.get(timeout=owner.stop_poll_s)
                    except queue.Empty:
                        return self._answer(204)
                    ids = [first]
                    while not owner.stops.empty():
                        ids.append(owner.stops.get())
                    return self._answer(200, {"jobsToStop": ids})
                if parts[0] == "ping":
                    owner._record(Posted("ping", None, None, 0, query=query))
                    return self._answer(200, {})
                self._answer(404)

            def do_POST(self):
                if not self._authorised():
                    return
                url = urlparse(self.path)
                parts, query = url.path.strip("/").split("/"), parse_qs(url.query)
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = {"job-done": "done", "job-stream": "stream"}.get(parts[0])
                if kind is None or len(parts) != 3:
                    return self._answer(404)
                owner._record(Posted(kind, parts[2], json.loads(data), len(data), query=query))
                self._answer(200, {})

        return Handler

    def _record(self, posted: Posted) -> None:
        with self._lock:
            self.posted.append(posted)


def _is_progress(body) -> bool:
    return isinstance(body, dict) and body.get("status") == "IN_PROGRESS"


@contextlib.contextmanager
def handler_process(folder, rp_queue: RunPodQueue | None = None, **env):
    """A queue (this one, or a new one), and `python handler.py` taking jobs from it; yields (queue,
    process, log path)."""
    rp_queue = rp_queue or RunPodQueue()
    log_path = folder / "worker.log"
    env = dict(os.environ, **rp_queue.env(), BASE_MODEL="tiny", REFINER_MODEL="tiny", PYTHONUNBUFFERED="1",
               RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true", **env)  # no 8.8.8.8 here
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        yield rp_queue, process, log_path
    finally:
        stop_process(process)  # SIGTERM first: the worker ends runpod's heartbeat process before it exits
        rp_queue.close()
