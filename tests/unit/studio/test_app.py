"""The studio's web server (studio/app.py) in process, on a stand-in source of job outputs: the page,
the form, a job in and its events out, what a body may be, the command line.

The same server on a real socket, attacked from a browser and by hand, is in tests/studio/."""

import asyncio
import json

import httpx
import pytest

from sdxl_worker.studio import app as studio
from sdxl_worker.studio.guard import Guard

KEY = "key-" + "k" * 40
HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OWN_PAGE = {"origin": "http://127.0.0.1:8080", "x-studio-key": KEY, "content-type": "application/json"}


def _source(seen: list):
    async def run(job):
        seen.append(job)
        yield {"preview": "data:image/jpeg;base64,AAAA", "step": 1, "total_steps": 2}
        yield {"images": ["data:image/png;base64,BBBB"], "seed": 7}
    return run


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080")


def _talk(app, *calls):
    """Run the calls, each an async function of the client, in order; their answers."""
    async def talk():
        async with _client(app) as client:
            return [await call(client) for call in calls]
    return asyncio.run(asyncio.wait_for(talk(), 30))


@pytest.fixture
def seen() -> list:
    return []


@pytest.fixture
def app(seen):
    return studio.create_app(_source(seen), where="the test", guard=Guard(HOSTS, key=KEY))


def test_the_page_carries_this_starts_key_and_is_never_framed_or_cached(app):
    (page,) = _talk(app, lambda c: c.get("/"))
    assert page.status_code == 200 and KEY in page.text and "{{key}}" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


def test_the_form_says_where_jobs_run(app):
    (form,) = _talk(app, lambda c: c.get("/api/form", headers=OWN_PAGE))
    body = form.json()
    assert body["runs_on"] == "the test" and body["api"] == {"kind": "local"}
    assert "prompt" in [field["name"] for field in body["fields"]]


def test_a_job_starts_with_202_and_its_events_stream_from_the_first(app, seen):
    async def start(client):
        return await client.post("/api/jobs", headers=OWN_PAGE, content=json.dumps({"input": {"prompt": "a fox"}}))

    (started,) = _talk(app, start)
    assert started.status_code == 202
    job_id = started.json()["id"]

    async def events(client):
        return await client.get(f"/api/jobs/{job_id}/events", headers=OWN_PAGE)

    (stream,) = _talk(app, events)
    assert stream.headers["content-type"].startswith("text/event-stream")
    data = [json.loads(line[len("data: "):]) for line in stream.text.splitlines() if line.startswith("data: ")]
    assert data[0]["step"] == 1 and data[-1]["images"] == ["data:image/png;base64,BBBB"]
    assert [job["input"] for job in seen] == [{"prompt": "a fox"}]


@pytest.mark.parametrize("content_type, body, status, sentence", [
    ("text/plain", '{"input": {}}', 415,
     'Send the job as JSON (Content-Type: application/json): {"input": {...}}.'),
    ("application/json", "{not json", 400, 'The body must be JSON: {"input": {...}}.'),
    ("application/json", '{"prompt": "a fox"}', 400, 'The body must be {"input": {...}}.'),
    ("application/json", '[{"input": {}}]', 400, 'The body must be {"input": {...}}.'),
    ("application/json", '{"input": {"a": ' + "[" * 40 + "]" * 40 + "}}", 400,
     "The body nests lists and objects more than 32 deep; a job's input needs at most 8."),
    ("application/json", '{"input": {"a": [' + "0," * 100_001 + "0]}}", 400,
     "The body holds more than 100,000 values; a job's input needs far fewer."),
])
def test_a_body_that_is_not_a_job_is_refused_in_one_sentence(app, seen, content_type, body, status, sentence):
    (answer,) = _talk(app, lambda c: c.post("/api/jobs", headers={**OWN_PAGE, "content-type": content_type},
                                            content=body))
    assert (answer.status_code, answer.json()) == (status, {"detail": sentence})
    assert seen == []


def test_a_body_declared_over_64_mb_is_refused_before_it_is_read(app):
    (answer,) = _talk(app, lambda c: c.post("/api/jobs", headers={**OWN_PAGE, "content-length": "64000001"},
                                            content=b"{}"))
    assert (answer.status_code, answer.json()) == (413, {"detail": "The job is over 64.0 MB; use smaller input images."})


def test_unknown_jobs_are_404_and_a_foreign_host_gets_nothing(app):
    missing = "No such job in this studio (it ended long ago, or the studio restarted)."
    events, cancel, foreign = _talk(
        app, lambda c: c.get("/api/jobs/nope/events", headers=OWN_PAGE),
        lambda c: c.post("/api/jobs/nope/cancel", headers=OWN_PAGE),
        lambda c: c.get("/", headers={"host": "rebound.example:8080"}))
    assert (events.status_code, events.json()["detail"]) == (404, missing)
    assert (cancel.status_code, cancel.json()["detail"]) == (404, missing)
    assert foreign.status_code == 421 and KEY not in foreign.text
    assert foreign.headers["x-frame-options"] == "DENY"


def test_depth_counts_nesting_without_recursion():
    assert studio._depth("text") == 0
    assert studio._depth({"a": [1, {"b": []}]}) == 4
    assert studio._depth([[]] * 3) == 2
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert studio._depth(deep) == 33  # stops counting one past the limit


def test_the_command_line_defaults_to_loopback_on_port_8080():
    args = studio.parse(["--studio"])
    assert (args.host, args.port, args.login_file, args.endpoint) == ("127.0.0.1", 8080, None, None)
    args = studio.parse(["--studio", "--host", "0.0.0.0", "--port", "9000", "--login-file", "f", "--endpoint", "e1"])
    assert (args.host, args.port, args.login_file, args.endpoint) == ("0.0.0.0", 9000, "f", "e1")


def test_serving_prints_the_address_and_warns_when_open_to_the_network(monkeypatch, capsys):
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append(options))
    studio.serve("app", "127.0.0.1", 8080, "this worker")
    out, err = capsys.readouterr()
    assert out == "studio: http://127.0.0.1:8080/  (jobs run on this worker; Ctrl+C stops)\n" and err == ""
    studio.serve("app", "::", 9000, "endpoint e1")
    out, err = capsys.readouterr()
    assert out.startswith("studio: http://[::]:9000/")
    assert err == ("studio: WARNING: bound to ::, so it is reachable from the network: anyone who reaches port 9000 "
                   "and knows the login can run jobs here.\n")
    assert ran == [{"host": "127.0.0.1", "port": 8080, "log_level": "warning"},
                   {"host": "::", "port": 9000, "log_level": "warning"}]
