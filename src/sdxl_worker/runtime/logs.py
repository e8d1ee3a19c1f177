"""What the worker's log may hold: never base64 payloads or secrets, prompts only truncated.

``redact(text)`` cleans one string; ``RedactingFilter`` applies it to every record (message,
arguments and traceback) of the loggers it is attached to; ``install()`` attaches it to the
root handlers so libraries' records are cleaned too.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager

from sdxl_worker import config

MAX_RECORD_CHARS = 4000  # one log record; a traceback is kept, a wall of text is not
PROMPT_LOG_CHARS = 80

_DATA_URL = re.compile(r"data:([\w.+/-]*)(;[\w=.-]+)*;base64,[A-Za-z0-9+/=\s]*", re.I)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
_URL_SECRET = re.compile(
    r"((?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|access_token|"
    r"api_key|apikey|key|password|secret)=)[^&\s'\"]+",
    re.I,
)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@'\"]+@", re.I)
_BEARER = re.compile(r"(\bbearer\s+)[\w.~+/=-]+", re.I)
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def truncate(text: str | None, limit: int = PROMPT_LOG_CHARS) -> str:
    """``text`` redacted, then cut to ``limit`` characters, saying how long it was (for prompts in the log).

    Redacted first: a cut through the middle of a secret would leave a part that no longer
    matches what redaction looks for, and that part would reach the log.
    """
    text = redact(text or "", limit=None)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def redact(text: str, limit: int | None = MAX_RECORD_CHARS) -> str:
    """``text`` without base64 payloads, URL credentials and signatures, or secret env values."""
    text = _DATA_URL.sub(lambda m: f"data:{m.group(1)};base64,<{len(m.group(0)):,} characters>", text)
    text = _BASE64_RUN.sub(_base64_run, text)
    text = _URL_SECRET.sub(r"\1<redacted>", text)
    text = _USERINFO.sub(r"\1<redacted>@", text)
    text = _BEARER.sub(r"\1<redacted>", text)
    text = _AWS_KEY_ID.sub("<aws key id>", text)
    for value in [*config.secret_values(), *_job_secrets]:
        text = text.replace(value, "<redacted>")
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... ({len(text):,} characters)"
    return text


_job_secrets: list[str] = []  # credentials a running job brought (its s3Config)
_job_secrets_lock = threading.Lock()


@contextmanager
def hidden(*values: str):
    """While the block runs, these values are redacted from every record, like secret env values."""
    values = tuple(value for value in values if isinstance(value, str) and len(value) >= 4)
    with _job_secrets_lock:
        _job_secrets.extend(values)
    try:
        yield
    finally:
        with _job_secrets_lock:
            for value in values:
                _job_secrets.remove(value)


def _base64_run(match: re.Match) -> str:
    """A long run of base64 letters, unless it reads like a path or a hex digest (one case, no digits)."""
    run = match.group(0)
    if any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run):
        return f"<base64, {len(run):,} characters>"
    return run


class RedactingFilter(logging.Filter):
    """Rewrites each record through ``redact``; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            record.msg = redact(record.getMessage())
        except Exception:  # a record whose arguments do not format: keep what can be shown
            record.msg = redact(str(record.msg))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, limit=None)  # the innermost frames matter most
        record._redacted = True
        return True


_FILTER = RedactingFilter()


def protect(logger: logging.Logger) -> logging.Logger:
    """``logger`` with the redacting filter attached (once)."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def install() -> None:
    """Attach the filter to every root handler, so records from any library are cleaned."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
