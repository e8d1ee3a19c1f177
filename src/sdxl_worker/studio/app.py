"""The studio's web server: the page, the form, jobs in, events out (FastAPI on uvicorn).

    GET  /                          the page (page/index.html with this start's key, studio.js, studio.css)
    GET  /api/form                  the form's fields, from the input schema (form.py)
    POST /api/jobs                  {"input": {...}} as application/json -> {"id": ...}; the job starts at once
    GET  /api/jobs/{id}/events      its outputs as Server-Sent Events, from the first
    POST /api/jobs/{id}/cancel      stop it (the same stop as a RunPod cancel)

Every answer goes only to the studio's own host names, and every API call must come from the
studio's own page with its key (guard.py). Bound to 127.0.0.1 unless ``--host`` says otherwise;
beyond loopback it starts only with a login, which the page asks for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers

from sdxl_worker.errors import MB, megabytes
from sdxl_worker.request.bodies import BodyError, job_body, parse_json
from sdxl_worker.studio.form import fields
from sdxl_worker.studio.guard import Guard, Refused, is_loopback
from sdxl_worker.studio.jobs import Busy, Jobs, Limits, ProgressCallback, Source, sse

PAGE = Path(__file__).parent / "page"
MAX_BODY_BYTES = 64 * MB  # two input images as data URLs, with room; the schema bounds each
HEADERS = {
    # Images may be data URLs (this worker) or a bucket's https URLs (an endpoint with storage).
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob: https:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def create_app(source: Source | Callable[[ProgressCallback], Source], where: str = "this worker",
               wants_progress: bool = False, guard: Guard | None = None, limits: Limits = Limits(),
               api: dict | None = None):
    """The studio's app. ``wants_progress``: ``source`` is a factory that takes the studio's step
    report callback (the worker's Runner on_progress) and returns the source. ``guard``: who may
    use it (loopback names only, a fresh key, no login, unless given). ``api``: where the page's
    code snippets send a job: {"kind": "local"} or {"kind": "endpoint", "url": ".../v2/ID"}."""
    api = api or {"kind": "local"}
    guard = guard or Guard(hosts=frozenset(("127.0.0.1", "localhost", "::1")))
    jobs = Jobs(source, limits=limits)
    if wants_progress:
        jobs.source = source(jobs.progress)
    app = FastAPI(title="SDXL worker studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs, app.state.guard = jobs, guard
    page_html = (PAGE / "index.html").read_text().replace(
        "{{key}}", guard.key).replace("{{login}}", "required" if guard.login else "none")

    app.add_middleware(OwnPageOnly, guard=guard)

    @app.get("/")
    async def page():
        return HTMLResponse(page_html, headers={"Cache-Control": "no-store"})

    @app.get("/api/form")
    async def form():
        return {"fields": fields(), "runs_on": where, "api": api}

    @app.post("/api/jobs")
    async def start(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _refuse(415, "Send the job as JSON (Content-Type: application/json): {\"input\": {...}}.")
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BODY_BYTES:
            return _refuse(413, _too_big())
        data = bytearray()
        try:
            jobs.room_for(declared)
            async for chunk in request.stream():  # counted as it comes: a chunked body has no length to trust
                data += chunk
                jobs.arriving += len(chunk)  # bodies still arriving count against the cap too
                if len(data) > MAX_BODY_BYTES:
                    return _refuse(413, _too_big())
                jobs.room_for(0)
        except Busy as busy:
            return _refuse(429, str(busy))
        finally:
            jobs.arriving -= len(data)
        size = len(data)
        try:
            body = job_body(await parse_json(data))
        except BodyError as error:
            return _refuse(error.status, str(error))
        del data  # the job holds its input once, as parsed
        try:
            job = jobs.start(body.pop("input"), size)
        except Busy as busy:
            return _refuse(429, str(busy))
        return JSONResponse({"id": job.id}, status_code=202)

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        if job_id not in jobs.jobs:
            return _refuse(404, "No such job in this studio (it ended long ago, or the studio restarted).")
        try:
            watched = jobs.watch(job_id)
        except Busy as busy:
            return _refuse(429, str(busy))

        async def stream():
            async for event in watched:
                yield sse(event)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        if job_id not in jobs.jobs:
            return _refuse(404, "No such job in this studio (it ended long ago, or the studio restarted).")
        return {"cancelled": jobs.cancel(job_id)}

    app.mount("/static", StaticFiles(directory=PAGE), name="static")
    return app


class OwnPageOnly:
    """ASGI middleware: the guard's checks before anything is served, the headers on every answer."""

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard
        self.headers = [(name.lower().encode(), value.encode()) for name, value in HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            if scope["path"].startswith("/api/"):
                self.guard.check_api_call(scope["method"], headers, (scope.get("client") or ("",))[0])
            else:
                self.guard.check_host(headers)
        except Refused as refused:
            return await JSONResponse({"detail": str(refused)}, refused.status, HEADERS)(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)


def _refuse(status: int, sentence: str) -> JSONResponse:
    return JSONResponse({"detail": sentence}, status_code=status)


def _too_big() -> str:
    return f"The job is over {megabytes(MAX_BODY_BYTES)}; use smaller input images."


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="handler.py --studio", description="The studio page.")
    parser.add_argument("--studio", action="store_true", help="serve the studio page")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs a login: STUDIO_LOGIN or "
                             "--login-file)")
    parser.add_argument("--login-file", metavar="PATH",
                        help="a file holding the studio's login (instead of STUDIO_LOGIN)")
    parser.add_argument("--endpoint", metavar="ENDPOINT_ID",
                        help="run jobs on this RunPod endpoint (RUNPOD_API_KEY in the environment) instead of here")
    args, _ = parser.parse_known_args(argv)
    return args


def serve(app, host: str, port: int, where: str) -> None:
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    print(f"studio: http://{shown}:{port}/  (jobs run on {where}; Ctrl+C stops)", flush=True)
    if not is_loopback(host):
        print(f"studio: WARNING: bound to {host}, so it is reachable from the network: anyone who reaches "
              f"port {port} and knows the login can run jobs here.", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
