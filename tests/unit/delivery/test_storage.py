"""Storage against a real S3 HTTP endpoint (moto's server, a subprocess), driven through boto3 and HTTP."""

import io
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
import numpy as np
import pytest
from PIL import Image

from sdxl_worker import config
from sdxl_worker.config import ConfigError
from sdxl_worker.delivery.deliver import deliver
from sdxl_worker.delivery.storage import Storage, storage_for
from sdxl_worker.request.types import Request
from tests.helpers import ROOT, decode, free_port, moto_server, worker_with

ACCESS_KEY = "AKIATESTKEYID0000001"
SECRET = "test-secret-do-not-log-9f3b2c"
BUCKETS = itertools.count()


def storage_from(env: dict) -> Storage | None:
    """The worker's storage as start-up builds it from these BUCKET_* variables."""
    return storage_for(config.storage(env))


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def env_for(endpoint: str, bucket: str, **extra) -> dict:
    return {"BUCKET_ENDPOINT_URL": endpoint, "BUCKET_ACCESS_KEY_ID": ACCESS_KEY,
            "BUCKET_SECRET_ACCESS_KEY": SECRET, "BUCKET_NAME": bucket, "BUCKET_PATH_STYLE": "1",
            "BUCKET_REGION": "us-east-1", **extra}


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket on the moto server; returns (name, a plain boto3 client to inspect it)."""
    name = f"images-{next(BUCKETS)}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name, client


def picture(seed: int, size: int = 128) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), response.headers["Content-Type"]


@pytest.mark.parametrize("fmt, mime, extension", [("png", "image/png", "png"), ("jpeg", "image/jpeg", "jpg"),
                                                   ("webp", "image/webp", "webp")])
def test_images_land_with_their_keys_and_types_and_urls_return_the_bytes(s3_endpoint, bucket, fmt, mime, extension,
                                                                         caplog):
    caplog.set_level(logging.DEBUG)
    name, client = bucket
    storage = storage_from(env_for(s3_endpoint, name, BUCKET_KEY_PREFIX="/renders/"))
    images = [picture(1), picture(2)]
    delivery = deliver(images, Request.from_input({"prompt": "a", "output_format": fmt}), storage, job_id="job-7")

    keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=name)["Contents"])
    assert keys == [f"renders/job-7/0.{extension}", f"renders/job-7/1.{extension}"]
    for index, url in enumerate(delivery.images):
        assert url.startswith(f"{s3_endpoint}/{name}/renders/job-7/{index}.{extension}?") and "X-Amz-Signature" in url
        body, content_type = fetch(url)
        stored = client.get_object(Bucket=name, Key=keys[index])
        assert body == stored["Body"].read() and content_type == stored["ContentType"] == mime
        if fmt == "png":
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(images[index]))
    assert delivery.warnings == [] and delivery.timings["upload"] >= 0
    assert SECRET not in caplog.text


def test_a_whole_job_returns_presigned_urls(s3_endpoint, bucket, models):
    from sdxl_worker.runtime.job import run_job

    name, client = bucket
    storage = storage_from(env_for(s3_endpoint, name))
    job = {"id": "sync-abc/1", "input": {"prompt": "a fox", "width": 256, "height": 256, "num_images": 2,
                                         "num_inference_steps": 2, "refine": "no_refiner", "seed": 5}}
    [result] = list(run_job(worker_with(models, storage), job))
    assert result["image_url"] == result["images"][0] and result["seeds"] == [5, 6]
    assert [decode_url(url).size for url in result["images"]] == [(256, 256)] * 2
    assert {"encode", "upload"} <= set(result["timings"]) and "warnings" not in result
    assert sorted(item["Key"] for item in client.list_objects_v2(Bucket=name)["Contents"]) == \
        ["sync-abc_1/0.png", "sync-abc_1/1.png"]

    # upload: false keeps this job inline even though the worker has storage
    job["input"]["upload"] = False
    [inline] = list(run_job(worker_with(models, storage), job))
    assert inline["images"][0].startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(decode(inline["images"][1])), np.asarray(decode_url(result["images"][1])))


def test_a_jobs_s3config_sends_its_images_to_its_own_bucket(s3_endpoint, bucket, models, caplog):
    from sdxl_worker.runtime.job import run_job

    caplog.set_level(logging.DEBUG)
    worker_bucket, client = bucket
    client.create_bucket(Bucket="someone-elses")
    worker_storage = storage_from(env_for(s3_endpoint, worker_bucket))
    s3_config = {"accessId": ACCESS_KEY, "accessSecret": SECRET, "bucketName": "someone-elses",
                 "endpointUrl": s3_endpoint}
    job = {"id": "per-job", "s3Config": s3_config, "input": {"prompt": "a fox", "width": 256, "height": 256,
                                                             "num_inference_steps": 2, "refine": "no_refiner"}}
    for storage in (worker_storage, None):  # with or without storage of the worker's own
        worker = worker_with(models, storage, ALLOW_PRIVATE_URLS="1")  # the test bucket is on this machine
        [result] = list(run_job(worker, job))
        assert "/someone-elses/per-job/0.png?" in result["images"][0] and "warnings" not in result
        assert decode_url(result["images"][0]).size == (256, 256)
    assert "Contents" not in client.list_objects_v2(Bucket=worker_bucket)
    assert SECRET not in caplog.text and SECRET not in repr(result)


@pytest.mark.parametrize("s3_config, problem", [
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b"}, "endpointUrl missing"),
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "ftp://x"}, "http(s) URL"),
    ("a string", "must be an object"),
    # Where downloads may not go, uploads may not either: a job cannot make the worker PUT to its network.
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "http://169.254.169.254"},
     "endpointUrl points at a local or private address (169.254.169.254)"),
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "http://127.0.0.1:9000"},
     "ALLOW_PRIVATE_URLS=1"),
    # What boto3 itself cannot use fails over the same way, never the job.
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "http://[bad"}, "plain http(s) URL"),
    ({"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "https://s3.example.com",
      "region": "bad region!"}, "boto3 cannot use it"),
])
def test_an_unusable_s3config_falls_back_with_a_warning(models, s3_config, problem, monkeypatch):
    from sdxl_worker.runtime.job import run_job

    worker = worker_with(models)
    if isinstance(s3_config, dict) and "example.com" in s3_config.get("endpointUrl", ""):
        monkeypatch.setattr(worker.fetcher, "endpoint_addresses", lambda url: ("203.0.113.9",))  # no DNS here

    job = {"id": "bad-s3", "s3Config": s3_config, "input": {"prompt": "a", "width": 256, "height": 256,
                                                            "num_inference_steps": 2, "refine": "no_refiner"}}
    [result] = list(run_job(worker, job))
    assert result["images"][0].startswith("data:image/png;base64,")
    [warning] = result["warnings"]
    assert problem in warning and "are returned inline" in warning and SECRET not in warning


def test_path_style_is_read_as_json_sends_it():
    from sdxl_worker.delivery.storage import _job_settings

    base = {"accessId": "a", "accessSecret": SECRET, "bucketName": "b", "endpointUrl": "https://s3.example.com"}
    assert [_job_settings({**base, "pathStyle": value}, None).path_style
            for value in (True, "true", "1", False, "false", "no", None)] == [True, True, True, False, False, False,
                                                                              False]


def decode_url(url: str) -> Image.Image:
    return Image.open(io.BytesIO(fetch(url)[0]))


def test_a_dead_endpoint_is_retried_then_images_arrive_inline(caplog):
    caplog.set_level(logging.DEBUG)
    # free_port() binds a port and closes it again: nothing listens there, connections are refused
    storage = storage_from(env_for(f"http://127.0.0.1:{free_port()}", "nowhere",
                                       BUCKET_UPLOAD_ATTEMPTS="3", BUCKET_RETRY_DELAY_S="0.01"))
    images = [picture(3), picture(4)]
    delivery = deliver(images, Request.from_input({"prompt": "a"}), storage, job_id="job-dead")

    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) == 2 * 2  # attempts 1 and 2 of each image failed and were retried; the 3rd gave up
    assert len(delivery.warnings) == 1 and "after 3 attempts" in delivery.warnings[0]
    assert "inline" in delivery.warnings[0]
    assert [np.array_equal(np.asarray(decode(url)), np.asarray(image))
            for url, image in zip(delivery.images, images)] == [True, True]
    assert SECRET not in caplog.text and ACCESS_KEY not in caplog.text


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers: a hung store. Counts the connections."""
    server = socket.create_server(("127.0.0.1", 0))
    connections = []

    def accept():
        while True:
            try:
                connections.append(server.accept()[0])
            except OSError:  # the server socket was closed: the test is over
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", connections
    server.close()
    for connection in connections:
        connection.close()


def test_a_hung_store_times_out_on_every_attempt_then_images_arrive_inline(silent_endpoint):
    endpoint, connections = silent_endpoint
    storage = storage_from(env_for(endpoint, "hung", BUCKET_UPLOAD_ATTEMPTS="2", BUCKET_RETRY_DELAY_S="0",
                                       BUCKET_READ_TIMEOUT_S="0.2"))
    delivery = deliver([picture(7)], Request.from_input({"prompt": "a"}), storage, job_id="job-hung")
    assert len(connections) == 2  # one connection per attempt, no hidden retries inside botocore
    assert "after 2 attempts (ReadTimeoutError)" in delivery.warnings[0]
    assert delivery.images[0].startswith("data:image/png;base64,")


def test_the_deadline_stops_retries_early(caplog):
    caplog.set_level(logging.WARNING)
    storage = storage_from(env_for(f"http://127.0.0.1:{free_port()}", "nowhere", BUCKET_UPLOAD_ATTEMPTS="10",
                                       BUCKET_RETRY_DELAY_S="5", BUCKET_UPLOAD_DEADLINE_S="1"))
    delivery = deliver([picture(5)], Request.from_input({"prompt": "a"}), storage, job_id="job-late")
    assert "within 1 s, 1 attempt(s)" in delivery.warnings[0]
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]


def test_a_refused_upload_is_not_retried(s3_endpoint, caplog):
    storage = storage_from(env_for(s3_endpoint, "no-such-bucket-here"))
    delivery = deliver([picture(6)], Request.from_input({"prompt": "a"}), storage, job_id="job-404")
    assert "refused" in delivery.warnings[0] and "NoSuchBucket" in delivery.warnings[0]
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]
    assert delivery.images[0].startswith("data:image/png")


@pytest.mark.parametrize("present", [["BUCKET_ENDPOINT_URL"], ["BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"],
                                     ["BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"]])
def test_half_a_configuration_names_what_is_missing(present):
    env = {name: value for name, value in env_for("http://127.0.0.1:9", "b").items() if name in present}
    with pytest.raises(ConfigError) as caught:
        config.storage(env)
    missing = {"BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"} - set(present)
    assert all(name in str(caught.value) for name in missing) and SECRET not in str(caught.value)


def test_no_bucket_variables_means_inline_and_bad_values_are_refused():
    assert config.storage({}) is None
    assert config.storage({"BUCKET_REGION": "auto"}) is None  # an optional setting alone turns nothing on
    settings = config.storage(env_for("http://s3.example.com/", "b"))
    assert settings.endpoint_url == "http://s3.example.com" and SECRET not in repr(settings)
    assert ACCESS_KEY not in repr(Storage(settings).describe())
    for name, value in [("BUCKET_URL_LIFETIME_S", "700000"), ("BUCKET_PATH_STYLE", "maybe"),
                        ("BUCKET_UPLOAD_ATTEMPTS", "many"), ("BUCKET_ENDPOINT_URL", "s3.example.com")]:
        with pytest.raises(ConfigError, match=name):
            config.storage(env_for("http://s3.example.com", "b", **{name: value}))


def test_the_worker_refuses_to_start_half_configured():
    env = {name: value for name, value in os.environ.items() if not name.startswith("BUCKET_")}
    env.update(BUCKET_ENDPOINT_URL="http://127.0.0.1:9", BUCKET_SECRET_ACCESS_KEY=SECRET,
               BASE_MODEL="tiny", REFINER_MODEL="tiny", LOG_LEVEL="DEBUG")
    done = subprocess.run([sys.executable, "handler.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "half configured" in output and "BUCKET_ACCESS_KEY_ID" in output and "BUCKET_NAME" in output
    assert SECRET not in output


def test_what_botocore_refuses_on_this_side_is_not_retried(caplog):
    """A bucket name botocore will not send (ParamValidationError) fails the same way every time:
    the images come back inline at once, not after four attempts and their waits."""
    caplog.set_level(logging.WARNING)
    storage = storage_from(env_for(f"http://127.0.0.1:{free_port()}", "not a bucket/name!",
                                       BUCKET_UPLOAD_ATTEMPTS="4", BUCKET_RETRY_DELAY_S="2"))
    started = time.monotonic()
    delivery = deliver([picture(8)], Request.from_input({"prompt": "a"}), storage, job_id="job-param")
    assert time.monotonic() - started < 2
    assert "refused the upload (ParamValidationError)" in delivery.warnings[0]
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]
    assert delivery.images[0].startswith("data:image/png")
