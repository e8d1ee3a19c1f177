"""The server's guards on what arrives and what leaves, on fake ASGI traffic: a body that comes too
slowly, SIGTERM while one arrives, and a stream whose client stopped reading."""

from __future__ import annotations

import asyncio

from sdxl_worker.api import app as server_app
from sdxl_worker.api.jobs import Jobs


def ready_jobs(concurrency: int = 1, queue: int = 0) -> Jobs:
    """Jobs as start-up leaves them, with a Runner that is never reached by these tests."""
    jobs = Jobs(concurrency, queue)
    jobs.state, jobs.runner = "ready", type("Runner", (), {"shutting_down": False, "shut_down": lambda self: None})()
    return jobs


def call(guarded, receive) -> list[dict]:
    """Run one JSON POST to /v1/jobs through ``guarded`` (the server's app); the messages it sent."""
    sent = []
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "raw_path": b"/v1/jobs", "query_string": b"",
             "headers": [(b"content-length", b"100"), (b"content-type", b"application/json")],
             "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": ""}

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(guarded(scope, receive, send), 10))
    return sent


def dripping():
    """A client that sends one byte, then nothing more."""
    parts = iter([{"type": "http.request", "body": b"{", "more_body": True}])

    async def receive():
        try:
            return next(parts)
        except StopIteration:
            await asyncio.sleep(3600)

    return receive


def status_and_body(sent) -> tuple[int, bytes]:
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def test_a_body_that_does_not_arrive_in_time_is_refused_with_408(monkeypatch):
    monkeypatch.setattr(server_app, "BODY_WITHIN_S", 0.2)
    jobs = ready_jobs()
    status, body = status_and_body(call(server_app.create_app(jobs), dripping()))
    assert status == 408 and b"did not arrive within 0.2 s" in body
    assert jobs.admitted == 0  # its place is free again


def test_sigterm_refuses_a_body_still_arriving_with_503():
    jobs = ready_jobs()
    receive, first = dripping(), [True]

    async def receive_with_a_signal():
        if first:
            first.clear()
            asyncio.get_running_loop().call_later(0.1, jobs.stop)  # as the server's SIGTERM handler does
        return await receive()

    status, body = status_and_body(call(server_app.create_app(jobs), receive_with_a_signal))
    assert status == 503 and b"shutting down" in body


def test_a_stream_whose_client_stopped_reading_ends_and_frees_its_place(monkeypatch):
    monkeypatch.setattr(server_app, "SEND_WITHIN_S", 0.2)
    jobs = ready_jobs()
    place = jobs.admit()
    assert jobs.admitted == 1

    async def events():
        while True:
            yield "progress", {"step": 1}
            await asyncio.sleep(0)

    async def stuck_client():
        async def receive():
            await asyncio.sleep(3600)

        writes = []

        async def send(message):
            writes.append(message)
            if len(writes) > 3:  # the client's buffers are full: this write never completes
                await asyncio.sleep(3600)

        await asyncio.wait_for(server_app.EventStream(events(), place)({"type": "http"}, receive, send), 10)
        return writes

    assert len(asyncio.run(stuck_client())) == 4
    assert jobs.admitted == 0
