"""The worker as RunPod runs it: `python handler.py` under runpod-python's job loop, against a
loopback queue that speaks RunPod's protocol (tests/runpod_queue.py), on the tiny model.

One worker serves the tests in order; the last one ends it with SIGTERM.
"""

import contextlib
import io
import json
import signal
import socket
import threading
import time
import urllib.request

import boto3
import pytest

from sdxl_worker.testing.servers import Server
from tests.helpers import FAST, decode, moto_server, photo
from tests.helpers.runpod_queue import handler_process

SMALL = {**FAST, "refine": "no_refiner"}
LONG = {"prompt": "a long walk", "width": 1024, "height": 1024, "num_inference_steps": 150,
        "refine": "no_refiner", "seed": 3}  # about 30 s on 2 CPU cores
OUTPUT_LIMIT_MB = 2  # the worker's INLINE_LIMIT_MB here: small enough for the size guard to act
SECRET = "per-job-secret-do-not-log-7c1d"
ACCESS_ID = "AKIAPERJOBTEST000001"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    # ALLOW_PRIVATE_URLS: the per-job bucket (moto) is on this machine.
    with handler_process(tmp_path_factory.mktemp("worker"), INLINE_LIMIT_MB=str(OUTPUT_LIMIT_MB),
                         ALLOW_PRIVATE_URLS="1") as running:
        yield running


def answer(rp_queue, job_id, timeout=180):
    """The job's last output as RunPod aggregates it, and the whole aggregated body."""
    body = rp_queue.result(job_id, timeout).body
    if "error" in body:
        return body, body
    return body["output"][-1], body


def small_job_seconds(rp_queue, job_id) -> float:
    """Submit the small job; seconds from now until its answer arrived."""
    submitted = time.monotonic()
    rp_queue.submit(job_id, SMALL)
    done = rp_queue.result(job_id, 180)
    assert "error" not in done.body, done.body
    return done.at - submitted


def test_a_job_is_answered_with_images(worker):
    rp_queue, process, log_path = worker
    rp_queue.submit("job-first", {**FAST, "preview_steps": 2})
    final, body = answer(rp_queue, "job-first", timeout=240)  # the first one waits for start-up
    assert decode(final["images"][0]).size == (256, 256)
    assert final["seed"] == 1
    streamed = rp_queue.records("stream", "job-first")
    total = streamed[0].body["output"]["total_steps"]
    assert [chunk.body["output"]["step"] for chunk in streamed[:-1]] == list(range(2, total + 1, 2))  # in order
    assert streamed[-1].body["output"]["images"] == final["images"]
    assert rp_queue.unauthorised == 0
    log = log_path.read_text()
    assert "Running 3 fitness check(s)" in log and "All fitness checks passed" in log  # the worker's three


def test_a_bad_job_is_answered_with_an_error_naming_the_field(worker):
    rp_queue, _, _ = worker
    rp_queue.submit("job-bad", {"prompt": "a", "width": 100})
    body, _ = answer(rp_queue, "job-bad")
    assert "width" in body["error"] and "multiple of 8" in body["error"]
    assert small_job_seconds(rp_queue, "job-after-bad") < 60  # and the worker goes on


def held_image(release: threading.Event):
    """A PNG sent a byte every 0.2 s (well inside the worker's read timeout) until ``release`` is set,
    then the rest: a job held open on the test's event instead of on many real steps."""
    buffer = io.BytesIO()
    photo(256, 256).save(buffer, format="PNG")
    data = buffer.getvalue()

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        sent = 0
        while sent < len(data) - 1 and not release.wait(0.2):
            handler.wfile.write(data[sent:sent + 1])
            handler.wfile.flush()
            sent += 1
        handler.wfile.write(data[sent:])

    return respond


def test_progress_and_pings_arrive_during_a_long_job(worker):
    rp_queue, _, _ = worker
    release = threading.Event()
    with Server({"/held.png": held_image(release)}) as images:
        rp_queue.submit("job-progress", {**SMALL, "num_inference_steps": 8, "strength": 1.0,
                                         "image_url": images.url("/held.png")})
        rp_queue.wait_for(lambda: len(rp_queue.pings_for("job-progress")) >= 2, 60, "a heartbeat naming the job")
        release.set()
        done = rp_queue.result("job-progress", 180)
    assert "error" not in done.body, done.body
    started = rp_queue.taken["job-progress"]
    progress = [p for p in rp_queue.progress("job-progress") if started < p.at < done.at]
    pings = [p for p in rp_queue.pings_for("job-progress") if started < p.at < done.at]
    assert len(progress) >= 2, "progress reports flow while the job denoises"
    assert progress[-1].body["output"]["step"] > progress[0].body["output"]["step"]
    assert len(pings) >= 2, "runpod's heartbeat names the job while it runs"


def test_a_stop_signal_frees_the_worker_within_a_step(worker):
    rp_queue, _, log_path = worker
    alone = small_job_seconds(rp_queue, "job-small-alone")
    rp_queue.submit("job-long-stopped", LONG)
    rp_queue.wait_for(lambda: rp_queue.progress("job-long-stopped"), 120, "no progress for the long job")
    stopped_at = time.monotonic()
    rp_queue.stop("job-long-stopped")
    rp_queue.submit("job-small-after-stop", SMALL)
    after = rp_queue.result("job-small-after-stop", 180).at - stopped_at
    print(f"small job alone {alone:.2f} s; stop signal to the next small job's answer {after:.2f} s")
    # The long job had most of its 150 steps (about 30 s here) still to run: a worker the stop did not
    # free answers the next job 20 s or more later. The margin leaves room for a machine running a
    # second suite beside this one (the small job then takes 2-3x its time alone).
    assert after < alone + 15, f"the stopped job kept the worker busy ({after:.1f} s against {alone:.1f} s alone)"
    assert not [p for p in rp_queue.records("done", "job-long-stopped") if "error" in p.body or "output" in p.body
                and p.body.get("status") != "IN_PROGRESS"], "a cancelled job gets no result"
    log = log_path.read_text()
    assert "job job-long-stopped stopped (cancelled)" in log
    step = int(log.split("job job-long-stopped stopped (cancelled): The job was cancelled at step ")[1].split()[0])
    assert step < 150


def test_a_job_with_s3config_lands_in_its_bucket(worker, s3):
    rp_queue, _, log_path = worker
    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id=ACCESS_ID, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
    client.create_bucket(Bucket="per-job")
    s3_config = {"accessId": ACCESS_ID, "accessSecret": SECRET, "bucketName": "per-job", "endpointUrl": s3}
    rp_queue.submit("job-s3", SMALL, s3Config=s3_config)
    final, body = answer(rp_queue, "job-s3")
    url = final["images"][0]
    assert url.startswith(s3 + "/per-job/job-s3/0.png?")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert len(response.read()) > 1000
    assert [item["Key"] for item in client.list_objects_v2(Bucket="per-job")["Contents"]] == ["job-s3/0.png"]
    assert SECRET not in json.dumps(body) and SECRET not in log_path.read_text()

    # A per-job bucket that cannot be reached: the images come back inline, with a warning.
    rp_queue.submit("job-s3-down", SMALL, s3Config={**s3_config, "endpointUrl": "http://127.0.0.1:9"})
    final, body = answer(rp_queue, "job-s3-down")
    assert final["images"][0].startswith("data:image/png;base64,")
    assert any("could not be uploaded" in warning for warning in final["warnings"])
    assert SECRET not in json.dumps(body) and SECRET not in log_path.read_text()


def test_a_preview_heavy_job_stays_under_the_output_limit(worker):
    rp_queue, _, _ = worker
    job = {**SMALL, "width": 512, "height": 512, "num_inference_steps": 16, "preview_steps": 1,
           "preview_size": 512, "preview_quality": 95}
    rp_queue.submit("job-previews", job)
    done = rp_queue.result("job-previews", 180)
    final = done.body["output"][-1]
    previews = done.body["output"][:-1]
    assert done.size <= OUTPUT_LIMIT_MB * 1_000_000, f"aggregated output {done.size:,} bytes"
    assert 0 < len(previews) < 16, "later previews were dropped"
    assert sum("were dropped" in warning for warning in final["warnings"]) == 1
    assert decode(final["images"][0]).size == (512, 512)
    assert max(chunk.size for chunk in rp_queue.records("stream", "job-previews")[:-1]) < 1_000_000


def sigterm_once_denoising(rp_queue, process, job_id: str) -> tuple[float, int]:
    """Send SIGTERM once ``job_id`` reports progress; (seconds until the process exited, its exit code)."""
    rp_queue.wait_for(lambda: rp_queue.progress(job_id), 120, f"no progress for {job_id}")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    return time.monotonic() - sent, code


def test_sigterm_during_a_job_answers_it_and_exits_within_10_s(worker):
    rp_queue, process, log_path = worker
    rp_queue.submit("job-at-sigterm", LONG)
    exited, code = sigterm_once_denoising(rp_queue, process, "job-at-sigterm")
    print(f"SIGTERM to exit: {exited:.2f} s")
    assert exited < 10, f"the worker took {exited:.1f} s to exit after SIGTERM"
    assert code == 0
    body, _ = answer(rp_queue, "job-at-sigterm", timeout=1)
    assert "shutting down" in body["error"] and "send it again" in body["error"]


# --- a worker of its own: failing fitness, CONCURRENCY=2, SIGTERM while an upload hangs ---


def test_a_failing_fitness_check_stops_the_worker_before_any_job(tmp_path):
    # Storage configured but not answering: the storage check fails, runpod exits with code 1.
    with handler_process(tmp_path, BUCKET_ENDPOINT_URL="http://127.0.0.1:9", BUCKET_ACCESS_KEY_ID="AKIAFITNESS0001",
                         BUCKET_SECRET_ACCESS_KEY="fitness-secret-value", BUCKET_NAME="nowhere") as (rp_queue, process,
                                                                                                       log_path):
        assert process.wait(timeout=180) == 1
        log = log_path.read_text()
    assert "Running 3 fitness check(s)" in log and "Fitness check failed: storage_answers" in log
    assert "does not answer" in log
    assert "fitness-secret-value" not in log and rp_queue.records("done") == []


@contextlib.contextmanager
def silent_endpoint():
    """An endpoint that accepts connections and never answers: storage that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held, connected = [], threading.Event()

    def accept():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", connected
    finally:
        server.close()
        for connection in held:
            connection.close()


def test_two_jobs_at_once_then_sigterm_while_an_upload_hangs(tmp_path):
    with handler_process(tmp_path, CONCURRENCY="2", ALLOW_PRIVATE_URLS="1") as (rp_queue, process, log_path), \
            silent_endpoint() as (hanging, connected):
        rp_queue.submit("pair-1", SMALL)
        rp_queue.submit("pair-2", SMALL)
        first, second = (rp_queue.result(job_id, 240) for job_id in ("pair-1", "pair-2"))
        assert "output" in first.body and "output" in second.body
        assert rp_queue.batch_takes >= 1, "CONCURRENCY=2 takes jobs with runpod's batch request"

        s3_config = {"accessId": ACCESS_ID, "accessSecret": SECRET, "bucketName": "b", "endpointUrl": hanging}
        rp_queue.submit("job-upload-hangs", SMALL, s3Config=s3_config)
        assert connected.wait(120), "the upload reached the hanging endpoint"
        rp_queue.submit("job-beside-it", LONG)
        exited, code = sigterm_once_denoising(rp_queue, process, "job-beside-it")
        print(f"SIGTERM with an upload hanging: exit after {exited:.2f} s")
        assert exited < 10 and code == 0
        for job_id in ("job-upload-hangs", "job-beside-it"):
            body = rp_queue.result(job_id, 1).body
            assert "shutting down" in body["error"], (job_id, body)
        assert SECRET not in log_path.read_text()
