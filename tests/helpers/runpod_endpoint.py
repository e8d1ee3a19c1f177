"""A loopback stand-in for RunPod's public endpoint API, in front of tests/runpod_queue.py's queue.

What a client of a serverless endpoint calls (``https://api.runpod.ai/v2/ENDPOINT/...``), with the
worker behind it being ``python handler.py`` taking the jobs from the queue through runpod's own
job loop, as on RunPod:

- ``POST /v2/ENDPOINT/run``            ``{"input": {...}}`` -> ``{"id", "status": "IN_QUEUE"}``;
- ``POST /v2/ENDPOINT/runsync``        the same, answered when the job ends: ``{"id", "status", "output"}``;
- ``GET  /v2/ENDPOINT/stream/JOB``     the chunks the worker streamed since the last call, and the status;
  as on RunPod, a chunk over 1 MB is dropped from the stream (it stays in the aggregated output);
- ``GET  /v2/ENDPOINT/status/JOB``     the status and, once done, the aggregated output (or the error);
- ``POST /v2/ENDPOINT/cancel/JOB``     a stop signal to the worker; the job ends CANCELLED.

Every call must carry ``Authorization: Bearer KEY``; each call is recorded (method, path, headers).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers.runpod_queue import RunPodQueue

CLIENT_KEY = "rp-client-key-abcdef0123456789"
STREAM_CHUNK_LIMIT = 1_000_000  # RunPod's limit for one /stream chunk
ENDPOINT_ID = "endpoint-under-test"


class RunPodEndpoint:
    def __init__(self, rp_queue: RunPodQueue):
        self.queue = rp_queue
        self.calls: list[tuple[str, str, dict]] = []
        self.cancelled: set[str] = set()
        self._sent: dict[str, int] = {}  # job id -> stream chunks already given to the client
        # RunPod answers /stream with every chunk since the last call; a test that must see each
        # chunk in an answer of its own, whatever the machine's speed, sets 1.
        self.chunks_per_call: int | None = None
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v2"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def status(self, job_id: str) -> dict:
        done = [p for p in self.queue.records("done", job_id) if p.body.get("status") != "IN_PROGRESS"]
        if job_id in self.cancelled:
            return {"id": job_id, "status": "CANCELLED"}
        if done:
            body = done[-1].body
            if "error" in body:
                return {"id": job_id, "status": "FAILED", "error": body["error"]}
            return {"id": job_id, "status": "COMPLETED", "output": body.get("output")}
        return {"id": job_id, "status": "IN_PROGRESS" if job_id in self.queue.taken else "IN_QUEUE"}

    def _handler_class(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str):
                owner.calls.append((method, self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {CLIENT_KEY}":
                    return self._answer(401, {"error": "Unauthorized"})
                parts = self.path.strip("/").split("/")
                if len(parts) < 3 or parts[0] != "v2" or parts[1] != ENDPOINT_ID:
                    return self._answer(404, {"error": "no such endpoint"})
                action, job_id = parts[2], (parts[3] if len(parts) > 3 else None)
                if method == "POST" and action in ("run", "runsync"):
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                    job_id = f"remote-{next(owner._numbers)}"
                    owner.queue.submit(job_id, body["input"])
                    if action == "run":
                        return self._answer(200, {"id": job_id, "status": "IN_QUEUE"})
                    give_up = time.monotonic() + 120
                    while owner.status(job_id)["status"] in ("IN_QUEUE", "IN_PROGRESS") and time.monotonic() < give_up:
                        time.sleep(0.1)
                    return self._answer(200, owner.status(job_id))
                if method == "GET" and action == "stream" and job_id:
                    # The status first: once it says the job ended, every chunk it streamed is recorded.
                    status = owner.status(job_id)["status"]
                    with owner._lock:
                        chunks = owner.queue.records("stream", job_id)
                        new = chunks[owner._sent.get(job_id, 0):][:owner.chunks_per_call]
                        owner._sent[job_id] = owner._sent.get(job_id, 0) + len(new)
                        if owner._sent[job_id] < len(chunks):  # some held back: RunPod says COMPLETED
                            status = "IN_PROGRESS"  # only in the answer that carries the last chunks
                    kept = [{"output": c.body["output"]} for c in new
                            if len(json.dumps(c.body["output"])) <= STREAM_CHUNK_LIMIT]
                    return self._answer(200, {"status": status, "stream": kept})
                if method == "GET" and action == "status" and job_id:
                    return self._answer(200, owner.status(job_id))
                if method == "POST" and action == "cancel" and job_id:
                    owner.queue.stop(job_id)
                    owner.cancelled.add(job_id)
                    return self._answer(200, {"id": job_id, "status": "CANCELLED"})
                return self._answer(404, {"error": "no such route"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler
