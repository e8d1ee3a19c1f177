"""Request bodies, bounded: JSON parsed only after its values are counted, never deeper than allowed.

Shared by the HTTP server and the studio: both take a job's ``{"input": {...}}`` from strangers.
A body is counted before it is parsed (what parsing would build), parsed off the event loop,
and refused with one sentence (``BodyError``) when it is not JSON, too large, or nests too deep.
"""

from __future__ import annotations

import asyncio
import json

from sdxl_worker.errors import megabytes

MAX_DEPTH = 32  # lists and objects in lists and objects; the worker's own limit is 8 (docs/security.md)
# Values in a body (counted as its "[", "{" and "," before it is parsed): a job's input may hold
# 10,000 (docs/security.md), and prompts' commas count here too.
MAX_VALUES = 100_000


class BodyError(ValueError):
    """A body refused before it reaches the job: an HTTP status and one sentence."""

    def __init__(self, sentence: str, status: int = 400):
        super().__init__(sentence)
        self.status = status


def too_big(limit: int) -> BodyError:
    return BodyError(f"The request is over {megabytes(limit)}; use smaller input images, or URLs to them.", 413)


async def parse_json(data: bytes | bytearray) -> object:
    """``data`` as JSON, off the event loop (a 30 MB body takes a while); BodyError when it cannot be."""
    if sum(data.count(mark) for mark in b"[{,") > MAX_VALUES:  # before parsing: what parsing would build
        raise BodyError(f"The body holds more than {MAX_VALUES:,} values; a job's input needs far fewer.")
    try:
        body = await asyncio.to_thread(json.loads, data)
    except RecursionError:
        raise BodyError(_too_deep()) from None
    except ValueError:
        raise BodyError("The body must be JSON: {\"input\": {...}}.") from None
    if depth(body) > MAX_DEPTH:
        raise BodyError(_too_deep())
    return body


def job_body(body: object) -> dict:
    """``body`` when it is ``{"input": {...}, ...}``, else BodyError."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        raise BodyError("The body must be {\"input\": {...}}.")
    return body


def _too_deep() -> str:
    return f"The body nests lists and objects more than {MAX_DEPTH} deep; a job's input needs at most 8."


def depth(value) -> int:
    """How deep lists and objects nest in ``value``, without recursion (stops counting past MAX_DEPTH)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest

