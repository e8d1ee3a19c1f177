"""What the server answers when it does not answer a result: refusals and failed jobs, with their status.

Two shapes, one sentence: the native routes answer ``{"error": sentence}`` as the queue worker
does; the OpenAI routes (``/v1/images/...``, ``/v1/models``) answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with ``param`` naming the field. A failed
job's status comes from its kind (sdxl_worker.errors.Failure): the user's input 400, a stop by
JOB_TIMEOUT_S 504, a worker shutting down 503, anything on the worker's side 500.
"""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

from sdxl_worker import errors
from sdxl_worker.runtime.stopping import CANCELLED, SHUTTING_DOWN, TIMED_OUT

OPENAI_PATHS = ("/v1/images/", "/v1/models")
STATUS = {errors.INPUT: 400, TIMED_OUT: 504, SHUTTING_DOWN: 503, CANCELLED: 503}
CODE = {errors.INPUT: "invalid_input", TIMED_OUT: "timeout", SHUTTING_DOWN: "shutting_down",
        CANCELLED: "cancelled", errors.OUT_OF_MEMORY: "out_of_memory", errors.POISONED: "worker_failed",
        errors.INTERNAL: "internal_error"}
TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
        404: "not_found_error", 413: "invalid_request_error", 415: "invalid_request_error",
        429: "rate_limit_error"}
DEFAULT_CODE = {400: "invalid_input", 401: "invalid_api_key", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type", 429: "busy",
                499: "client_closed", 503: "unavailable"}
# The field an error sentence names: the first quoted name in it ('num_images', 'loras[0].path').
_FIELD = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*)*)'")


class Refusal(Exception):
    """A request refused before or instead of a job: status, sentence, and for OpenAI's shape the
    field (``param``) and a short ``code``."""

    def __init__(self, status: int, sentence: str, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(sentence)
        self.status, self.param, self.retry_after_s = status, param, retry_after_s
        self.code = code or DEFAULT_CODE.get(status, "server_error" if status >= 500 else "invalid_request")


def failed(failure: dict) -> Refusal:
    """The refusal that answers a job's ``{"error": ...}`` output."""
    kind = getattr(failure, "kind", errors.INTERNAL)
    status = STATUS.get(kind, 500)
    sentence = str(failure.get("error"))
    return Refusal(status, sentence, field_named(sentence) if status == 400 else None, CODE.get(kind, "internal_error"),
                   retry_after_s=5 if status == 503 else None)


def field_named(sentence: str) -> str | None:
    """The input field a sentence names first ('loras' for 'loras[0].path'), or None."""
    match = _FIELD.search(sentence)
    return match.group(1) if match else None


def openai_shaped(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def response(refusal: Refusal, path: str, renamed: dict[str, str] | None = None) -> JSONResponse:
    """The refusal as the route at ``path`` answers errors; ``renamed``: worker field -> the name
    the client sent it as (OpenAI's 'n' for 'num_images'), for ``param``."""
    headers = {"Retry-After": str(refusal.retry_after_s)} if refusal.retry_after_s else {}
    if refusal.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if not openai_shaped(path):
        return JSONResponse({"error": str(refusal)}, refusal.status, headers)
    return JSONResponse(openai_error(refusal, renamed), refusal.status, headers)


def openai_error(refusal: Refusal, renamed: dict[str, str] | None = None) -> dict:
    """OpenAI's error body, ``param`` and the sentence in the client's words where it sent OpenAI's
    name for the field ('n' for 'num_images'; a side of 'size' keeps its name in the sentence)."""
    param, message = refusal.param, str(refusal)
    if param is not None and renamed:
        param = renamed.get(param, param)
    if renamed:
        from sdxl_worker.request.dialects import Translation

        one_to_one = {ours: theirs for ours, theirs in renamed.items() if ours not in ("width", "height")}
        message = Translation(None, one_to_one).explain(message)
    kind = TYPE.get(refusal.status, "server_error" if refusal.status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": refusal.code}}
