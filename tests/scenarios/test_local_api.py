"""A real HTTP round trip through `python handler.py --rp_serve_api` (runpod's local API), previews included."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, decode, free_port


def post(url: str, body: dict | None = None, timeout: float = 120) -> dict:
    """POST a JSON body, or none at all: /stream reads no body, and bytes it leaves unread make the
    server's kernel reset the connection when it closes, losing the reply (a flaky test, once)."""
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def local_api(tmp_path_factory):
    port = free_port()
    env = dict(os.environ, BASE_MODEL="tiny", REFINER_MODEL="tiny", PYTHONUNBUFFERED="1")
    log = (tmp_path_factory.mktemp("api") / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the local API exited early: {Path(log.name).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(base + "/docs", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("the local API did not start within 120 s")
    yield base
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_runsync_returns_the_images(local_api):
    job = {"input": {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 3,
                     "refiner_inference_steps": 4, "strength": 0.5, "seed": 3, "num_images": 2}}
    reply = post(local_api + "/runsync", job)
    assert reply["status"] == "COMPLETED", reply
    result = reply["output"][-1]
    assert result["seeds"] == [3, 4]
    assert [decode(image).size for image in result["images"]] == [(256, 256), (256, 256)]


def test_a_bad_job_gives_one_error_and_the_server_keeps_serving(local_api):
    reply = post(local_api + "/runsync", {"input": {"prompt": "a", "num_images": 9}})
    errors = [chunk for chunk in reply["output"] if "error" in chunk]
    assert len(errors) == 1 and "'num_images'" in errors[0]["error"]
    good = post(local_api + "/runsync", {"input": {"prompt": "a", "width": 256, "height": 256,
                                                   "num_inference_steps": 2, "refine": "no_refiner"}})
    assert "images" in good["output"][-1]


# --- live previews (issue 3): /stream, and examples/client.py driving the same server ---

JOB = {"prompt": "a red fox", "width": 384, "height": 256, "num_inference_steps": 4, "refine": "no_refiner",
       "seed": 5, "preview_steps": 2, "preview_size": 192}


def test_stream_yields_previews_before_the_final_payload(local_api):
    job = post(local_api + "/run", {"input": JOB})
    reply = post(local_api + f"/stream/{job['id']}")
    assert reply["status"] == "COMPLETED", reply
    chunks = [item["output"] for item in reply["stream"]]
    assert [chunk["step"] for chunk in chunks[:-1]] == [2, 4]
    assert all(chunk["total_steps"] == 4 and chunk["stage"] == "base" for chunk in chunks[:-1])
    assert decode(chunks[0]["preview"]).size == (192, 128)
    assert decode(chunks[-1]["images"][0]).size == (384, 256)


def test_runsync_with_previews_off_has_only_the_final_payload(local_api):
    reply = post(local_api + "/runsync", {"input": {**JOB, "preview_steps": 0}})
    assert reply["status"] == "COMPLETED" and len(reply["output"]) == 1
    assert set(reply["output"][0]) == {"images", "image_url", "seed", "seeds", "timings"}


def test_the_example_client_saves_previews_and_images(local_api, tmp_path):
    done = subprocess.run(
        [sys.executable, "examples/client.py", "--local", local_api, "--input", json.dumps(JOB), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "step 2/4 (base)" in done.stdout and "step 4/4 (base)" in done.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image-0.png", "preview-002.jpg", "preview-004.jpg"]
    assert Image.open(tmp_path / "preview-004.jpg").size == (192, 128)
    assert Image.open(tmp_path / "image-0.png").size == (384, 256)


def test_the_example_client_reports_a_refused_job(local_api, tmp_path):
    done = subprocess.run(
        [sys.executable, "examples/client.py", "--local", local_api, "--input", '{"prompt": "a", "preview_size": 9}',
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1 and "'preview_size'" in done.stderr
