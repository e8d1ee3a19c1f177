"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): whatever arrives, no 500 and no
crash, and the worker still answers a real job afterwards. Bounded: a few examples per route in CI."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.helpers import worker_with
from tests.helpers.browser import served
from tests.helpers.http_server import app_for


@pytest.fixture(scope="module")
def fuzzed(models):
    # A small work budget: most jobs the fuzzer makes are refused before any model runs, the few
    # small ones run; URLs in them fail fast (no network here, and private addresses are refused).
    worker = worker_with(models, MAX_JOB_WORK="40", FETCH_TOTAL_TIMEOUT="2", FETCH_CONNECT_TIMEOUT="1")
    with served(app_for(worker, concurrency=1, queue=8)) as url:
        yield url


@pytest.mark.timeout(180)  # the bounded fuzz: about a minute on two cores
def test_no_request_from_the_openapi_document_breaks_the_server(fuzzed):
    schema = schemathesis.openapi.from_url(fuzzed + "/openapi.json")
    seen = []
    for operation in schema.get_all_operations():
        strategy = operation.ok().as_strategy()

        @settings(max_examples=12, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def one(case):
            response = case.call(base_url=fuzzed, timeout=60)
            seen.append((case.method, case.path, response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        from hypothesis import given

        given(strategy)(one)()
    routes = {(method, path) for method, path, _ in seen}
    assert ("POST", "/v1/jobs") in routes and ("POST", "/v1/images/edits") in routes
    answer = httpx.post(fuzzed + "/v1/jobs", timeout=60, json={"input": {
        "prompt": "after the fuzz", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 2}})
    assert answer.status_code == 200 and answer.json()["seeds"] == [2]
