"""The server's own API over real HTTP (httpx), on the tiny model in this process: the job's answer,
Server-Sent Events, a client going away, the queue's bound, the limits on what comes in, and
OpenAI's `url` answers from the worker's bucket (moto's S3 server)."""

from __future__ import annotations

import io
import json
import time

import boto3
import httpx
import pytest
from PIL import Image

from tests.helpers import decode, moto_server, worker_with
from tests.helpers.browser import served
from tests.helpers.http_server import app_for

SMALL = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 3, "refine": "no_refiner",
         "seed": 2}
# Minutes of work on the tiny model: only a stop ends it within a test.
LONG = {"prompt": "long", "width": 1024, "height": 1024, "num_inference_steps": 200, "num_images": 2,
        "refine": "no_refiner"}
STREAM = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def url(worker):
    with served(app_for(worker)) as base:
        yield base


def events(response: httpx.Response):
    """(event, data) pairs of a Server-Sent Events response, as they arrive."""
    kind = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: "):])


def test_a_job_answers_what_the_queue_worker_answers(url):
    answer = httpx.post(url + "/v1/jobs", json={"input": SMALL}, timeout=60)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"images", "image_url", "seed", "seeds", "timings"} and body["seeds"] == [2]
    assert decode(body["images"][0]).size == (256, 256)


def test_events_bring_progress_and_distinct_previews_before_the_result(url):
    job = {**SMALL, "num_inference_steps": 4, "preview_steps": 1}
    with httpx.stream("POST", url + "/v1/jobs", json={"input": job}, headers=STREAM, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        seen = list(events(response))
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "result" and "progress" in kinds
    previews = [data["preview"] for kind, data in seen if kind == "preview"]
    assert len(previews) >= 2 and len(set(previews)) >= 2
    assert [data["step"] for kind, data in seen if kind == "preview"] == [1, 2, 3, 4]
    assert decode(seen[-1][1]["images"][0]).size == (256, 256)


def test_a_bad_input_is_400_naming_the_field_with_or_without_a_stream(url):
    answer = httpx.post(url + "/v1/jobs", json={"input": {"prompt": "a", "num_images": 9}})
    assert answer.status_code == 400 and answer.json()["error"].startswith("'num_images'")
    with httpx.stream("POST", url + "/v1/jobs", json={"input": {"prompt": "a", "num_images": 9}},
                      headers=STREAM, timeout=30) as response:
        [(kind, data)] = list(events(response))
    assert kind == "error" and data["status"] == 400 and data["error"].startswith("'num_images'")
    answer = httpx.post(url + "/v1/jobs", json={"input": {**SMALL, "preview_steps": 1}})
    assert answer.status_code == 400 and "Accept: text/event-stream" in answer.json()["error"]


def test_what_comes_in_is_bounded(url):
    answer = httpx.post(url + "/v1/jobs", content=b'{"input": {"prompt": "' + b"a" * 31_000_000 + b'"}}',
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "30.0 MB" in answer.json()["error"]
    deep = b'{"input": {"prompt": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    answer = httpx.post(url + "/v1/jobs", content=deep, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    answer = httpx.post(url + "/v1/jobs", content=json.dumps({"input": SMALL}), headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415  # a cross-site form could send text/plain; only JSON is taken
    assert httpx.post(url + "/v1/jobs", json=["input"]).json() == {"error": "The body must be {\"input\": {...}}."}


def test_schema_and_openapi_document(url):
    assert "prompt" in httpx.get(url + "/v1/schema").json()["properties"]
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    assert {"/ping", "/v1/jobs", "/v1/schema", "/v1/models", "/v1/images/generations", "/v1/images/edits"} <= set(paths)


def test_a_client_going_away_frees_the_worker_for_the_next(worker):
    with served(app_for(worker, concurrency=1, queue=0)) as base:
        with httpx.stream("POST", base + "/v1/jobs", json={"input": LONG}, headers=STREAM, timeout=60) as response:
            first = next(events(response))
        assert first[0] == "progress"  # denoising: then the client closes the connection
        started = time.monotonic()
        answer = httpx.post(base + "/v1/jobs", json={"input": SMALL}, timeout=120)
        waited = time.monotonic() - started
    assert answer.status_code == 200, answer.text  # not 429: the long job's place was given back
    assert waited < 30, f"the next job waited {waited:.1f} s: the long job ran on"  # it would take minutes


def test_beyond_the_queue_a_request_gets_429_with_retry_after(worker):
    with served(app_for(worker, concurrency=1, queue=1)) as base:
        with httpx.stream("POST", base + "/v1/jobs", json={"input": LONG}, headers=STREAM, timeout=60) as running, \
                httpx.stream("POST", base + "/v1/jobs", json={"input": LONG}, headers=STREAM, timeout=60) as waiting:
            running_events = events(running)  # kept: a generator dropped closes its response, and the job
            assert next(running_events)[0] == "progress" and waiting.status_code == 200
            answer = httpx.post(base + "/v1/images/generations", json={"prompt": "a third"})
            assert answer.status_code == 429 and answer.headers["retry-after"] == "5"
            assert answer.json()["error"]["type"] == "rate_limit_error"


@pytest.fixture(scope="module")
def bucket_url(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="key", aws_secret_access_key="secret",
                     region_name="us-east-1").create_bucket(Bucket="images")
        yield endpoint


def test_response_format_url_answers_presigned_urls_from_the_worker_s_bucket(models, bucket_url):
    from sdxl_worker import config
    from sdxl_worker.delivery.storage import storage_for

    env = {"BUCKET_ENDPOINT_URL": bucket_url, "BUCKET_ACCESS_KEY_ID": "key", "BUCKET_SECRET_ACCESS_KEY": "secret",
           "BUCKET_NAME": "images", "BUCKET_PATH_STYLE": "1", "BUCKET_REGION": "us-east-1"}
    worker = worker_with(models, storage=storage_for(config.storage(env)), **env)
    with served(app_for(worker)) as base:
        answer = httpx.post(base + "/v1/images/generations", timeout=60, json={
            "prompt": "a fox", "size": "256x256", "response_format": "url", "num_inference_steps": 2})
        inline = httpx.post(base + "/v1/images/generations", timeout=60, json={
            "prompt": "a fox", "size": "256x256", "num_inference_steps": 2})
    [item] = answer.json()["data"]
    assert item["url"].startswith(bucket_url + "/images/") and "Signature" in item["url"]
    assert httpx.get(item["url"]).content.startswith(b"\x89PNG")
    assert list(inline.json()["data"][0]) == ["b64_json"]  # b64_json, the default, stays inline


def test_a_field_of_the_wrong_type_is_a_400_not_a_500(url):
    for body in ({"prompt": "a", "model": ["x"]}, {"prompt": "a", "model": {}}, {"prompt": ["a"]}):
        answer = httpx.post(url + "/v1/images/generations", json=body)
        assert answer.status_code == 400, answer.text


def test_a_client_leaving_mid_body_leaves_no_traceback(url, caplog):
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port)) as raw:
        raw.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"input\": ")
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up and httpx.post(url + "/v1/jobs", json={"input": SMALL}).status_code == 429:
        time.sleep(0.05)  # its place is given back once the server sees it gone
    assert httpx.post(url + "/v1/jobs", json={"input": SMALL}, timeout=60).status_code == 200
    assert "Exception in ASGI application" not in caplog.text


def test_response_format_url_without_storage_names_the_field(url):
    answer = httpx.post(url + "/v1/images/generations", json={"prompt": "a fox", "response_format": "url"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "response_format"
    assert answer.json()["error"]["message"].endswith("ask for b64_json.")


def test_an_edit_form_s_mistakes_are_named(url):
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), "white").save(buffer, "PNG")
    photo = ("photo.png", buffer.getvalue(), "image/png")
    small = io.BytesIO()
    Image.new("L", (128, 128), 255).save(small, "PNG")
    cases = [
        ({"image": photo, "mask": ("m.png", b"not an image", "image/png")}, {"prompt": "a"}, "mask"),
        ({"image": photo, "mask": ("m.png", small.getvalue(), "image/png")}, {"prompt": "a"}, "mask"),
        ([("image[]", photo), ("image[]", photo)], {"prompt": "a"}, "image"),  # a second: no IP-Adapter here
        ({"image": photo}, {}, "prompt"),
        ({"image": photo}, {"prompt": "a", "loras": "[" * 100_000 + "]" * 100_000}, "loras"),  # no RecursionError
        ({"image": photo}, {"prompt": "a", "loras": "[" + "{}," * 200_000 + "{}]"}, "loras"),  # counted, not parsed
        ({"mask": photo}, {"prompt": "a"}, "image"),
        ({"image": photo, "sketch": photo}, {"prompt": "a"}, "sketch"),
        ({"image": photo}, {"prompt": "a", "seed": "seven"}, "seed"),
    ]
    for files, data, param in cases:
        answer = httpx.post(url + "/v1/images/edits", files=files, data=data, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    twice = httpx.post(url + "/v1/images/edits", files=[("image", photo), ("prompt", (None, "a")),
                                                        ("prompt", (None, "b"))], timeout=30)
    assert twice.json()["error"]["message"] == "The form gives 'prompt' twice; give it once."
    answer = httpx.post(url + "/v1/images/edits", json={"prompt": "a"})
    assert answer.status_code == 415
