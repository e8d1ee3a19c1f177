"""The studio's web server (studio/app.py) in process, on a stand-in source of job outputs: the page,
the form, a job in and its events out, what a body may be, the command line.

The same server on a real socket, attacked from a browser and by hand, is in tests/studio/."""

import asyncio
import json

import httpx
import pytest

from sdxl_worker.request import bodies
from sdxl_worker.studio import app as studio
from sdxl_worker.studio.guard import Guard
from sdxl_worker.studio.jobs import Limits

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
    assert bodies.depth("text") == 0
    assert bodies.depth({"a": [1, {"b": []}]}) == 4
    assert bodies.depth([[]] * 3) == 2
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert bodies.depth(deep) == 33  # stops counting one past the limit


def test_the_command_line_defaults_to_loopback_on_port_8080():
    args = studio.parse(["--studio"])
    assert (args.host, args.port, args.login_file, args.endpoint) == ("127.0.0.1", 8080, None, None)
    args = studio.parse(["--studio", "--host", "0.0.0.0", "--port", "9000", "--login-file", "f", "--endpoint", "e1"])
    assert (args.host, args.port, args.login_file, args.endpoint) == ("0.0.0.0", 9000, "f", "e1")


def test_serving_prints_the_address_and_warns_when_open_to_the_network(monkeypatch, capsys):
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append((app, options)))
    studio.serve("app", "127.0.0.1", 8080, "this worker")
    out, err = capsys.readouterr()
    assert out == "studio: http://127.0.0.1:8080/  (jobs run on this worker; Ctrl+C stops)\n" and err == ""
    studio.serve("app", "::", 9000, "endpoint e1")
    out, err = capsys.readouterr()
    assert out.startswith("studio: http://[::]:9000/")
    assert err == ("studio: WARNING: bound to ::, so it is reachable from the network: anyone who reaches port 9000 "
                   "and knows the login can run jobs here.\n")
    assert ran == [("app", {"host": "127.0.0.1", "port": 8080, "log_level": "warning"}),
                   ("app", {"host": "::", "port": 9000, "log_level": "warning"})]


HELP = """usage: handler.py --studio [-h] [--studio] [--port PORT] [--host HOST]
                           [--login-file PATH] [--endpoint ENDPOINT_ID]

The studio page.

options:
  -h, --help            show this help message and exit
  --studio              serve the studio page
  --port PORT           port (default 8080)
  --host HOST           address to bind (default 127.0.0.1; any other needs a
                        login: STUDIO_LOGIN or --login-file)
  --login-file PATH     a file holding the studio's login (instead of
                        STUDIO_LOGIN)
  --endpoint ENDPOINT_ID
                        run jobs on this RunPod endpoint (RUNPOD_API_KEY in
                        the environment) instead of here
"""


def test_the_command_line_explains_itself(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        studio.parse(["--studio", "--help"])
    assert capsys.readouterr().out == HELP


def test_by_default_the_app_answers_loopback_names_only_and_says_jobs_run_here(seen):
    app = studio.create_app(_source(seen))
    key = app.state.guard.key
    headers = {"origin": "http://localhost:8080", "x-studio-key": key}
    form, foreign, page = _talk(app, lambda c: c.get("/api/form", headers={**headers, "host": "localhost:8080"}),
                                lambda c: c.get("/", headers={"host": "studio.lan"}),
                                lambda c: c.get("/", headers={"host": "[::1]:8080"}))
    assert form.status_code == 200 and form.json()["runs_on"] == "this worker"
    assert foreign.status_code == 421 and page.status_code == 200
    assert app.state.guard.hosts == {"127.0.0.1", "localhost", "::1"}


def test_the_page_says_whether_a_login_is_asked_for():
    with_login = studio.create_app(_source([]), guard=Guard(HOSTS, key=KEY, login="a login of 12+"))
    (page,) = _talk(with_login, lambda c: c.get("/"))
    (plain,) = _talk(studio.create_app(_source([]), guard=Guard(HOSTS, key=KEY)), lambda c: c.get("/"))
    assert "{{login}}" not in page.text and 'content="required"' in page.text.replace("'", '"')
    assert 'content="none"' in plain.text.replace("'", '"')


def test_the_pages_files_are_served_and_no_api_docs_are(app):
    script, docs, schema, redoc = _talk(app, lambda c: c.get("/static/studio.js"), lambda c: c.get("/docs"),
                                        lambda c: c.get("/openapi.json"), lambda c: c.get("/redoc"))
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["x-frame-options"] == "DENY"
    assert (docs.status_code, schema.status_code, redoc.status_code) == (404, 404, 404)


def test_the_caps_given_hold_and_step_reports_reach_the_page():
    reports = {}

    def factory(progress):
        async def run(job):
            progress(job, {"step": 1, "total_steps": 4, "stage": "base"})
            await asyncio.sleep(0.05)
            yield {"images": [], "seed": 1}
        reports["progress"] = progress
        return run

    app = studio.create_app(factory, wants_progress=True, guard=Guard(HOSTS, key=KEY),
                            limits=Limits(jobs=1))
    body = json.dumps({"input": {"prompt": "a"}})

    async def two_at_once(client):
        return [await client.post("/api/jobs", headers=OWN_PAGE, content=body) for _ in range(2)]

    (answers,) = _talk(app, two_at_once)
    assert [answer.status_code for answer in answers] == [202, 429]
    assert reports["progress"] == app.state.jobs.progress
    job_id = answers[0].json()["id"]
    (stream,) = _talk(app, lambda c: c.get(f"/api/jobs/{job_id}/events", headers=OWN_PAGE))
    assert "event: progress" in stream.text or "event: result" in stream.text


def test_api_calls_need_the_key_even_for_reading_and_a_get_without_origin_is_the_pages_own(app):
    no_key, page_get = _talk(app, lambda c: c.get("/api/form", headers={"origin": "http://127.0.0.1:8080"}),
                             lambda c: c.get("/api/form", headers={"x-studio-key": KEY}))
    assert no_key.status_code == 403
    assert no_key.json() == {"detail": "This request lacks the studio's key: reload the studio's page and try again."}
    assert page_get.status_code == 200


def test_wrong_logins_are_counted_per_address():
    app = studio.create_app(_source([]), guard=Guard(HOSTS, key=KEY, login="correct horse battery"))

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 5000))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")

    async def scenario():
        async with client("10.0.0.1") as guesser, client("10.0.0.2") as user:
            for _ in range(10):
                await guesser.get("/api/form", headers={**OWN_PAGE, "x-studio-login": "guess"})
            locked = await guesser.get("/api/form", headers={**OWN_PAGE, "x-studio-login": "correct horse battery"})
            other = await user.get("/api/form", headers={**OWN_PAGE, "x-studio-login": "correct horse battery"})
            return locked.status_code, other.status_code

    assert asyncio.run(scenario()) == (429, 200)


def test_the_guard_lets_lifespan_messages_through():
    app = studio.create_app(_source([]), guard=Guard(HOSTS, key=KEY))
    sent = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
