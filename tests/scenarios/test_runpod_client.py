"""What a client of the endpoint meets, through runpod-python's own client (runpod.Endpoint: run,
run_sync, stream, output, status) against RunPod's API stand-in (tests/runpod_endpoint.py) in front
of the job queue and `python handler.py` on runpod's own job loop: once with HANDLER_MODE=single
(worker-sdxl's output shape), once with the default, stream."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from tests.helpers.runpod_endpoint import CLIENT_KEY, ENDPOINT_ID, RunPodEndpoint
from tests.helpers.runpod_queue import RunPodQueue, handler_process

SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 42,
         "refine": "no_refiner"}


@contextlib.contextmanager
def endpoint_of(folder, **env):
    queue = RunPodQueue()
    endpoint = RunPodEndpoint(queue)
    with handler_process(folder, rp_queue=queue, **env):
        yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    """Two workers started side by side (their starts overlap): single and stream."""
    import runpod

    saved = runpod.api_key, runpod.endpoint_url_base
    with endpoint_of(tmp_path_factory.mktemp("single"), HANDLER_MODE="single") as single, \
            endpoint_of(tmp_path_factory.mktemp("stream")) as stream:
        runpod.api_key = CLIENT_KEY
        yield {"single": single, "stream": stream}
    runpod.api_key, runpod.endpoint_url_base = saved


def client(endpoints, mode: str):
    import runpod

    runpod.endpoint_url_base = endpoints[mode].base_url  # read by each client as it is made
    return runpod.Endpoint(ENDPOINT_ID)


def raw_status(endpoints, mode: str, job_id: str) -> dict:
    answer = httpx.get(f"{endpoints[mode].base_url}/{ENDPOINT_ID}/status/{job_id}",
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    return answer.json()


def finished(job, timeout: float = 120) -> str:
    give_up = time.monotonic() + timeout
    while (status := job.status()) in ("IN_QUEUE", "IN_PROGRESS"):
        assert time.monotonic() < give_up, "the job never ended"
        time.sleep(0.2)
    return status


def test_in_single_mode_a_worker_sdxl_client_reads_output_images_unchanged(endpoints):
    output = client(endpoints, "single").run_sync({"input": SMALL}, timeout=120)
    assert isinstance(output, dict)  # worker-sdxl's shape: the output is the result itself
    assert output["images"][0].startswith("data:image/png;base64,") and output["image_url"] == output["images"][0]
    assert output["seed"] == 42


def test_in_single_mode_previews_are_refused_naming_the_setting(endpoints):
    job = client(endpoints, "single").run({"input": {**SMALL, "preview_steps": 1}})
    assert finished(job) == "FAILED" and job.output() is None
    assert "HANDLER_MODE=single" in raw_status(endpoints, "single", job.job_id)["error"]


def test_in_stream_mode_run_sync_returns_the_list_ending_in_the_result(endpoints):
    output = client(endpoints, "stream").run_sync({"input": {**SMALL, "preview_steps": 1}}, timeout=120)
    assert isinstance(output, list) and "images" in output[-1] and output[-1]["seed"] == 42
    assert [chunk["step"] for chunk in output[:-1]] == [1, 2]  # the previews came first


def test_a_stream_whose_result_is_too_large_for_a_chunk_ends_saying_where_it_is(endpoints):
    """Two 512x512 PNGs are about 2.6 MB, over RunPod's 1 MB stream chunk: the stream's last chunk
    says so (with the seeds and timings), and the images are in the output."""
    job = client(endpoints, "stream").run({"input": {**SMALL, "width": 512, "height": 512, "num_images": 2,
                                                      "preview_steps": 1}})
    chunks = list(job.stream())
    assert [chunk["step"] for chunk in chunks if "preview" in chunk] == [1, 2]
    last = chunks[-1]
    assert not any("images" in chunk for chunk in chunks)
    assert last["result"] == "in the job's output" and "job.output()" in last["message"]
    assert last["seeds"] == [42, 43] and "total" in last["timings"]
    assert len(job.output()[-1]["images"]) == 2


def test_a_failed_job_reaches_the_sdk_as_none_and_its_sentence_is_in_the_status(endpoints):
    """What docs/runpod.md shows: FAILED, a top-level error, no output."""
    for mode in ("single", "stream"):
        ep = client(endpoints, mode)
        assert ep.run_sync({"input": {**SMALL, "width": 1001}}, timeout=120) is None
        job = ep.run({"input": {**SMALL, "width": 1001}})
        assert finished(job) == "FAILED"
        status = raw_status(endpoints, mode, job.job_id)
        assert status["status"] == "FAILED" and "output" not in status
        assert status["error"].startswith("'width' must be a multiple of 8")
