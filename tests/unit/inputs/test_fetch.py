"""Hostile fetches, against real local HTTP servers: what must be refused is refused before any
request leaves, stalls and floods end in seconds, and only http(s), data URLs and base64 work.

The servers listen on loopback, which the worker refuses by default; tests opt in with
ALLOW_PRIVATE_URLS=1 only where they must reach them, and the redirect tests instead treat
127.0.0.1 alone as "the internet" so that 127.0.0.2 plays the internal service.
"""

import base64
import ipaddress
import socket
import sys

import pytest

from sdxl_worker import config
from sdxl_worker.errors import InputError
from sdxl_worker.inputs import fetch as fetch_module
from sdxl_worker.inputs.fetch import Fetcher
from sdxl_worker.testing.servers import Server, body, drip, endless, redirect, stall

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture(autouse=True)
def settings_of_this_test(worker_env, monkeypatch):
    """``fetch`` below fetches as a worker whose settings are this test's ``worker_env``."""
    monkeypatch.setattr(sys.modules[__name__], "WORKER_ENV", worker_env)


WORKER_ENV: dict = {}


def fetch(source: str, field: str, **kwargs) -> bytes:
    return Fetcher(config.fetch(WORKER_ENV)).fetch(source, field, **kwargs)


def refused(source: str, field: str = "image", **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        fetch(source, field, **kwargs)
    message = str(caught.value)
    assert f"'{field}'" in message and "\n" not in message
    return message


@pytest.fixture
def private_ok(worker_env):
    worker_env["ALLOW_PRIVATE_URLS"] = "1"


@pytest.fixture
def site():
    """A server with one image on it."""
    with Server({"/cat.png": body(PNG, "image/png")}) as server:
        yield server


@pytest.fixture
def loopback_is_public(monkeypatch):
    """127.0.0.1 stands for a public site; every other private address stays refused."""
    real = fetch_module.is_public_address
    monkeypatch.setattr(fetch_module, "is_public_address",
                        lambda address: address == ipaddress.ip_address("127.0.0.1") or real(address))


# --- schemes ---


@pytest.mark.parametrize("source", [
    "file:///etc/passwd", "FILE:///etc/passwd", "file:/etc/passwd", "  file:///etc/passwd",
    "ftp://example.com/cat.png", "gopher://127.0.0.1:70/_stats", "javascript:alert(1)",
    "dict://127.0.0.1:11211/stats", "ldap://127.0.0.1/", "jar:http://example.com/a.jar!/", "ws://example.com/",
    "netdoc:///etc/passwd", "s3://bucket/cat.png", "C:\\Windows\\win.ini",
])
def test_every_scheme_but_http_data_and_base64_is_refused(source):
    message = refused(source)
    assert "scheme" in message


def test_a_local_path_is_read_as_base64_never_as_a_file():
    assert "base64" in refused("/etc/passwd")
    assert "base64" in refused("../../etc/hostname")


# --- addresses ---


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.1.2.3", "[::1]", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]",
    "[fe80::1]", "[fc00::1]", "[::]", "2130706433", "0x7f000001", "0177.0.0.1",
])
def test_private_and_special_addresses_by_ip_are_refused(host):
    assert "private" in refused(f"http://{host}/latest/meta-data/")


def test_a_loopback_server_gets_no_request_by_ip_or_by_name(site):
    for host in ("127.0.0.1", "localhost", "LOCALHOST", "[::ffff:7f00:1]"):
        assert "private" in refused(f"http://{host}:{site.port}/cat.png")
        assert "private" in refused(f"https://{host}:{site.port}/cat.png")
    assert site.requests == []


def test_private_urls_are_fetched_only_when_opted_in(site, private_ok):
    assert fetch(site.url("/cat.png"), "image") == PNG
    assert fetch(f"http://localhost:{site.port}/cat.png", "image") == PNG


def test_credentials_in_a_url_are_refused(site, private_ok):
    assert "password" in refused(f"http://user:secret@127.0.0.1:{site.port}/cat.png")
    assert site.requests == []


def test_a_name_that_does_not_resolve_is_an_input_error():
    assert "resolve" in refused("http://no-such-host.invalid/cat.png")


# --- redirects and DNS ---


def test_a_redirect_to_an_internal_address_is_refused(loopback_is_public):
    with Server({"/secret": body(b"internal")}, host="127.0.0.2") as internal:
        routes = {"/go": redirect(internal.url("/secret")), "/meta": redirect("http://169.254.169.254/latest/"),
                  "/file": redirect("file:///etc/passwd")}
        with Server(routes) as public:
            assert "private" in refused(public.url("/go"))
            assert "private" in refused(public.url("/meta"))
            assert "not http(s)" in refused(public.url("/file"))
        assert internal.requests == []


def test_redirects_are_followed_a_bounded_number_of_times(loopback_is_public):
    routes = {"/loop": redirect("/loop"), "/moved": redirect("/cat.png", 301), "/cat.png": body(PNG)}
    with Server(routes) as public:
        assert fetch(public.url("/moved"), "image") == PNG
        assert "redirects more than" in refused(public.url("/loop"))
        assert len([path for path, _ in public.requests if path == "/loop"]) == 6  # the first request and five redirects


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch, loopback_is_public):
    """DNS rebinding: the name resolves to a public address for the check, then to an internal one."""
    real = socket.getaddrinfo
    answers = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        answers.append(host)
        address = "127.0.0.1" if len(answers) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with Server({"/cat.png": body(PNG)}) as public:
        # The internal service listens on the same port, so a second lookup would reach it.
        with Server({"/cat.png": body(b"internal")}, host="127.0.0.2", port=public.port) as internal:
            assert fetch(f"http://rebind.test:{public.port}/cat.png", "image") == PNG
        assert internal.requests == []
        assert public.requests == [("/cat.png", f"rebind.test:{public.port}")]  # the URL's host name kept


# --- timeouts and sizes ---


def test_a_server_that_never_answers_fails_within_the_read_timeout(worker_env, private_ok):
    worker_env["FETCH_READ_TIMEOUT"] = "0.5"
    with Server({}) as server:
        server.routes["/silent"] = stall(server.release)
        server.routes["/headers-only"] = stall(server.release, after_headers=True)
        assert "FETCH_READ_TIMEOUT" in refused(server.url("/silent"))
        assert "FETCH_READ_TIMEOUT" in refused(server.url("/headers-only"))


def test_a_server_that_drips_fails_at_the_total_deadline(worker_env, private_ok):
    worker_env["FETCH_READ_TIMEOUT"] = "5"
    worker_env["FETCH_TOTAL_TIMEOUT"] = "1"
    with Server({}) as server:
        server.routes["/drip"] = drip(server.release)
        server.routes["/drip-headers"] = drip(server.release, in_headers=True)
        assert "FETCH_TOTAL_TIMEOUT" in refused(server.url("/drip"))
        assert "FETCH_TOTAL_TIMEOUT" in refused(server.url("/drip-headers"))


def test_an_oversized_download_is_refused_by_its_declared_length(private_ok):
    with Server({"/big": body(b"\0" * (2 * 1024 * 1024))}) as server:
        assert "larger than the 1.0 MB limit" in refused(server.url("/big"), max_bytes=1_000_000)


def test_an_endless_download_is_abandoned_at_the_limit(private_ok):
    sent = []
    with Server({"/endless": endless(sent=sent)}) as server:
        assert "larger than the 1.0 MB limit" in refused(server.url("/endless"), max_bytes=1_000_000)


def test_the_size_limit_comes_from_the_environment(worker_env, private_ok, site):
    worker_env["FETCH_MAX_BYTES"] = "10"
    assert "larger than the 10 bytes limit" in refused(site.url("/cat.png"))
    assert "larger" in refused(base64.b64encode(PNG).decode())


def test_https_to_a_server_without_tls_is_an_input_error(private_ok, site):
    assert "TLS" in refused(f"https://127.0.0.1:{site.port}/cat.png")


def test_an_error_status_is_an_input_error(private_ok, site):
    assert "404" in refused(site.url("/missing.png"))
    assert "404" in refused(site.url("/çà et là.png"))  # a path that is not ASCII is %-encoded
    assert site.requests[-1][0] == "/%C3%A7%C3%A0%20et%20l%C3%A0.png"


def test_a_host_name_that_is_not_valid_is_an_input_error():
    assert "not valid" in refused("http://" + "a" * 70 + ".example/cat.png")


# --- base64 and data URLs ---


def test_data_urls_and_bare_base64_are_decoded():
    encoded = base64.b64encode(PNG).decode()
    assert fetch(f"data:image/png;base64,{encoded}", "image") == PNG
    assert fetch(encoded, "image") == PNG
    assert fetch(encoded[:20] + "\n" + encoded[20:], "image") == PNG  # wrapped lines are fine


@pytest.mark.parametrize("source", ["!!!not base64!!!", "aGVsbG8", "data:image/png;base64,@@@@", "====", "é" * 8])
def test_garbage_base64_is_an_input_error(source):
    assert "base64" in refused(source)


def test_a_data_url_without_base64_is_refused():
    assert "without base64" in refused("data:image/png,%89PNG")
