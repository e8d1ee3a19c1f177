"""The log (runtime/logs.py): no secret, job secret or payload reaches it, not even in part."""

from __future__ import annotations

import json
import logging

SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 3,
         "refine": "no_refiner"}


def test_a_secret_in_a_long_prompt_never_reaches_the_log_not_even_in_part(run, monkeypatch, caplog):
    secret = "sk-live-9fQ2xLmT7vBn4KpZr8WcYd3HsJ6uAe"
    monkeypatch.setenv("CLIENT_API_TOKEN", secret)  # a name that says secret: its value is redacted
    aws_key = "AKIAIOSFODNN7EXAMPLE"
    for cut in (60, 75, 78):  # the log keeps 80 characters: the secret straddles the cut
        prompt = "x" * cut + secret + " and " + aws_key + " in a long prompt " * 5
        with caplog.at_level(logging.INFO):
            run(dict(SMALL, prompt=prompt))
    text = caplog.text
    for value in (secret, aws_key):
        parts = {value[i:i + 8] for i in range(len(value) - 7)}
        assert not [part for part in parts if part in text], "a part of a secret is in the log"
    assert "<redacted>" in text


def test_a_jobs_own_s3_secret_in_a_library_failure_never_reaches_the_log(worker, monkeypatch, caplog):
    """A library's message that carries the job's own s3Config secret (a signature error, a
    traceback's locals) is logged redacted, the traceback included; the answer names no secret."""
    import sdxl_worker.runtime.job

    secret = "job-own-secret-Q8v2LmT7xBn4KpZr"
    access_id = "AKIAJOBOWNKEY0000001"

    def failing_delivery(images, asked, storage, job_id, room_bytes=None):
        raise RuntimeError(f"SignatureDoesNotMatch: computed with {access_id}:{secret}")

    monkeypatch.setattr(sdxl_worker.runtime.job, "deliver", failing_delivery)
    s3_config = {"accessId": access_id, "accessSecret": secret, "bucketName": "b",
                 "endpointUrl": "http://127.0.0.1:9"}  # refused (private): the job delivers inline
    with caplog.at_level(logging.INFO):
        outputs = list(sdxl_worker.runtime.job.run_job(worker, {"id": "job-secret", "input": SMALL,
                                                                "s3Config": s3_config}))
    assert outputs[-1]["error"].startswith("The worker hit an internal error on job job-secret")
    assert "SignatureDoesNotMatch" in caplog.text and "Traceback" in caplog.text  # the failure is logged ...
    assert secret not in caplog.text and secret not in json.dumps(outputs)  # ... without the secret
