"""`python handler.py --studio --endpoint ID`: the page's jobs go to a RunPod endpoint (/run, then
/stream), here RunPod's API stand-in in front of `python handler.py` on runpod's own job loop.
The API key stays in the studio's server."""

from __future__ import annotations

import time
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.browser import WATCH, generate, studio_headers, studio_server, wait
from tests.helpers.runpod_endpoint import CLIENT_KEY, ENDPOINT_ID, RunPodEndpoint
from tests.helpers.runpod_queue import RunPodQueue, handler_process


@pytest.fixture(scope="module")
def endpoint_studio(tmp_path_factory):
    """The studio with --endpoint, and the endpoint's worker, started side by side."""
    where = tmp_path_factory.mktemp("endpoint-studio")
    queue_first = RunPodQueue()  # the stand-in's address must be known before either starts
    endpoint = RunPodEndpoint(queue_first)
    with studio_server("--endpoint", ENDPOINT_ID, log_path=where / "studio.log", RUNPOD_API_KEY=CLIENT_KEY,
                       RUNPOD_ENDPOINT_BASE_URL=endpoint.base_url,
                       ready=handler_process(where, rp_queue=queue_first)) as (url, (_, _, worker_log)):
        endpoint.worker_log = worker_log
        yield url, where / "studio.log", endpoint
    endpoint.close()


@pytest.fixture
def remote(endpoint_studio):
    return endpoint_studio[2]


@pytest.fixture
def endpoint_page(browser, endpoint_studio):
    browser.set_window_size(1280, 1000)
    browser.get(endpoint_studio[0])
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.body.dataset.ready === 'true'"))
    return browser


def test_a_job_on_the_endpoint_streams_its_previews_into_the_page(endpoint_page, remote, endpoint_studio):
    page = endpoint_page
    assert f"RunPod endpoint {ENDPOINT_ID}" in page.find_element(By.ID, "runs-on").text
    page.execute_script(WATCH)
    # One preview per /stream answer: a fast worker's four previews would otherwise arrive in one
    # answer, and the page shows only the newest of those (studio/jobs.py).
    remote.chunks_per_call = 1
    try:
        generate(page, prompt="a lighthouse at dusk", width="256", height="256", num_inference_steps="12", seed="77",
                 preview_steps="3", refine="no_refiner")
        wait(page, "document.querySelector('#results img') !== null", 180)
    finally:
        remote.chunks_per_call = None
    seen = page.execute_script("return window.seen")
    assert len(set(seen["frames"])) >= 2 and seen["framesBeforeResult"] >= 2
    assert "Seed 77" in page.find_element(By.CSS_SELECTOR, "#results figcaption").text
    paths = [path for method, path, _ in remote.calls]
    assert any(path.endswith("/run") for path in paths) and any("/stream/" in path for path in paths)
    # The key went from the studio's server to the endpoint, never to the browser.
    assert {headers.get("Authorization") for _, _, headers in remote.calls} == {f"Bearer {CLIENT_KEY}"}
    assert CLIENT_KEY not in page.page_source
    url = endpoint_studio[0]
    for path in ("/", "/api/form", "/static/studio.js"):
        request = urllib.request.Request(url + path, headers=studio_headers(url))
        assert CLIENT_KEY not in urllib.request.urlopen(request).read().decode()
    assert CLIENT_KEY not in endpoint_studio[1].read_text()


def test_cancel_on_the_page_cancels_the_job_on_the_endpoint(endpoint_page, remote):
    page = endpoint_page
    generate(page, prompt="a long job", width="1024", height="1024", num_inference_steps="200", preview_steps="1")
    # Once a preview is in, the job is denoising in the worker. (A stop that reaches runpod-python
    # before it has started the job's task is dropped by its JobScaler: docs/runpod.md.)
    wait(page, "document.getElementById('progress-text').textContent.startsWith('Step')", 60)
    page.find_element(By.ID, "cancel").click()
    wait(page, "document.getElementById('progress-text').textContent === 'Cancelled.'", 30)
    cancelled = [path for method, path, _ in remote.calls if "/cancel/" in path]
    assert len(cancelled) == 1
    job_id = cancelled[0].rsplit("/", 1)[1]
    # The worker got the stop signal and ended the job within a step (runpod answers nothing for a
    # stopped job): it is free for the next, which the page runs at once.
    give_up = time.monotonic() + 30
    while f"job {job_id} stopped (cancelled)" not in remote.worker_log.read_text():
        assert time.monotonic() < give_up, "the worker did not stop the cancelled job"
        time.sleep(0.1)
    generate(page, width="256", height="256", num_inference_steps="2", preview_steps="0")
    wait(page, "document.querySelector('#results img') !== null", 60)


def test_without_the_api_key_the_studio_refuses_to_start_in_one_sentence(monkeypatch, capsys):
    import handler

    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    assert handler.studio(["--studio", "--endpoint", ENDPOINT_ID]) == 2
    assert capsys.readouterr().err.strip() == "error: --endpoint needs RUNPOD_API_KEY in the studio server's environment."


def test_the_code_view_points_at_the_endpoint_with_the_key_left_to_the_reader(endpoint_page, remote):
    from tests.helpers.browser import click, fill

    page = endpoint_page
    fill(page, "prompt", "a lighthouse")
    click(page, page.find_element(By.CSS_SELECTOR, "#api summary"))
    curl = page.find_element(By.ID, "api-curl-sync").text
    assert curl.startswith(f"curl -s -X POST {remote.base_url}/{ENDPOINT_ID}/runsync")
    assert 'Authorization: Bearer $RUNPOD_API_KEY' in curl and CLIENT_KEY not in page.page_source
    python = page.find_element(By.ID, "api-python").text
    assert f'runpod.Endpoint("{ENDPOINT_ID}")' in python and f'runpod.endpoint_url_base = "{remote.base_url}"' in python
