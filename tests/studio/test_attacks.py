"""The studio attacked as a stranger would (issue 28): other sites' requests, foreign Host names,
guessed job ids, floods, deep JSON. Each is sent over real HTTP (httpx) to the studio on uvicorn,
as a browser would send it; none may start, read or cancel a job."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers.browser import served, studio_headers

ATTACKER = "http://attacker.example"
JOB = json.dumps({"input": {"prompt": "a stranger's job", "width": 256, "height": 256, "num_inference_steps": 2}})
# What a page on another site can make a browser send without the studio's leave: no custom header
# (so no key), its own Origin, Sec-Fetch-Site cross-site, and only the "simple" content types.
CROSS_SITE = {"Origin": ATTACKER, "Sec-Fetch-Site": "cross-site"}


def open_jobs(app) -> int:
    return len(app.state.jobs.jobs)


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", JOB),  # fetch(..., {mode: "no-cors"}) or <form enctype="text/plain">
    ("application/x-www-form-urlencoded", "input=%7B%7D"),  # a plain <form> post
    ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="input"\r\n\r\n{}\r\n--x--\r\n'),
    (None, JOB),  # a Blob without a type
])
def test_another_site_cannot_start_a_job_with_a_simple_request(studio_app, content_type, body):
    url, app = studio_app
    before = open_jobs(app)
    headers = dict(CROSS_SITE, **({"Content-Type": content_type} if content_type else {}))
    answer = httpx.post(url + "/api/jobs", content=body, headers=headers)
    assert answer.status_code == 403
    assert answer.json()["detail"] == "This studio takes requests only from its own page, not from another site."
    assert open_jobs(app) == before


def test_a_job_with_a_foreign_origin_is_refused_even_with_the_key(studio_app):
    url, app = studio_app
    before = open_jobs(app)
    headers = studio_headers(url, Origin=ATTACKER)
    answer = httpx.post(url + "/api/jobs", content=JOB, headers=dict(headers, **{"Content-Type": "application/json"}))
    assert answer.status_code == 403 and open_jobs(app) == before


def test_a_post_without_origin_is_refused(studio_app):
    url, app = studio_app
    before = open_jobs(app)
    headers = studio_headers(url)
    del headers["Origin"]
    answer = httpx.post(url + "/api/jobs", content=JOB, headers=dict(headers, **{"Content-Type": "application/json"}))
    assert answer.status_code == 403 and open_jobs(app) == before


def test_the_page_s_own_request_needs_its_key_and_a_json_body(studio_app):
    url, app = studio_app
    before = open_jobs(app)
    no_key = httpx.post(url + "/api/jobs", content=JOB, headers={"Origin": url, "Content-Type": "application/json"})
    assert no_key.status_code == 403 and "studio's key" in no_key.json()["detail"]
    wrong_key = httpx.post(url + "/api/jobs", content=JOB,
                           headers={"Origin": url, "Content-Type": "application/json", "X-Studio-Key": "guess"})
    assert wrong_key.status_code == 403
    as_text = httpx.post(url + "/api/jobs", content=JOB, headers=dict(studio_headers(url), **{"Content-Type": "text/plain"}))
    assert as_text.status_code == 415 and "application/json" in as_text.json()["detail"]
    assert open_jobs(app) == before


def test_another_site_cannot_cancel_or_read_a_job(studio_app):
    url, app = studio_app
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    job = json.dumps({"input": {"prompt": "mine", "width": 256, "height": 256, "num_inference_steps": 2}})
    job_id = httpx.post(url + "/api/jobs", content=job, headers=headers).json()["id"]
    cancel = httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=CROSS_SITE)
    assert cancel.status_code == 403
    read = httpx.get(f"{url}/api/jobs/{job_id}/events", headers={"Sec-Fetch-Site": "cross-site"})
    assert read.status_code == 403 and "data:" not in read.text
    with httpx.stream("GET", f"{url}/api/jobs/{job_id}/events", headers=studio_headers(url), timeout=60) as events:
        text = "".join(events.iter_text())
    assert "event: result" in text  # the owner's job ran to its end: the stranger's cancel did nothing


@pytest.mark.parametrize("path", ["/", "/api/form", "/static/studio.js", "/api/jobs/x/events"])
def test_a_foreign_host_name_is_not_served_dns_rebinding(studio_app, path):
    url, _ = studio_app
    port = url.rsplit(":", 1)[1]
    # A rebinding page's requests reach 127.0.0.1 with its own name in Host, and carry no key.
    answer = httpx.get(url + path, headers={"Host": f"rebind.attacker.example:{port}"})
    assert answer.status_code == 421
    assert "STUDIO_HOSTS" in answer.json()["detail"] and "studio-key" not in answer.text
    for own in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(url + "/", headers={"Host": own}).status_code == 200


def test_job_ids_cannot_be_guessed(studio_app):
    url, app = studio_app
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    ids = [httpx.post(url + "/api/jobs", content=JOB, headers=headers).json()["id"] for _ in range(2)]
    for job_id in ids:
        httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=studio_headers(url))
    assert ids[0] != ids[1] and all(len(job_id) >= 20 for job_id in ids)  # 128 random bits each
    assert not any(job_id.startswith("studio-") or job_id.isdigit() for job_id in ids)
    guessed = httpx.get(url + "/api/jobs/studio-1/events", headers=studio_headers(url))
    assert guessed.status_code == 404


def test_every_answer_forbids_framing_sniffing_and_referrers(studio_app):
    url, _ = studio_app
    answers = [httpx.get(url + "/"), httpx.get(url + "/static/studio.js"), httpx.get(url + "/api/form"),
               httpx.get(url + "/api/form", headers=studio_headers(url))]
    assert [answer.status_code for answer in answers] == [200, 200, 403, 200]
    for answer in answers:
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"


def test_json_nested_100000_deep_is_a_400_with_one_sentence(studio_app, caplog):
    url, app = studio_app
    before = open_jobs(app)
    body = '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}"
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    answer = httpx.post(url + "/api/jobs", content=body, headers=headers)
    assert answer.status_code == 400 and answer.json()["detail"].count(". ") == 0
    thousand = '{"input": ' + "[" * 1000 + "]" * 1000 + "}"
    answer = httpx.post(url + "/api/jobs", content=thousand, headers=headers)
    assert answer.status_code == 400 and "deep" in answer.json()["detail"]
    shallow_but_deep = '{"input": {"loras": ' + "[" * 40 + "]" * 40 + "}}"
    assert httpx.post(url + "/api/jobs", content=shallow_but_deep, headers=headers).status_code == 400
    assert open_jobs(app) == before
    assert "Traceback" not in caplog.text


def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_parsed(studio_app):
    """63 MB of "[]," would parse into about 20 million lists: over a gigabyte held by one job."""
    url, app = studio_app
    before = open_jobs(app)
    body = '{"input": {"prompt": "x", "junk": [' + "[]," * 3_000_000 + "[]]}}"
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    answer = httpx.post(url + "/api/jobs", content=body, headers=headers, timeout=60)
    assert answer.status_code == 400 and "values" in answer.json()["detail"]
    assert open_jobs(app) == before


@pytest.mark.parametrize("host", ["127.0.0.1:evil.example", "[::1]evil.example", "127.0.0.1:80:80", "evil@127.0.0.1"])
def test_a_host_header_with_a_name_after_its_loopback_part_is_refused(studio_app, host):
    url, _ = studio_app
    assert httpx.get(url + "/", headers={"Host": host}).status_code == 421


class Slow:
    """A source whose jobs last until cancelled: a queue that fills."""

    async def __call__(self, job):
        await asyncio.sleep(60)
        yield {"images": []}


@pytest.fixture
def small_studio():
    from sdxl_worker.studio.app import create_app
    from sdxl_worker.studio.jobs import Limits

    app = create_app(Slow(), limits=Limits(jobs=3, held_bytes=3_000_000, streams=2))
    with served(app) as url:
        yield url, app


def test_a_flood_of_jobs_stops_at_the_cap_with_a_429(small_studio):
    url, app = small_studio
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    answers = [httpx.post(url + "/api/jobs", content=JOB, headers=headers) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [202, 202, 202, 429, 429]
    assert "3 jobs queued or running" in answers[3].json()["detail"]
    assert len(app.state.jobs.open()) == 3
    httpx.post(f"{url}/api/jobs/{answers[0].json()['id']}/cancel", headers=studio_headers(url))
    time.sleep(0.2)
    assert httpx.post(url + "/api/jobs", content=JOB, headers=headers).status_code == 202  # room again


def test_queued_jobs_may_hold_only_so_many_bytes_of_images(small_studio):
    url, app = small_studio
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    big = json.dumps({"input": {"prompt": "x", "image": "A" * 1_400_000}})
    answers = [httpx.post(url + "/api/jobs", content=big, headers=headers) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [202, 202, 429]
    assert "MB of input images" in answers[2].json()["detail"]


def test_bodies_still_arriving_count_against_the_cap(small_studio):
    """Two bodies sent at once, each under the cap, but not both: the second is refused while it arrives."""
    url, app = small_studio
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    release = threading.Event()

    def slow_body(size: int, hold: bool):
        yield b'{"input": {"prompt": "x", "image": "'
        yield b"A" * size
        if hold:
            release.wait(10)  # the first body stays open, arriving
        yield b'"}}'

    def post():
        return httpx.post(url + "/api/jobs", content=slow_body(2_000_000, True), headers=headers, timeout=30)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post)
        give_up = time.monotonic() + 10
        while app.state.jobs.arriving < 2_000_000:
            assert time.monotonic() < give_up
            time.sleep(0.02)
        second = httpx.post(url + "/api/jobs", content=slow_body(2_000_000, False), headers=headers, timeout=30)
        release.set()
        assert second.status_code == 429 and "MB of input images" in second.json()["detail"]
        assert first.result().status_code == 202
    assert app.state.jobs.arriving == 0


def test_open_event_streams_stop_at_the_cap(small_studio):
    url, app = small_studio
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    job_id = httpx.post(url + "/api/jobs", content=JOB, headers=headers).json()["id"]
    with httpx.Client(timeout=10) as client:
        streams = [client.stream("GET", f"{url}/api/jobs/{job_id}/events", headers=studio_headers(url))
                   for _ in range(2)]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert [answer.status_code for answer in opened] == [200, 200]
            give_up = time.monotonic() + 5
            while app.state.jobs.streams < 2:
                assert time.monotonic() < give_up
                time.sleep(0.02)
            third = httpx.get(f"{url}/api/jobs/{job_id}/events", headers=studio_headers(url))
            assert third.status_code == 429 and "event streams open" in third.json()["detail"]
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


def test_cancelling_a_running_job_and_two_queued_ones_leaves_the_studio_ready(studio_app):
    """Issue 28's wedge, through the studio: the next job starts at once."""
    url, app = studio_app
    headers = dict(studio_headers(url), **{"Content-Type": "application/json"})
    long_job = json.dumps({"input": {"prompt": "long", "width": 768, "height": 768, "num_inference_steps": 200,
                                     "refine": "no_refiner", "preview_steps": 1}})
    ids = [httpx.post(url + "/api/jobs", content=long_job, headers=headers).json()["id"] for _ in range(3)]
    for job_id in ids:
        assert httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=studio_headers(url)).json() == {"cancelled": True}
    quick = json.dumps({"input": {"prompt": "next", "width": 256, "height": 256, "num_inference_steps": 2,
                                  "refine": "no_refiner"}})
    started = time.monotonic()
    for _ in range(2):
        job_id = httpx.post(url + "/api/jobs", content=quick, headers=headers).json()["id"]
        with httpx.stream("GET", f"{url}/api/jobs/{job_id}/events", headers=studio_headers(url), timeout=60) as events:
            text = "".join(events.iter_text())
        assert "event: result" in text
    assert time.monotonic() - started < 30


class Quick:
    """A source whose jobs end at once with a result."""

    async def __call__(self, job):
        yield {"images": ["data:image/png;base64,AAAA"], "seed": 1, "seeds": [1]}


class Answers:
    """ASGI wrapper recording each request's path and the status the studio answered."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        async def recording(message):
            if message["type"] == "http.response.start":
                self.seen.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, recording if scope["type"] == "http" else send)


def test_a_page_on_another_port_cannot_start_read_or_cancel_a_job_in_chromium(browser):
    from sdxl_worker.studio.app import create_app
    from sdxl_worker.testing.servers import Server, answer
    from tests.helpers.browser import wait

    app = create_app(Quick())
    recorded = Answers(app)
    with served(recorded) as studio:
        mine = httpx.post(studio + "/api/jobs", content=JOB,
                          headers=dict(studio_headers(studio), **{"Content-Type": "application/json"})).json()["id"]
        recorded.seen.clear()
        body = JOB.replace('"', "&quot;")
        attack = f"""<!doctype html><title>cute cats</title>
<iframe name="sink"></iframe>
<form id="text" method="POST" action="{studio}/api/jobs" enctype="text/plain" target="sink">
  <input name="{body[:-2]}" value="&quot;}}}}"></form>
<form id="form" method="POST" action="{studio}/api/jobs/{mine}/cancel" target="sink"></form>
<img id="peek" src="{studio}/api/jobs/{mine}/events">
<script>
  window.done = 0;
  const finished = () => {{ window.done += 1; }};
  fetch("{studio}/api/jobs", {{method: "POST", mode: "no-cors", body: {json.dumps(JOB)},
                               headers: {{"Content-Type": "text/plain"}}}}).then(finished, finished);
  fetch("{studio}/api/jobs/{mine}/events", {{mode: "no-cors"}}).then(finished, finished);
  document.getElementById("text").submit();
  setTimeout(() => {{ document.getElementById("form").submit(); finished(); }}, 300);
</script>"""
        page = attack.encode()
        with Server({"/cats": answer(200, page, Content_Type="text/html")}) as site:
            browser.get(site.url("/cats").replace("127.0.0.1", "localhost"))
            wait(browser, "window.done >= 3", 20)
            give_up = time.monotonic() + 10
            while len(recorded.seen) < 4 and time.monotonic() < give_up:
                time.sleep(0.05)
    assert sorted(recorded.seen) == [("GET", f"/api/jobs/{mine}/events", 403)] * 2 + [
        ("POST", "/api/jobs", 403)] * 2 + [("POST", f"/api/jobs/{mine}/cancel", 403)], recorded.seen
    assert list(app.state.jobs.jobs) == [mine]  # no job of the stranger's


def test_a_studio_open_to_the_network_starts_only_with_a_login(monkeypatch, capsys):
    import handler

    monkeypatch.delenv("STUDIO_LOGIN", raising=False)
    assert handler.studio(["--studio", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --host 0.0.0.0 opens the studio to the network: set a login of at least 12 characters in "
        "STUDIO_LOGIN (or --login-file PATH), or keep the default --host 127.0.0.1.")
    monkeypatch.setenv("STUDIO_LOGIN", "short")
    assert handler.studio(["--studio", "--host", "0.0.0.0"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err
    monkeypatch.setenv("STUDIO_LOGIN", "pässwörd mit umlauten")  # a browser cannot send it in a header
    assert handler.studio(["--studio", "--host", "0.0.0.0"]) == 2
    assert "printable ASCII" in capsys.readouterr().err


def test_the_network_warning_is_printed_when_bound_beyond_loopback(monkeypatch, capsys):
    import uvicorn

    from sdxl_worker.studio import app as studio_app

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    studio_app.serve(None, "0.0.0.0", 8080, "this machine")
    assert "reachable from the network" in capsys.readouterr().err
    studio_app.serve(None, "127.0.0.1", 8080, "this machine")
    assert capsys.readouterr().err == ""


def test_with_a_login_the_page_asks_for_it_and_the_api_refuses_without_it(browser):
    from selenium.webdriver.common.by import By

    from sdxl_worker.studio.app import create_app
    from sdxl_worker.studio.guard import Guard
    from tests.helpers.browser import wait

    login = "correct horse battery staple"
    app = create_app(Quick(), guard=Guard(hosts=frozenset({"127.0.0.1"}), login=login))
    with served(app) as url:
        headers = studio_headers(url)
        refused = httpx.get(url + "/api/form", headers=headers)
        assert refused.status_code == 401 and "login" in refused.json()["detail"]
        assert httpx.get(url + "/api/form", headers=dict(headers, **{"X-Studio-Login": "wrong guess 123"})).status_code == 401
        assert httpx.get(url + "/api/form", headers=dict(headers, **{"X-Studio-Login": login})).status_code == 200
        browser.get(url)
        wait(browser, "document.body.dataset.ready === 'true'")
        assert browser.find_element(By.ID, "login").is_displayed() and not browser.find_element(By.ID, "job").is_displayed()
        browser.find_element(By.ID, "in-login").send_keys("wrong guess 123")
        browser.find_element(By.ID, "log-in").click()
        wait(browser, "!document.getElementById('login-error').hidden")
        assert "login" in browser.find_element(By.ID, "login-error").text
        field = browser.find_element(By.ID, "in-login")
        field.clear()
        field.send_keys(login)
        browser.find_element(By.ID, "log-in").click()
        wait(browser, "document.getElementById('in-prompt') !== null && !document.getElementById('job').hidden")
        browser.find_element(By.ID, "in-prompt").send_keys("a fox")
        browser.find_element(By.ID, "generate").click()
        wait(browser, "document.querySelector('#results img') !== null")


def test_guessing_the_login_stops_after_ten_wrong_tries_a_minute():
    from sdxl_worker.studio.app import create_app
    from sdxl_worker.studio.guard import Guard

    login = "correct horse battery staple"
    app = create_app(Quick(), guard=Guard(hosts=frozenset({"127.0.0.1"}), login=login))
    with served(app) as url:
        headers = studio_headers(url)
        tries = [httpx.get(url + "/api/form", headers=dict(headers, **{"X-Studio-Login": f"guess number {n:03}"}))
                 for n in range(12)]
        assert [answer.status_code for answer in tries] == [401] * 10 + [429] * 2
        right = httpx.get(url + "/api/form", headers=dict(headers, **{"X-Studio-Login": login}))
        assert right.status_code == 429  # even the right one, from this address, for a minute
