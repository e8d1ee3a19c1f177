"""Hostile jobs through the real handler (run_job, tiny models): every malformed input gets one
error sentence naming what is wrong, nothing raises or hangs, nothing leaks into the log, and
the worker serves a valid job afterwards.
"""

import base64
import logging
import math
import signal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sdxl_worker.errors import InputError
from sdxl_worker.request import schema
from sdxl_worker.runtime.job import run_job
from sdxl_worker.runtime.logs import redact
from sdxl_worker.testing.files import png_declaring
from tests.helpers import worker_with

VALID = {"prompt": "a red cube", "width": 256, "height": 256, "num_inference_steps": 2, "refine": "no_refiner",
         "seed": 3}
FIELDS = list(schema.INPUT_SCHEMA["properties"])

# Values no field accepts, or that pass the schema and must be refused later, all fast: none of
# them makes the worker wait on a network or run a model.
HOSTILE_TEXT = [
    "file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:70/_", "javascript:alert(1)",
    "http://127.0.0.1:1/a.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://10.0.0.1/",
    "http://localhost:1/", "https://0x7f000001/", "data:image/png;base64,!!!", "data:text/plain,hello",
    "data:image/png;base64," + base64.b64encode(png_declaring(100_000, 100_000)).decode(),
    base64.b64encode(b"<html>not an image</html>").decode(), "%%%", "１０２４", "1024", "NaN", "-Infinity",
    "\ud800", "\x00", "a" * 5000, "DDIM ", "ddim", "txt2img\n",
]
NUMBERS = [True, False, -1, 0, 2**63, -(2**63), 10**40, 1e308, -1e308, math.nan, math.inf, -math.inf, 1.5, 1e-300]

# Kept small: drawing examples, not running them, is what costs time here.
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(HOSTILE_TEXT) | st.sampled_from(NUMBERS))
values = (scalars | st.lists(scalars, max_size=3)  # one level of nesting; deep nesting has its own test
          | st.dictionaries(st.text(max_size=4), scalars, max_size=2))
inputs = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=4)
# Mostly an otherwise valid job with a few fields spoiled, so each check is reached, not only the first.
spoiled = st.builds(lambda base, changes: {**base, **changes}, st.just(VALID),
                    st.dictionaries(st.sampled_from(FIELDS), values, min_size=1, max_size=3))
# A valid job whose image is hostile bytes: reaches fetching and Pillow, not only the schema.
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


image_sources = (st.sampled_from(HOSTILE_TEXT) | st.text(max_size=20)
                 | st.binary(max_size=200).map(_b64)
                 | st.builds(lambda magic, rest: _b64(magic + rest),
                             st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF"]),
                             st.binary(max_size=200)))
bad_images = st.builds(lambda field, source: {**VALID, field: source},
                       st.sampled_from(["image", "image_url"]), image_sources)
raw_inputs = spoiled | bad_images | inputs | values


def would_generate(raw) -> bool:
    """True when ``raw`` is a valid job without an input image: it would run the model (slow)."""
    try:
        request = schema.validate(raw)
    except InputError:
        return False
    return request["image"] is None and request["image_url"] is None


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def test_a_thousand_malformed_inputs_each_get_one_error_and_the_worker_keeps_serving(models):
    seen = []

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(raw=raw_inputs)
    def storm(raw):
        assume(not would_generate(raw))
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, 20)  # a hang fails the test instead of stalling the suite
        try:
            outputs = list(run_job(worker_with(models), {"id": "fuzz", "input": raw}))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert len(outputs) == 1 and set(outputs[0]) == {"error"}, outputs
        message = outputs[0]["error"]
        assert isinstance(message, str) and message
        assert "internal error" not in message, f"{raw!r:.300} reached an internal error"
        assert "Traceback" not in message and len(message) < 2000
        seen.append(raw)

    storm()
    assert len(seen) >= 1000
    after = list(run_job(worker_with(models), {"id": "after", "input": VALID}))
    assert len(after) == 1 and len(after[0]["images"]) == 1


def error_of(models, inputs) -> str:
    outputs = list(run_job(worker_with(models), {"id": "hostile", "input": inputs}))
    assert len(outputs) == 1 and set(outputs[0]) == {"error"}
    message = outputs[0]["error"]
    assert "internal error" not in message and "\n" not in message
    return message


@pytest.mark.parametrize("field, source, expected", [
    ("image", "file:///etc/passwd", "scheme"),
    ("image_url", "gopher://127.0.0.1:70/_", "scheme"),
    ("image", "http://127.0.0.1:8080/cat.png", "private"),
    ("image_url", "http://localhost/cat.png", "private"),
    ("image", "http://169.254.169.254/latest/meta-data/iam/", "private"),
    ("image", "not base64 at all!", "base64"),
    ("image", base64.b64encode(png_declaring(50_000, 50_000)).decode(), "MAX_IMAGE_PIXELS"),
    ("image_url", base64.b64encode(b"#!/bin/sh\nrm -rf /\n").decode(), "not an image"),
])
def test_hostile_images_through_the_handler_name_their_field(models, field, source, expected):
    message = error_of(models, {"prompt": "a cat", field: source})
    assert f"'{field}'" in message and expected in message


def test_a_huge_prompt_is_refused_without_being_echoed(models):
    prompt = "a cat, " * 1_500_000  # 10 MB
    message = error_of(models, {"prompt": prompt})
    assert "'prompt'" in message and "too long" in message and len(message) < 200


def test_huge_unknown_keys_are_not_echoed(models):
    message = error_of(models, {"prompt": "a", "x" * 100_000: 1, **{f"k{i}": i for i in range(500)}})
    assert "Unknown input" in message and "more" in message and len(message) < 500


def test_deep_nesting_is_refused_before_validation(models):
    deep = "x"
    for _ in range(10_000):
        deep = [deep]
    assert "'prompt'" in error_of(models, {"prompt": deep})


def test_every_string_and_list_in_the_schema_is_capped():
    """Holds for the inputs every issue adds: a string without maxLength or a list without maxItems fails."""
    def walk(spec, where):
        kinds = spec.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if "string" in kinds:
            assert "maxLength" in spec, f"{where} is a string without maxLength"
        if "array" in kinds:
            assert "maxItems" in spec, f"{where} is a list without maxItems"
            walk(spec.get("items", {}), f"{where}[]")
        if "object" in kinds:
            assert spec.get("additionalProperties") is False or "maxProperties" in spec, f"{where} is open-ended"
            for name, child in spec.get("properties", {}).items():
                walk(child, f"{where}.{name}")
        for key in ("anyOf", "oneOf", "allOf"):
            for index, child in enumerate(spec.get(key, [])):
                walk(child, f"{where}<{key}{index}>")

    walk(schema.INPUT_SCHEMA, "input")


def test_the_log_holds_no_payloads_secrets_or_whole_prompts(models, caplog, monkeypatch):
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", "s3cr3t-value-123")
    payload = base64.b64encode(b"\x89PNG not really" * 500).decode()
    prompt = "a very long prompt " * 50
    with caplog.at_level(logging.INFO):
        error_of(models, {"prompt": prompt, "image": f"data:image/png;base64,{payload}"})
        error_of(models, {"prompt": "a", "image": "http://10.0.0.1/a.png?X-Amz-Signature=abcdef123456"})
        logging.getLogger("sdxl_worker.runtime.job").info("leak %s", "s3cr3t-value-123 " + payload)
    text = caplog.text
    assert payload[:64] not in text and "s3cr3t-value-123" not in text and prompt not in text
    assert "abcdef123456" not in text
    assert "job hostile" in text  # the log still says what happened


def test_an_internal_error_logs_its_traceback_and_tells_the_user_one_sentence(models, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("data:image/png;base64," + "QUJD" * 100)

    monkeypatch.setattr(models.base.unet, "forward", broken)
    with caplog.at_level(logging.INFO):
        outputs = list(run_job(worker_with(models), {"id": "job-42", "input": VALID}))
    assert outputs == [{"error": "The worker hit an internal error on job job-42; the details are in the worker's log."}]
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text
    assert "QUJDQUJD" not in caplog.text


@pytest.mark.parametrize("text, gone", [
    ("data:image/jpeg;base64," + "A" * 500, "A" * 64),
    ("token " + "Zm9v" * 40, "Zm9v" * 16),
    ("https://bucket.s3.amazonaws.com/a.png?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef", "deadbeef"),
    ("https://user:hunter2@example.com/a.png", "hunter2"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
    ("key AKIAABCDEFGHIJKLMNOP", "AKIAABCDEFGHIJKLMNOP"),
])
def test_redaction(text, gone):
    assert gone not in redact(text)


@pytest.mark.parametrize("field", ["scheduler", "model", "task", "refine", "preset", "output_format"])
def test_error_sentences_never_echo_markup_or_long_text(run, field):
    hostile = "<img src=x onerror=alert(1)>"
    error = run({**VALID, field: hostile})[-1]["error"]
    assert "<img" not in error and "onerror" not in error and "alert" not in error
    assert f"'{field}'" in error and "a text of 28 characters" in error


def test_a_short_plain_mistake_is_still_quoted_back(run):
    assert "got 'ddim'" in run({**VALID, "scheduler": "ddim"})[-1]["error"]


def test_a_huge_list_is_refused_before_a_tuple_is_made_for_each_value():
    import tracemalloc

    from sdxl_worker.request import schema as request_schema

    big = {"prompt": "x", "loras": [0] * 5_000_000}  # what a 10 MB /run body parses into
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="holds more than 10,000 values"):
            request_schema.validate(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak / 2**20:.0f} MB to refuse it"


def test_a_lora_weight_name_with_markup_is_not_echoed(run, worker_env):
    worker_env["HF_HUB_OFFLINE"] = "1"
    lora = {"path": "owner/name", "weight_name": "<img src=x onerror=alert(1)>.safetensors"}
    error = run({**VALID, "loras": [lora]})[-1]["error"]
    assert "<img" not in error and "onerror" not in error and "'loras[0].weight_name'" in error
