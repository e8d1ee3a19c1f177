"""The studio's RunPod endpoint source against RunPod's API stand-in, with no worker behind it:
the job's end is posted by hand, as the platform would report it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from sdxl_worker.studio.endpoint import Endpoint, EndpointError
from sdxl_worker.studio.jobs import Jobs
from sdxl_worker.testing.servers import Server
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
    with pytest.raises(EndpointError) as refused:
        outputs(Endpoint(ENDPOINT_ID, "rp-wrong-key", stand_in.base_url))
    assert str(refused.value) == "The endpoint refused RUNPOD_API_KEY (HTTP 401); check the key."
    with pytest.raises(EndpointError, match="Could not reach the endpoint at http://127.0.0.1:9/"):
        outputs(Endpoint(ENDPOINT_ID, CLIENT_KEY, "http://127.0.0.1:9"))
    with pytest.raises(EndpointError, match="needs RUNPOD_API_KEY"):
        Endpoint(ENDPOINT_ID, "", stand_in.base_url)


def cancelled_while_run_is_on_its_way(source: Endpoint) -> str:
    """Start a studio job on ``source``, press Cancel while its /run is on its way; how the job ended."""
    async def scenario():
        jobs = Jobs(source)
        job = jobs.start({"prompt": "a"})
        await asyncio.sleep(0.05)  # /run is on its way
        assert jobs.cancel(job.id)
        return [event async for event in jobs.watch(job.id)][-1]["event"]

    return asyncio.run(scenario())


def test_cancelling_while_run_is_on_its_way_still_cancels_the_remote_job(stand_in, monkeypatch):
    original = Endpoint._call

    async def slow_run(self, session, method, path, body=None):
        if path == "/run":
            await asyncio.sleep(0.3)
        return await original(self, session, method, path, body)

    monkeypatch.setattr(Endpoint, "_call", slow_run)
    assert cancelled_while_run_is_on_its_way(Endpoint(ENDPOINT_ID, CLIENT_KEY, stand_in.base_url)) == "cancelled"
    assert [path for _, path, _ in stand_in.calls if "/cancel/" in path] == [f"/v2/{ENDPOINT_ID}/cancel/remote-1"]


def test_a_cancel_while_run_is_on_its_way_stays_a_cancel_when_run_then_fails(stand_in, monkeypatch):
    """The page's Cancel, then /run answers 500: the job was never started there, and the page says
    Cancelled (the failure of /run must not take the cancel's place)."""
    async def failing_run(self, session, method, path, body=None):
        await asyncio.sleep(0.3)
        raise EndpointError("The endpoint answered run with HTTP 500.")

    monkeypatch.setattr(Endpoint, "_call", failing_run)
    assert cancelled_while_run_is_on_its_way(Endpoint(ENDPOINT_ID, CLIENT_KEY, stand_in.base_url)) == "cancelled"


# --- the endpoint's protocol, against a scripted RunPod API ---


class Scripted:
    """RunPod's API as a script: each path answers its list of (status, body) in turn (the last one
    repeats); every call is recorded as (method, path, headers, body)."""

    def __init__(self, script: dict):
        self.script = {path: list(answers) for path, answers in script.items()}
        self.calls: list = []

    def __call__(self, handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        sent = handler.rfile.read(length) if length else b""
        path = handler.path
        self.calls.append((handler.command, path, dict(handler.headers), sent))
        answers = self.script.get(path.split(f"/v2/{ENDPOINT_ID}", 1)[-1], [(404, {})])
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def scripted(monkeypatch):
    """(make a source for a script, the script's calls): a scripted RunPod API on a real socket."""
    monkeypatch.setattr("sdxl_worker.studio.endpoint.POLL_S", 0.01)
    made = {}

    def source(script: dict, base_suffix: str = "") -> Endpoint:
        made["api"] = Scripted(script)
        made["server"] = Server({"*": made["api"]}).__enter__()
        return Endpoint(ENDPOINT_ID, "rp-key-1", made["server"].url("/v2") + base_suffix)

    yield source, made
    if "server" in made:
        made["server"].__exit__(None, None, None)


def test_a_job_goes_queued_running_then_its_chunks_and_its_result(scripted):
    make, made = scripted
    source = make({"/run": [(200, {"id": "r1"})], "/stream/r1": [
        (200, {"status": "IN_QUEUE"}), (200, {"status": "IN_QUEUE"}),
        (200, {"status": "IN_PROGRESS", "stream": [{"output": {"step": 1, "total_steps": 2}}, {"output": "text"}]}),
        (200, {"status": "COMPLETED", "stream": [{"images": ["data:x"], "seed": 5}]})]}, base_suffix="/")
    assert outputs(source, {"prompt": "a fox"}) == [{"status": "IN_QUEUE"}, {"status": "IN_PROGRESS"},
                                                     {"step": 1, "total_steps": 2}, {"images": ["data:x"], "seed": 5}]
    calls = made["api"].calls
    assert [(method, path) for method, path, _, _ in calls] == [("POST", f"/v2/{ENDPOINT_ID}/run")] + \
        [("GET", f"/v2/{ENDPOINT_ID}/stream/r1")] * 4  # no /status, no /cancel: the result came in the stream
    method, _, headers, sent = calls[0]
    assert headers["Authorization"] == "Bearer rp-key-1" and headers["Content-Type"] == "application/json"
    assert json.loads(sent) == {"input": {"prompt": "a fox"}}
    assert all(body == b"" for method, _, _, body in calls if method == "GET")  # a GET sends no body


@pytest.mark.parametrize("final, last", [
    ({"status": "FAILED"}, {"error": "The endpoint's job failed without saying why."}),
    ({"status": "FAILED", "error": "CUDA out of memory."}, {"error": "CUDA out of memory."}),
    ({"status": "CANCELLED"}, {"error": "The job was cancelled on the endpoint (not from this page)."}),
    ({"status": "TIMED_OUT"}, {"error": "The job ran past the endpoint's execution timeout; ask for less, or raise "
                                        "the timeout."}),
    ({"status": "WEIRD"}, {"error": "The endpoint's job ended WEIRD."}),
    ({"status": "COMPLETED", "output": []}, {"error": "The endpoint's job finished without images."}),
    ({"status": "COMPLETED", "output": "done"}, {"error": "The endpoint's job finished without images."}),
    ({"status": "COMPLETED", "output": {"images": ["data:y"]}}, {"images": ["data:y"]}),
    ({"status": "COMPLETED", "output": [{"step": 1}, {"images": ["data:z"]}]}, {"images": ["data:z"]}),
])
def test_without_a_result_in_the_stream_the_end_is_read_from_status(scripted, final, last):
    make, made = scripted
    stream_end = final["status"] if final["status"] in ("FAILED", "CANCELLED", "TIMED_OUT", "COMPLETED") else "FAILED"
    source = make({"/run": [(200, {"id": "r2"})],
                   "/stream/r2": [(200, {"status": stream_end, "stream": [{"output": {"step": 1}}]})],
                   "/status/r2": [(200, final)]})
    assert outputs(source)[-1] == last
    assert made["api"].calls[-1][:2] == ("GET", f"/v2/{ENDPOINT_ID}/status/r2")


@pytest.mark.parametrize("script, sentence", [
    ({"/run": [(500, {})]}, "The endpoint answered run with HTTP 500."),
    ({"/run": [(400, {"error": "bad"})]}, "The endpoint answered run with HTTP 400."),
    ({"/run": [(200, b"<html>")]}, "The endpoint's answer to run was not JSON."),
    ({"/run": [(200, {})]}, "The endpoint's /run answer had no job id."),
    ({"/run": [(200, b"")]}, "The endpoint's /run answer had no job id."),
    ({"/run": [(200, {"id": "r3"})], "/stream/r3": [(503, {})]}, "The endpoint answered stream with HTTP 503."),
])
def test_each_failure_of_the_api_is_one_sentence(scripted, script, sentence):
    make, _ = scripted
    with pytest.raises(EndpointError) as failed:
        outputs(make(script))
    assert str(failed.value) == sentence


def test_a_job_left_before_its_end_is_cancelled_on_the_endpoint_and_a_finished_one_is_not(scripted):
    make, made = scripted
    source = make({"/run": [(200, {"id": "r4"})], "/stream/r4": [(200, {"status": "IN_PROGRESS"})],
                   "/cancel/r4": [(200, {"status": "CANCELLED"})]})

    async def leave_early():
        stream = source({"id": "page-1", "input": {}})
        assert await stream.__anext__() == {"status": "IN_PROGRESS"}
        await stream.aclose()

    asyncio.run(leave_early())
    assert made["api"].calls[-1][:2] == ("POST", f"/v2/{ENDPOINT_ID}/cancel/r4")
    source = make({"/run": [(200, {"id": "r5"})], "/stream/r5": [(200, {"status": "IN_PROGRESS", "stream": [
        {"output": {"error": "'width' must be a multiple of 8."}}]})]})

    async def leave_after_the_error():
        stream = source({"id": "page-2", "input": {}})
        seen = [await stream.__anext__(), await stream.__anext__()]  # the page leaves on the error
        await stream.aclose()
        return seen[-1]

    assert asyncio.run(leave_after_the_error()) == {"error": "'width' must be a multiple of 8."}
    assert not any("/cancel/" in path for _, path, _, _ in made["api"].calls)
    source = make({"/run": [(200, {"id": "r6"})], "/stream/r6": [(200, {"status": "IN_PROGRESS", "stream": [
        {"output": {"images": ["data:x"]}}]})]})

    async def leave_after_the_images():
        stream = source({"id": "page-3", "input": {}})
        seen = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        return seen[-1]

    assert asyncio.run(leave_after_the_images()) == {"images": ["data:x"]}
    assert not any("/cancel/" in path for _, path, _, _ in made["api"].calls)


def test_an_error_in_the_stream_is_the_end_with_no_status_call(scripted):
    make, made = scripted
    source = make({"/run": [(200, {"id": "r7"})], "/stream/r7": [(200, {"status": "FAILED", "stream": [
        {"output": {"error": "CUDA out of memory."}}]})]})
    assert outputs(source)[-1] == {"error": "CUDA out of memory."}
    assert not any("/status/" in path for _, path, _, _ in made["api"].calls)


def test_the_endpoint_is_runpods_api_unless_told_and_needs_a_key():
    assert Endpoint("abc123", "rp-key").url == "https://api.runpod.ai/v2/abc123"
    with pytest.raises(EndpointError) as refused:
        Endpoint("abc123", "")
    assert str(refused.value) == "--endpoint needs RUNPOD_API_KEY in the studio server's environment."
