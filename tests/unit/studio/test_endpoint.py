"""The studio's RunPod endpoint source against RunPod's API stand-in, with no worker behind it:
the job's end is posted by hand, as the platform would report it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sdxl_worker.studio.endpoint import Endpoint, EndpointError
from sdxl_worker.studio.jobs import Jobs
from tests.helpers.runpod_endpoint import CLIENT_KEY, ENDPOINT_ID, RunPodEndpoint
from tests.helpers.runpod_queue import Posted, RunPodQueue


@pytest.fixture
def stand_in():
    rp_queue = RunPodQueue(take_wait_s=0.05)
    endpoint = RunPodEndpoint(rp_queue)
    yield endpoint
    endpoint.close()
    rp_queue.close()


def ends_with(endpoint: RunPodEndpoint, body: dict) -> None:
    """Once the job is submitted, the platform reports it finished with ``body``."""
    def report():
        give_up = time.monotonic() + 10
        while endpoint.queue.jobs.empty() and time.monotonic() < give_up:
            time.sleep(0.02)
        job = endpoint.queue.jobs.get()
        endpoint.queue.taken[job["id"]] = time.monotonic()
        endpoint.queue._record(Posted("done", job["id"], body, 0))

    threading.Thread(target=report, daemon=True).start()


def outputs(source, job_input=None) -> list:
    async def collect():
        return [output async for output in source({"id": "page-1", "input": job_input or {"prompt": "a"}})]

    return asyncio.run(collect())


def test_a_failed_job_ends_in_its_error_even_an_error_object_and_a_result_from_status(stand_in):
    source = Endpoint(ENDPOINT_ID, CLIENT_KEY, stand_in.base_url)
    ends_with(stand_in, {"error": "'width' must be a multiple of 8."})
    assert outputs(source)[-1] == {"error": "'width' must be a multiple of 8."}
    # The final payload not in /stream (too big for it): read from /status.
    ends_with(stand_in, {"output": [{"images": ["data:image/png;base64,AA=="], "seed": 3}]})
    assert outputs(source)[-1] == {"images": ["data:image/png;base64,AA=="], "seed": 3}

    async def through_the_page():
        jobs = Jobs(source)
        ends_with(stand_in, {"error": {"message": "handler crashed", "type": "RuntimeError"}})
        job = jobs.start({"prompt": "a"})
        return [event async for event in jobs.watch(job.id)][-1]

    last = asyncio.run(through_the_page())
    assert last["event"] == "error" and "handler crashed" in last["data"]["error"]


def test_a_wrong_key_and_an_unreachable_endpoint_are_one_sentence_each(stand_in):
    with pytest.raises(EndpointError, match=r"refused RUNPOD_API_KEY \(HTTP 401\)"):
        outputs(Endpoint(ENDPOINT_ID, "rp-wrong-key", stand_in.base_url))
    with pytest.raises(EndpointError, match="Could not reach the endpoint at http://127.0.0.1:9/"):
        outputs(Endpoint(ENDPOINT_ID, CLIENT_KEY, "http://127.0.0.1:9"))
    with pytest.raises(EndpointError, match="needs RUNPOD_API_KEY"):
        Endpoint(ENDPOINT_ID, "", stand_in.base_url)


def test_cancelling_while_run_is_on_its_way_still_cancels_the_remote_job(stand_in, monkeypatch):
    source = Endpoint(ENDPOINT_ID, CLIENT_KEY, stand_in.base_url)
    original = Endpoint._call

    async def slow_run(self, session, method, path, body=None):
        if path == "/run":
            await asyncio.sleep(0.3)
        return await original(self, session, method, path, body)

    monkeypatch.setattr(Endpoint, "_call", slow_run)

    async def scenario():
        jobs = Jobs(source)
        job = jobs.start({"prompt": "a"})
        await asyncio.sleep(0.05)  # /run is on its way
        assert jobs.cancel(job.id)
        return [event async for event in jobs.watch(job.id)][-1]["event"]

    assert asyncio.run(scenario()) == "cancelled"
    assert [path for _, path, _ in stand_in.calls if "/cancel/" in path] == [f"/v2/{ENDPOINT_ID}/cancel/remote-1"]
