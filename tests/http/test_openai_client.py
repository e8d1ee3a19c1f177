"""An unmodified `openai` client against `python handler.py --serve` on the tiny model, started here in a
subprocess: /ping during start-up, generations and edits with the pixels the queue path makes, errors
with the field named, the key, web pages refused, and SIGTERM last."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.helpers import collect, png_data_url
from tests.helpers.http_server import KEY, server_process, wait_for_ping

FAST = {"num_inference_steps": 3, "refiner_inference_steps": 4, "strength": 0.5, "seed": 11}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with server_process(tmp_path_factory.mktemp("http"), wait_ready=False, SERVE_API_KEY=KEY, CONCURRENCY="1",
                        SERVE_QUEUE="1") as running:
        wait_for_ping(running, 200)
        yield running


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)), formats=["PNG"])


def queue_path(worker, job_input: dict) -> list[Image.Image]:
    """The same job through handler.py's RunPod handler in this process: the queue path's images."""
    import handler
    from tests.helpers import decode

    outputs = collect(handler.runpod_config(worker)["handler"], {"id": "queue", "input": job_input})
    assert "error" not in outputs[-1], outputs[-1]
    return [decode(image) for image in outputs[-1]["images"]]


def test_ping_answers_204_while_loading_then_200(served):
    assert 204 in served.pings and served.pings[-1] == 200
    assert served.pings.index(204) < served.pings.index(200)


def test_generate_returns_n_pngs_of_the_size_with_the_queue_path_s_pixels(client, worker):
    answer = client.images.generate(prompt="a red fox", n=2, size="256x320", extra_body=FAST)
    images = [png(item.b64_json) for item in answer.data]
    assert [image.size for image in images] == [(256, 320), (256, 320)]
    assert answer.model_extra["sdxl"]["seeds"] == [11, 12]
    expected = queue_path(worker, {"prompt": "a red fox", "num_images": 2, "width": 256, "height": 320, **FAST})
    for got, want in zip(images, expected):
        assert np.array_equal(np.asarray(got), np.asarray(want.convert("RGB")))


def test_a_streamed_generation_sends_partial_images_then_each_image(client):
    events = list(client.images.generate(prompt="a red fox", n=2, size="256x320", stream=True, partial_images=2,
                                         extra_body=FAST))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"] * 2
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    partials = [Image.open(io.BytesIO(base64.b64decode(event.b64_json))) for event in events[:2]]
    assert {image.format for image in partials} == {"JPEG"} and partials[0].tobytes() != partials[1].tobytes()
    streamed = [png(event.b64_json) for event in events[2:]]
    assert [event.model_extra["sdxl"]["seed"] for event in events[2:]] == [11, 12]
    plain = client.images.generate(prompt="a red fox", n=2, size="256x320", extra_body=FAST)
    for got, want in zip(streamed, plain.data):  # previews along the way change no pixel
        assert np.array_equal(np.asarray(got), np.asarray(png(want.b64_json)))


def test_a_streamed_generation_s_bad_input_is_an_api_error_naming_the_field(client):
    with pytest.raises(openai.APIError) as raised:
        list(client.images.generate(prompt="a fox", stream=True, n=9))
    assert raised.value.body["param"] == "n" and "got 9" in raised.value.body["message"]


def test_edit_with_a_mask_inpaints_where_it_is_transparent(client, worker):
    photo = Image.new("RGB", (256, 256), (200, 40, 40))
    photo.paste((30, 60, 200), (0, 128, 256, 256))
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (64, 64, 192, 192))  # transparent: to be edited
    files = {}
    for name, image in (("photo", photo), ("mask", mask)):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        files[name] = (f"{name}.png", buffer.getvalue(), "image/png")
    answer = client.images.edit(image=files["photo"], mask=files["mask"], prompt="a cat", extra_body=FAST)
    edited = png(answer.data[0].b64_json)
    assert edited.size == (256, 256)
    # The queue path with this worker's mask for the same region: white is repainted.
    white = Image.new("L", (256, 256), 0)
    white.paste(255, (64, 64, 192, 192))
    expected = queue_path(worker, {"prompt": "a cat", "image": png_data_url(photo), "mask": png_data_url(white),
                                   **FAST})[0]
    assert np.array_equal(np.asarray(edited), np.asarray(expected.convert("RGB")))
    # An edit without a mask is img2img: another picture from the same photo.
    plain = client.images.edit(image=files["photo"], prompt="a cat", extra_body=FAST)
    assert not np.array_equal(np.asarray(png(plain.data[0].b64_json)), np.asarray(edited))


def test_a_bad_field_is_a_bad_request_naming_it(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a fox", size="big")
    assert raised.value.status_code == 400 and raised.value.body["param"] == "size"
    assert "'size' must be WIDTHxHEIGHT" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a fox", n=9)
    assert raised.value.body["param"] == "n"
    assert raised.value.body["message"] == "'n' must be at least 1 and at most 4, got 9."
    with pytest.raises(openai.BadRequestError) as raised:  # one of the worker's own inputs, through extra_body
        client.images.generate(prompt="a fox", extra_body={"guidance_scale": "high"})
    assert raised.value.body["param"] == "guidance_scale"
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a fox", model="midjourney-v6")
    assert raised.value.body["param"] == "model" and "GET /v1/models" in raised.value.body["message"]


def test_the_async_client_generates_and_lists_the_models(served):
    async def use():
        async with openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0) as client:
            models = await client.models.list()
            answer = await client.images.generate(prompt="a fox", size="256x256", model="default",
                                                  extra_body={**FAST, "seed": 4})
            return models, answer

    models, answer = asyncio.run(use())
    assert [model.id for model in models.data][0] == "default"
    assert png(answer.data[0].b64_json).size == (256, 256) and answer.model_extra["sdxl"]["seed"] == 4


def test_a_wrong_key_is_401_and_ping_needs_none(served):
    wrong = openai.OpenAI(base_url=served.url + "/v1", api_key="not-the-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.images.generate(prompt="a fox")
    answer = httpx.post(served.url + "/v1/jobs", json={"input": {"prompt": "a fox"}})
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(served.url + "/ping").status_code == 200


def test_the_health_port_answers_ping_alone(served):
    assert httpx.get(served.health_url + "/ping").status_code == 200
    assert httpx.get(served.health_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_a_web_page_cannot_use_it(served):
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": served.url}):  # a same-origin page too: a rebinding name
        answer = httpx.post(served.url + "/v1/images/generations", json={"prompt": "a fox"},
                            headers={"Authorization": f"Bearer {KEY}", **headers})
        assert answer.status_code == 403 and "web pages" in answer.json()["error"]["message"]


def test_sigterm_answers_the_running_job_then_exits(served):
    """Last in this module: it stops the server."""
    answers = []

    def long_job():
        answers.append(httpx.post(served.url + "/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                  json={"input": {"prompt": "long", "width": 1024, "height": 1024,
                                                  "num_inference_steps": 200, "refine": "no_refiner"}}))

    thread = threading.Thread(target=long_job)
    thread.start()
    give_up = time.monotonic() + 30
    while "prompt 'long'" not in served.log_text() and time.monotonic() < give_up:
        time.sleep(0.05)
    served.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert served.process.wait(timeout=30) == 0
    assert answers[0].status_code == 503
    assert "shutting down" in answers[0].json()["error"]


def test_serve_http_starts_the_server_and_a_failed_start_up_says_why_on_ping(tmp_path):
    """SERVE=http (the Docker image's way) instead of --serve; a checkpoint path that is not there."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT, free_port

    port = free_port()
    env = dict(os.environ, SERVE="http", SERVE_HOST="127.0.0.1", PORT=str(port), BASE_MODEL="/nowhere/sdxl")
    process = subprocess.Popen([sys.executable, "handler.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        give_up, answer = time.monotonic() + 60, None
        while time.monotonic() < give_up:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5)
                if answer.status_code != 204:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert answer is not None and answer.status_code == 503
        assert "BASE_MODEL='/nowhere/sdxl'" in answer.json()["error"]
        job = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json={"input": {"prompt": "a"}})
        assert job.status_code == 503 and job.json()["error"] == answer.json()["error"]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
