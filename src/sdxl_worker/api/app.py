"""The HTTP server's routes (FastAPI): health, the native job API, OpenAI's Images API.

    GET  /ping                      204 while the models load, 200 when ready, 503 with a sentence if start-up failed
    POST /v1/jobs                   {"input": {...}, "s3Config"?} -> the job's output, as the queue worker answers it;
                                    with Accept: text/event-stream, Server-Sent Events: progress, preview, then
                                    result or error
    GET  /v1/schema                 the input JSON Schema
    POST /v1/images/generations     OpenAI's Images API (openai_images.py maps the fields)
    POST /v1/images/edits           the same, as multipart form data with image(s) and an optional mask
    GET  /v1/models                 the checkpoints and presets, in OpenAI's shape
    GET  /openapi.json              the OpenAPI document of all of the above

Who may call (docs/security.md, "The HTTP server"): with SERVE_API_KEY set, every route but
``/ping`` needs ``Authorization: Bearer KEY``; web pages may not (any request carrying ``Origin``
or a browser's cross-site ``Sec-Fetch-Site`` is refused: no CORS, so no page can drive a worker
on someone's machine or LAN); a body may hold at most MAX_BODY_BYTES (RunPod's 30 MB).
"""

from __future__ import annotations

import asyncio
import hmac
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from sdxl_worker.api import openai_images, replies
from sdxl_worker.api.jobs import FAILED, LOADING, Jobs
from sdxl_worker.api.replies import Refusal
from sdxl_worker.errors import MB, InputError, quotable, quoted
from sdxl_worker.request import bodies
from sdxl_worker.request.schema import INPUT_SCHEMA

MAX_BODY_BYTES = 30 * MB  # RunPod load balancing's request limit
MAX_FORM_FILES = 17  # OpenAI's edits take up to 16 images, and a mask
MAX_FORM_FIELDS = 200
BODY_WITHIN_S = 120  # a whole body must arrive within this (30 MB at 0.25 MB/s): a slow sender holds a place
SEND_WITHIN_S = 30  # an event the client does not take within this ends its stream, and frees its place
_EVENTS = "text/event-stream"


def create_app(jobs: Jobs, api_key: str | None = None, health_port: int | None = None) -> FastAPI:
    """The server's app on ``jobs``. ``api_key``: SERVE_API_KEY; ``health_port``: PORT_HEALTH when it
    is not PORT (that port answers ``/ping`` alone)."""
    app = FastAPI(title="SDXL worker", version="1", docs_url=None, redoc_url=None,
                  description="The worker's HTTP API: its own jobs (with Server-Sent Events) and OpenAI's Images API. "
                              "docs/http.md is the guide.")
    app.state.jobs = jobs

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal):
        return replies.response(refusal, request.url.path)

    @app.exception_handler(HTTPException)
    async def not_served(request: Request, error: HTTPException):  # 404, 405 and starlette's own
        return replies.response(Refusal(error.status_code, _sentence(error)), request.url.path)

    @app.get("/ping", responses={200: {"description": "ready"}, 204: {"description": "loading its models"},
                                 503: {"description": "start-up failed; the body says why"}})
    async def ping():
        if jobs.state == LOADING:
            return Response(status_code=204)
        if jobs.state == FAILED:
            return JSONResponse({"status": "failed", "error": jobs.problem}, 503)
        return {"status": "ready"}

    @app.post("/v1/jobs", openapi_extra=_body({"type": "object", "required": ["input"], "properties": {
        "input": INPUT_SCHEMA, "s3Config": {"type": "object"}}}))
    async def run_job(request: Request):
        place = jobs.admit()
        try:
            body = await _job_body(request)
            if _EVENTS in request.headers.get("accept", ""):
                return EventStream(_with_status(jobs.events(body["input"], body.get("s3Config"))), place)
            if body["input"].get("preview_steps"):
                raise Refusal(400, "'preview_steps' needs a stream: send Accept: text/event-stream to get the "
                                   "previews as Server-Sent Events, or leave 'preview_steps' out.", "preview_steps")
            output = await _unless_disconnected(request, jobs.result(body["input"], body.get("s3Config")))
            if "error" in output:
                raise replies.failed(output)
            return JSONResponse(output)  # as it is: FastAPI's encoder would walk megabytes of base64
        finally:
            place.release()  # a stream took it over, and gives it back when it ends

    @app.get("/v1/schema")
    async def schema():
        return INPUT_SCHEMA

    @app.get("/v1/models")
    async def models():
        jobs.check_ready()
        return openai_images.model_list(*_names(jobs))

    @app.post("/v1/images/generations", openapi_extra=_body(GENERATION))
    async def generate(request: Request):
        place = jobs.admit()
        try:
            body = await _json(request)
            if not isinstance(body, dict):
                raise Refusal(400, "The body must be a JSON object of the Images API's fields, e.g. {\"prompt\": ...}.")
            return await _images(request, jobs, body, place, "image_generation")
        finally:
            place.release()

    @app.post("/v1/images/edits", openapi_extra=_body(EDIT, "multipart/form-data"))
    async def edit(request: Request):
        place = jobs.admit()
        try:
            return await _images(request, jobs, await _edit_fields(request, jobs), place, "image_edit")
        finally:
            place.release()

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, error: ClientDisconnect):  # a client that left mid-body: nobody to answer
        return Response(status_code=400)

    return CallersOnly(app, api_key, health_port, jobs.stopping)


async def _images(request: Request, jobs: Jobs, body: dict, place, prefix: str) -> Response:
    """An Images API request run as a job: OpenAI's answer, or with ``stream`` OpenAI's event stream
    (which then holds the request's ``place``)."""
    job_input, asked = openai_images.to_input(body, *_names(jobs))
    if asked.response_format == "url" and jobs.worker.storage is None:
        raise Refusal(400, "'response_format' url needs the worker's own bucket (the BUCKET_* variables), which "
                           "this worker has not got; ask for b64_json.", "response_format")
    if asked.stream:
        return EventStream(openai_images.stream_events(jobs.events(job_input), asked, prefix), place)
    output = await _unless_disconnected(request, jobs.result(job_input))
    if "error" in output:
        refusal = replies.failed(output)
        return replies.response(refusal, request.url.path, dict(asked.renamed))  # 'n', not 'num_images'
    return JSONResponse(openai_images.answer(output, asked))


def _names(jobs: Jobs) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from sdxl_worker.engine import preset_weights, switch

    models = jobs.worker.models
    return switch.model_names(models), preset_weights.available(models.settings) if models.settings else ()


async def _json(request: Request):
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise Refusal(415, "Send the body as JSON (Content-Type: application/json).")
    try:
        return await bodies.parse_json(await request.body())
    except bodies.BodyError as error:
        raise Refusal(error.status, str(error)) from None


async def _job_body(request: Request) -> dict:
    try:
        return bodies.job_body(await _json(request))
    except bodies.BodyError as error:
        raise Refusal(error.status, str(error)) from None


async def _edit_fields(request: Request, jobs: Jobs) -> dict:
    """A multipart edit request as typed fields: its images as data URLs, its mask turned to this
    worker's convention, its text fields as the schema types them."""
    from sdxl_worker.inputs.images import image_size, transparent_to_white

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise Refusal(415, "Send an edit as multipart/form-data with the image in 'image' (as OpenAI's clients do).")
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES)
    except HTTPException as error:  # starlette's sentence for a broken form
        raise Refusal(400, f"The form could not be read: {error.detail}") from None
    fields, images = {}, []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name in ("image", "image[]"):
                images.append(await value.read())
            elif name == "mask":
                fields["mask"] = await value.read()
            else:
                raise Refusal(400, f"The form's file field {quoted(name)} is not one an edit takes: 'image' and "
                                   f"'mask'.", name if quotable(name) else None)
        elif name in fields:
            raise Refusal(400, f"The form gives {quoted(name)} twice; give it once.", name if quotable(name) else None)
        else:
            fields[name] = await _typed(name, value)
    if not images:
        raise Refusal(400, "'image' is missing: an edit needs the image to change.", "image")
    if len(images) > 1 and jobs.worker.models.ip_adapter is None:
        raise Refusal(400, f"'image' holds {len(images)} images; this worker edits one (the others would be "
                           f"reference images for an IP-Adapter, and it has none: IP_ADAPTER_MODEL).", "image")
    max_pixels = jobs.worker.settings.fetch.max_image_pixels
    if "mask" in fields:
        try:
            mask = await asyncio.to_thread(transparent_to_white, fields["mask"], "mask", max_pixels)
        except InputError as error:
            raise Refusal(400, str(error), "mask") from None
        size = image_size(images[0])
        if size is not None and mask.size not in (size, size[::-1]):  # OpenAI refuses it too (the queue path
            # stretches it); turned is allowed: a photo's header may give its size before EXIF turns it
            raise Refusal(400, f"'mask' is {mask.width}x{mask.height} and 'image' {size[0]}x{size[1]}; the mask must "
                               f"be the image's size.", "mask")
        fields["mask"] = openai_images.data_url(_png(mask), "image/png")
    fields["image"] = openai_images.data_url(images[0], "application/octet-stream")
    if len(images) > 1:  # more images: references for the IP-Adapter (refused when the worker has none)
        fields.setdefault("ip_adapter", {"image": [openai_images.data_url(image, "application/octet-stream")
                                                   for image in images[1:]]})
    return fields


async def _typed(name: str, value: str):
    """A form field's text as the value it stands for: numbers, booleans, lists and objects parsed
    where the schema (or OpenAI's field) wants one, bounded as a JSON body is; text kept as text."""
    spec = INPUT_SCHEMA["properties"].get(name, {})
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else types
    if name not in ("n", "output_compression", "partial_images", "stream") and (not types or types == ["string"]):
        return value
    try:
        return await bodies.parse_json(value.encode())
    except bodies.BodyError as error:
        if str(error).startswith("The body must be JSON"):
            return value  # not JSON: the schema or the mapping says what is wrong with it
        raise Refusal(error.status, f"'{name}' in the form: {error}", name) from None


def _png(image) -> bytes:
    from sdxl_worker.delivery.deliver import encode_png

    return encode_png(image)


async def _unless_disconnected(request: Request, work):
    """``work``'s result; if the client goes away first, ``work`` is cancelled (its job stops within a
    step) and the request ends without an answer."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise Refusal(499, "The client closed the connection; the job was stopped.")
    return task.result()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _with_status(events):
    """The native stream's events, an error carrying the status the same failure gets without a stream."""
    async for kind, data in events:
        yield kind, ({**data, "status": replies.failed(data).status} if kind == "error" else data)


class EventStream(Response):
    """An ASGI answer streaming a job's events as Server-Sent Events until the job ends or the client
    goes away, which stops the job; the request's ``place`` is given back either way."""

    def __init__(self, events, place):  # sent by __call__, not Response.s machinery
        self.events, self.place = events, place
        place.held_by_stream = True
        self.status_code, self.background = 200, None

    async def __call__(self, scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no")]})
            writer = asyncio.ensure_future(self._write(send))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (writer, gone):
                    task.cancel()
                # The writer ends here, and with it the events (a job not done is stopped).
                await asyncio.gather(writer, gone, return_exceptions=True)
            if not writer.cancelled() and writer.exception() is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away as we wrote
            pass
        finally:
            self.place.end()
            await self.events.aclose()

    async def _write(self, send) -> None:
        async for kind, data in self.events:
            chunk = f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n" if kind else ": waiting\n\n"
            # A client that stops reading would hold its place for ever: after SEND_WITHIN_S the stream ends.
            await asyncio.wait_for(send({"type": "http.response.body", "body": chunk.encode(), "more_body": True}),
                                   SEND_WITHIN_S)


class CallersOnly:
    """ASGI middleware before every route: no web pages, the bearer key when set, bodies bounded."""

    def __init__(self, app, api_key: str | None, health_port: int | None = None,
                 stopping: asyncio.Event | None = None):
        self.app, self.api_key, self.health_port = app, api_key, health_port
        self.stopping = stopping or asyncio.Event()  # set on SIGTERM: a body still arriving gets its 503

    def __getattr__(self, name):  # the FastAPI app's own attributes (openapi(), state, routes)
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], Headers(scope=scope)
        try:
            if self.health_port is not None and (scope.get("server") or ("", 0))[1] == self.health_port \
                    and path != "/ping":
                raise Refusal(404, "This is the health port: it answers /ping alone; jobs go to PORT.")
            self._check(path, headers)
        except Refusal as refusal:
            return await replies.response(refusal, path)(scope, receive, send)
        received, body_done, deadline = 0, False, None

        async def bounded_receive():
            """The body, counted and timed as it arrives (30 MB, BODY_WITHIN_S, SIGTERM); after it,
            what the client sends (its disconnect) as it comes."""
            nonlocal received, body_done, deadline
            if body_done:
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + BODY_WITHIN_S
            message = await _body_part(receive, self.stopping, deadline - asyncio.get_running_loop().time())
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise Refusal(413, str(bodies.too_big(MAX_BODY_BYTES)))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)

    def _check(self, path: str, headers: Headers) -> None:
        if headers.get("origin") is not None or headers.get("sec-fetch-site", "none") != "none":
            raise Refusal(403, "This API does not answer web pages (no CORS): call it from a server or an app, "
                               "or through a proxy of your own.")
        if self.api_key is not None and path != "/ping":
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                raise Refusal(401, "This worker needs its key: send Authorization: Bearer SERVE_API_KEY.",
                              code="invalid_api_key")
        if int(headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise Refusal(413, str(bodies.too_big(MAX_BODY_BYTES)))


async def _body_part(receive, stopping: asyncio.Event, within_s: float) -> dict:
    """The next part of a body; Refusal if it does not come within ``within_s`` or SIGTERM comes first."""
    part, stop = asyncio.ensure_future(receive()), asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({part, stop}, timeout=max(within_s, 0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not part.done():
            part.cancel()  # the request is refused: what it would have read does not matter
    if part.done() and not part.cancelled():
        return part.result()
    if stopping.is_set():
        raise Refusal(503, "The worker is shutting down (SIGTERM); send the request to another worker.",
                      code="shutting_down", retry_after_s=1)
    raise Refusal(408, f"The request's body did not arrive within {BODY_WITHIN_S} s; send it at the speed of a "
                       f"normal upload.")


def _sentence(error: HTTPException) -> str:
    if error.status_code == 404:
        return "No such route on this worker; GET /openapi.json lists them."
    if error.status_code == 405:
        return "This route does not take that method; GET /openapi.json says which it takes."
    return str(error.detail)


def _body(schema: dict, media: str = "application/json") -> dict:
    return {"requestBody": {"required": True, "content": {media: {"schema": schema}}}}


_OPENAI_FIELDS = {
    "prompt": {"type": "string", "minLength": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 4},
    "size": {"type": "string", "examples": ["1024x1024", "auto"]},
    "response_format": {"type": "string", "enum": list(openai_images.RESPONSE_FORMATS)},
    "model": {"type": "string"},
    "quality": {"type": "string", "enum": list(openai_images.QUALITIES)},
    "style": {"type": "string", "enum": list(openai_images.STYLES)},
    "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
    "output_compression": {"type": "integer", "minimum": 1, "maximum": 100},
    "user": {"type": "string"},
    "background": {"type": "string", "enum": list(openai_images.BACKGROUNDS)},
    "moderation": {"type": "string", "enum": list(openai_images.MODERATIONS)},
    "stream": {"type": "boolean"},
    "partial_images": {"type": "integer", "minimum": 0, "maximum": openai_images.MAX_PARTIAL_IMAGES},
}
GENERATION = {"type": "object", "required": ["prompt"], "properties": _OPENAI_FIELDS,
              "description": "OpenAI's fields; any of the worker's inputs (GET /v1/schema) may be added."}
EDIT = {"type": "object", "required": ["image", "prompt"], "properties": {
    "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
    **{name: {"type": "string"} for name in _OPENAI_FIELDS if name != "prompt"}, "prompt": {"type": "string"}}}
