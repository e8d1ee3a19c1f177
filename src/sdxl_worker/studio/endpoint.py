"""A RunPod endpoint as the studio's source: ``/run``, then ``/stream`` until the job ends.

The API key stays here, in the server (RUNPOD_API_KEY); the page only ever talks to the studio.
Cancelling the job's task (the page's Cancel) posts ``/cancel``. A final payload too big for
``/stream`` (an inline 1024x1024 PNG is about 2 MB) is read from ``/status``, where RunPod keeps
the aggregated stream of a generator handler.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

POLL_S = 0.3  # between /stream calls; RunPod answers /stream at once with what is new
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
WAITING = ("IN_QUEUE", "IN_PROGRESS")
ENDINGS = {"FAILED": "The endpoint's job failed without saying why.",
           "CANCELLED": "The job was cancelled on the endpoint (not from this page).",
           "TIMED_OUT": "The job ran past the endpoint's execution timeout; ask for less, or raise the timeout."}


class EndpointError(RuntimeError):
    """The endpoint could not be reached or refused the call: one sentence for the page."""


class Endpoint:
    def __init__(self, endpoint_id: str, api_key: str, base_url: str = "https://api.runpod.ai/v2"):
        if not api_key:
            raise EndpointError("--endpoint needs RUNPOD_API_KEY in the studio server's environment.")
        self.url = f"{base_url.rstrip('/')}/{endpoint_id}"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    async def _call(self, session, method: str, path: str, body: dict | None = None) -> dict:
        import aiohttp

        try:
            async with session.request(method, self.url + path, headers=self._headers,
                                       data=json.dumps(body) if body is not None else None) as answer:
                text = await answer.text()
                if answer.status == 401:
                    raise EndpointError("The endpoint refused RUNPOD_API_KEY (HTTP 401); check the key.")
                if answer.status >= 400:
                    raise EndpointError(f"The endpoint answered {path.split('/')[1]} with HTTP {answer.status}.")
                return json.loads(text or "{}")
        except ValueError:
            raise EndpointError(f"The endpoint's answer to {path.split('/')[1]} was not JSON.") from None
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as error:
            raise EndpointError(f"Could not reach the endpoint at {self.url}: {error or type(error).__name__}.") from None

    async def __call__(self, job: dict) -> AsyncIterator[dict]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            # Shielded: a Cancel while /run is on its way still learns the job's id, and cancels it there.
            starting = asyncio.ensure_future(self._call(session, "POST", "/run", {"input": job["input"]}))
            try:
                started = await asyncio.shield(starting)
            except asyncio.CancelledError:
                try:
                    started = await asyncio.shield(starting)  # a second Cancel does not tear /run mid-way
                except Exception:  # /run failed: nothing started there, and the job stays cancelled
                    started = {}
                if started.get("id"):
                    await self._cancel(session, started["id"])
                raise
            remote = started.get("id")
            if not remote:
                raise EndpointError("The endpoint's /run answer had no job id.")
            finished = False
            try:
                async for output in self._outputs(session, remote):
                    finished = finished or "images" in output or "error" in output  # nothing left to cancel
                    yield output
                finished = True
            finally:
                if not finished:  # cancelled by the page (or the studio stopping): stop it there too
                    await asyncio.shield(self._cancel(session, remote))

    async def _cancel(self, session, remote: str) -> None:
        try:
            await self._call(session, "POST", f"/cancel/{remote}")
        except Exception:  # the cancel is a courtesy to the endpoint: the page's job is cancelled either way
            pass

    async def _outputs(self, session, remote: str) -> AsyncIterator[dict]:
        seen_result, last_status = False, None
        while True:
            answer = await self._call(session, "GET", f"/stream/{remote}")
            if answer.get("status") != last_status and answer.get("status") in WAITING:
                last_status = answer["status"]
                yield {"status": last_status}  # the page says queued or running until chunks come
            for chunk in answer.get("stream") or []:
                output = chunk.get("output", chunk)
                if isinstance(output, dict):
                    seen_result = seen_result or "images" in output or "error" in output
                    yield output
            status = answer.get("status")
            if status in FINAL:
                break
            await asyncio.sleep(POLL_S)
        if seen_result:
            return
        final = await self._call(session, "GET", f"/status/{remote}")
        status = final.get("status")
        if status != "COMPLETED":
            yield {"error": final.get("error") or ENDINGS.get(status, f"The endpoint's job ended {status}.")}
            return
        output = final.get("output")
        last = output[-1] if isinstance(output, list) and output else output
        yield last if isinstance(last, dict) else {"error": "The endpoint's job finished without images."}
