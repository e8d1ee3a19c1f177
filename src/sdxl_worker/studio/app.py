"""The studio's web server: the page, the form, jobs in, events out (FastAPI on uvicorn).

    GET  /                          the page (page/index.html, studio.js, studio.css)
    GET  /api/form                  the form's fields, from the input schema (form.py)
    POST /api/jobs                  {"input": {...}} -> {"id": ...}; the job starts at once
    GET  /api/jobs/{id}/events      its outputs as Server-Sent Events, from the first
    POST /api/jobs/{id}/cancel      stop it (the same stop as a RunPod cancel)

Bound to 127.0.0.1 unless ``--host`` says otherwise: the studio has no login, and with
``--endpoint`` it spends the RunPod key's credit for whoever can reach it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from sdxl_worker.studio.form import fields
from sdxl_worker.studio.jobs import Jobs, ProgressCallback, Source, sse

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "page"
MAX_BODY_BYTES = 64 * 1024 * 1024  # two input images as data URLs, with room; the schema bounds each


def create_app(source: Source | Callable[[ProgressCallback], Source], where: str = "this worker",
               wants_progress: bool = False):
    """The studio's app. ``wants_progress``: ``source`` is a factory that takes the studio's step
    report callback (the worker's Runner on_progress) and returns the source."""
    jobs = Jobs(source)
    if wants_progress:
        jobs.source = source(jobs.progress)
    app = FastAPI(title="SDXL worker studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs = jobs

    @app.get("/")
    async def page():
        return FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/form")
    async def form():
        return {"fields": fields(), "runs_on": where}

    @app.post("/api/jobs")
    async def start(request: Request):
        too_big = HTTPException(413, f"The job is over {MAX_BODY_BYTES // 2**20} MB; use smaller input images.")
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise too_big
        data = bytearray()
        async for chunk in request.stream():  # counted as it comes: a chunked body has no length to trust
            data += chunk
            if len(data) > MAX_BODY_BYTES:
                raise too_big
        try:
            body = json.loads(data)
        except ValueError:
            raise HTTPException(400, "The body must be JSON: {\"input\": {...}}.") from None
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise HTTPException(400, "The body must be {\"input\": {...}}.")
        job = jobs.start(body["input"])
        return JSONResponse({"id": job.id}, status_code=202)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"No job {job_id!r} in this studio.")

        async def stream():
            async for event in jobs.watch(job_id):
                yield sse(event)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        if job_id not in jobs.jobs:
            raise HTTPException(404, f"No job {job_id!r} in this studio.")
        return {"cancelled": jobs.cancel(job_id)}

    app.mount("/static", StaticFiles(directory=PAGE), name="static")
    return app


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="handler.py --studio", description="The studio page.")
    parser.add_argument("--studio", action="store_true", help="serve the studio page")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network, without a login)")
    parser.add_argument("--endpoint", metavar="ENDPOINT_ID",
                        help="run jobs on this RunPod endpoint (RUNPOD_API_KEY in the environment) instead of here")
    args, _ = parser.parse_known_args(argv)
    return args


def serve(app, host: str, port: int, where: str) -> None:
    import uvicorn

    print(f"studio: http://{host}:{port}/  (jobs run on {where}; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
