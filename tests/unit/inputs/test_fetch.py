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
from sdxl_worker.testing.servers import Server, body, drip, endless, redirect, self_signed, stall

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


NOT_BASE64 = "'image' is neither an http(s) URL nor valid base64 data."


def private_sentence(address: str) -> str:
    return (f"'image' points at a local or private address ({address}), which this worker refuses; "
            "ALLOW_PRIVATE_URLS=1 allows it for local testing.")


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
    scheme = source.strip().split(":")[0].lower()
    assert refused(source) == (f"'image' uses the URL scheme '{scheme}:', which is refused; give an http(s) URL, "
                               "a data URL or base64 data.")


def test_a_local_path_is_read_as_base64_never_as_a_file():
    assert refused("/etc/passwd") == NOT_BASE64
    assert refused("../../etc/hostname") == NOT_BASE64


# --- addresses ---


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.1.2.3", "[::1]", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]",
    "[fe80::1]", "[fc00::1]", "[::]", "2130706433", "0x7f000001", "0177.0.0.1",
])
def test_private_and_special_addresses_by_ip_are_refused(host):
    message = refused(f"http://{host}/latest/meta-data/")
    assert message.startswith("'image' points at a local or private address (")
    assert message.endswith("), which this worker refuses; ALLOW_PRIVATE_URLS=1 allows it for local testing.")


def test_a_loopback_server_gets_no_request_by_ip_or_by_name(site):
    for host in ("127.0.0.1", "localhost", "LOCALHOST", "[::ffff:7f00:1]"):
        assert "'image' points at a local or private address (" in refused(f"http://{host}:{site.port}/cat.png")
        assert "'image' points at a local or private address (" in refused(f"https://{host}:{site.port}/cat.png")
    assert site.requests == []


def test_private_urls_are_fetched_only_when_opted_in(site, private_ok):
    assert fetch(site.url("/cat.png"), "image") == PNG
    assert fetch(f"http://localhost:{site.port}/cat.png", "image") == PNG


def test_credentials_in_a_url_are_refused(site, private_ok):
    for userinfo in ("user:secret@", "user@", ":secret@"):
        assert refused(f"http://{userinfo}127.0.0.1:{site.port}/cat.png") == \
            "'image' has a user name or password in its URL, which is refused."
    assert site.requests == []


def test_a_name_that_does_not_resolve_is_an_input_error():
    assert refused("http://no-such-host.invalid/cat.png") == \
        "'image' names a host that does not resolve ('no-such-host.invalid')."


# --- redirects and DNS ---


def test_a_redirect_to_an_internal_address_is_refused(loopback_is_public):
    with Server({"/secret": body(b"internal")}, host="127.0.0.2") as internal:
        routes = {"/go": redirect(internal.url("/secret")), "/meta": redirect("http://169.254.169.254/latest/"),
                  "/file": redirect("file:///etc/passwd")}
        with Server(routes) as public:
            assert refused(public.url("/go")) == private_sentence("127.0.0.2")
            assert refused(public.url("/meta")) == private_sentence("169.254.169.254")
            assert refused(public.url("/file")) == "'image' redirects to a URL that is not http(s), which is refused."
        assert internal.requests == []


def test_redirects_are_followed_a_bounded_number_of_times(loopback_is_public):
    routes = {"/loop": redirect("/loop"), "/moved": redirect("/cat.png", 301), "/cat.png": body(PNG)}
    with Server(routes) as public:
        assert fetch(public.url("/moved"), "image") == PNG
        assert refused(public.url("/loop")) == "'image' redirects more than 5 times."
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
        silent = "'image': the server sent nothing for 0.5 s (FETCH_READ_TIMEOUT)."
        assert refused(server.url("/silent")) == silent
        assert refused(server.url("/headers-only")) == silent


def test_a_server_that_drips_fails_at_the_total_deadline(worker_env, private_ok):
    worker_env["FETCH_READ_TIMEOUT"] = "5"
    worker_env["FETCH_TOTAL_TIMEOUT"] = "1"
    with Server({}) as server:
        server.routes["/drip"] = drip(server.release)
        server.routes["/drip-headers"] = drip(server.release, in_headers=True)
        too_slow = "'image' took longer than 1 s to download (FETCH_TOTAL_TIMEOUT)."
        assert refused(server.url("/drip")) == too_slow
        assert refused(server.url("/drip-headers")) == too_slow


def test_an_oversized_download_is_refused_by_its_declared_length(private_ok):
    with Server({"/big": body(b"\0" * (2 * 1024 * 1024))}) as server:
        assert refused(server.url("/big"), max_bytes=1_000_000) == "'image' is larger than the 1.0 MB limit."


def test_an_endless_download_is_abandoned_at_the_limit(private_ok):
    sent = []
    with Server({"/endless": endless(sent=sent)}) as server:
        assert refused(server.url("/endless"), max_bytes=1_000_000) == "'image' is larger than the 1.0 MB limit."


def test_the_size_limit_comes_from_the_environment(worker_env, private_ok, site):
    worker_env["FETCH_MAX_BYTES"] = "10"
    assert refused(site.url("/cat.png")) == "'image' is larger than the 10 bytes limit."
    assert refused(base64.b64encode(PNG).decode()) == "'image' is larger than the 10 bytes limit."


def test_https_to_a_server_without_tls_is_an_input_error(private_ok, site):
    assert refused(f"https://127.0.0.1:{site.port}/cat.png") == \
        "'image' could not be downloaded: TLS failed (WRONG_VERSION_NUMBER)."  # OpenSSL's reason, short


def test_an_error_status_is_an_input_error(private_ok, site):
    assert refused(site.url("/missing.png")) == "'image' could not be downloaded: the server answered 404."
    # A path that is not ASCII is %-encoded.
    assert refused(site.url("/çà et là.png")) == "'image' could not be downloaded: the server answered 404."
    assert site.requests[-1][0] == "/%C3%A7%C3%A0%20et%20l%C3%A0.png"


def test_a_host_name_that_is_not_valid_is_an_input_error():
    assert refused("http://" + "a" * 70 + ".example/cat.png") == \
        "'image' has a host name that is not valid (a text of 78 characters)."
    assert refused("http://[::1/cat.png") == "'image' is not a valid URL."
    assert refused("http:///cat.png") == "'image' is a URL without a host."


# --- base64 and data URLs ---


def test_data_urls_and_bare_base64_are_decoded():
    encoded = base64.b64encode(PNG).decode()
    assert fetch(f"data:image/png;base64,{encoded}", "image") == PNG
    assert fetch(encoded, "image") == PNG
    assert fetch(encoded[:20] + "\n" + encoded[20:], "image") == PNG  # wrapped lines are fine


@pytest.mark.parametrize("source", ["!!!not base64!!!", "aGVsbG8", "data:image/png;base64,@@@@", "====", "é" * 8])
def test_garbage_base64_is_an_input_error(source):
    assert refused(source) == NOT_BASE64


def test_a_data_url_without_base64_is_refused():
    assert refused("data:image/png,%89PNG") == "'image' is a data URL without base64 data."
    encoded = base64.b64encode(PNG).decode()
    assert refused(f"data:image/png;base64,{encoded},{encoded}") == NOT_BASE64  # the data is all after the first comma


# --- what is sent, and the edges of each limit ---


def _short_body(declared: int, sent: bytes):
    """A responder that declares ``declared`` bytes, sends ``sent`` and closes."""
    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(sent)
    return respond


def _status(code: int, **headers: str):
    def respond(handler):
        handler.send_response(code)
        for name, value in {"Content-Length": "0", **headers}.items():
            handler.send_header(name, value)
        handler.end_headers()
    return respond


def test_a_download_says_who_it_is_and_asks_for_the_bytes_as_they_are(private_ok, site):
    fetch(site.url("/cat.png"), "image")
    headers = {name.lower(): value for name, value in site.calls[-1][2].items()}
    assert (headers["user-agent"], headers["accept"], headers["accept-encoding"]) == ("sdxl-worker", "*/*", "identity")


def test_a_path_less_url_asks_for_the_root_and_a_query_is_kept(private_ok):
    with Server({"/": body(PNG), "/cat.png": body(PNG)}) as server:
        assert fetch(f"http://127.0.0.1:{server.port}", "image") == PNG
        assert fetch(server.url("/cat.png?size=1&x=y"), "image") == PNG
        assert [path for path, _ in server.requests] == ["/", "/cat.png?size=1&x=y"]


def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_refused(private_ok):
    data = bytes(range(256)) * 1000  # several network reads, joined in order
    with Server({"/exact": body(data), "/unsized": body(data, length=False)}) as server:
        assert fetch(server.url("/exact"), "image", max_bytes=len(data)) == data
        assert fetch(server.url("/unsized"), "image", max_bytes=len(data)) == data
        assert refused(server.url("/exact"), max_bytes=len(data) - 1) == "'image' is larger than the 255,999 bytes limit."
        assert refused(server.url("/unsized"), max_bytes=len(data) - 1) == \
            "'image' is larger than the 255,999 bytes limit."


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(private_ok):
    with Server({"/claims-big": _short_body(10_000_000, b"tiny")}) as server:
        assert refused(server.url("/claims-big"), max_bytes=1_000_000) == "'image' is larger than the 1.0 MB limit."


def test_a_body_that_stops_short_of_its_declared_length_is_an_error(private_ok):
    with Server({"/cut": _short_body(1000, b"x" * 10)}) as server:
        assert refused(server.url("/cut")) == \
            "'image' could not be downloaded: the server stopped after 10 of 1,000 bytes."


@pytest.mark.parametrize("code, sentence", [
    (400, "'image' could not be downloaded: the server answered 400."),
    (503, "'image' could not be downloaded: the server answered 503."),
    (204, "'image' could not be downloaded: unexpected answer 204."),
    (302, "'image': the server answered 302 without saying where to go."),
])
def test_each_kind_of_answer_but_200_is_named(private_ok, code, sentence):
    with Server({"/x": _status(code)}) as server:
        assert refused(server.url("/x")) == sentence


def test_a_redirect_to_https_is_followed(private_ok, site):
    with Server({"/go": redirect(f"https://127.0.0.1:{site.port}/cat.png")}) as server:
        message = refused(server.url("/go"))  # followed: the plain server cannot speak TLS
    assert message.startswith("'image' could not be downloaded: TLS failed (")


def test_a_server_that_refuses_the_connection_is_named(private_ok):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert refused(f"http://127.0.0.1:{port}/cat.png") == "'image' could not be downloaded (connection refused)."


@pytest.fixture
def dns(monkeypatch):
    """Names resolve as the test says: host -> addresses; every lookup is recorded as (host, port)."""
    answers: dict = {}
    asked: list = []
    real = socket.getaddrinfo

    def resolve(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append((host, port))
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return answers, asked


def test_the_default_ports_and_the_idna_name_are_what_is_looked_up(dns):
    answers, asked = dns
    answers.update({"example.com": ["10.0.0.1"], "xn--bcher-kva.example": ["10.0.0.2"]})
    refused("http://example.com/a.png")
    refused("https://example.com/a.png")
    refused("http://bücher.example/a.png")
    assert asked == [("example.com", 80), ("example.com", 443), ("xn--bcher-kva.example", 80)]


def test_a_name_with_one_private_address_among_public_ones_is_refused(dns):
    answers, _ = dns
    answers["mixed.test"] = ["93.184.216.34", "192.168.0.10"]
    assert refused("http://mixed.test/a.png") == private_sentence("192.168.0.10")
    answers["none.test"] = []
    assert refused("http://none.test/a.png") == "'image' names a host that does not resolve ('none.test')."


def test_when_the_first_address_refuses_the_next_one_is_tried(dns, private_ok):
    answers, _ = dns
    with Server({"/cat.png": body(PNG)}) as server:
        answers["two.test"] = ["127.0.0.3", "127.0.0.1"]  # nothing listens on 127.0.0.3
        assert fetch(f"http://two.test:{server.port}/cat.png", "image") == PNG
        answers["dead.test"] = ["127.0.0.3", "127.0.0.4"]
        assert refused(f"http://dead.test:{server.port}/cat.png") == \
            "'image' could not be downloaded (connection refused)."


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True),
    ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False), ("2002:a00:1::", False),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, whose client is 10.0.0.1
    ("100.64.0.1", False), ("169.254.169.254", False), ("224.0.0.1", False), ("240.0.0.1", False),
    ("0.0.0.0", False), ("ff02::1", False), ("fe80::1", False), ("fc00::1", False),
])
def test_only_addresses_on_the_public_internet_are_public(address, public):
    assert fetch_module.is_public_address(ipaddress.ip_address(address)) is public


def test_bare_base64_at_the_limit_is_decoded_and_over_it_refused_before_decoding():
    nine = base64.b64encode(b"123456789").decode()  # 12 characters
    assert fetch(nine, "image", max_bytes=9) == b"123456789"
    assert refused(nine, max_bytes=8) == "'image' is larger than the 8 bytes limit."


@pytest.mark.parametrize("source", ["", "   ", "data:image/png;base64,"])
def test_empty_data_is_named(source):
    assert refused(source) == "'image' is empty."


def test_a_scheme_is_only_read_in_the_first_40_characters():
    assert refused("a" * 40 + ":x") == NOT_BASE64
    assert refused("a" * 39 + ":x") == (f"'image' uses the URL scheme '{'a' * 39}:', which is refused; give an http(s) "
                                        "URL, a data URL or base64 data.")


def test_reasons_are_short_words():
    import http.client

    assert fetch_module._short("x" * 60) == "x" * 60
    assert fetch_module._short("x" * 61) == "x" * 60 + "..."
    assert fetch_module._reason(ConnectionRefusedError()) == "connection refused"
    assert fetch_module._reason(socket.timeout()) == "connection timed out"
    assert fetch_module._reason(OSError(5, "Input/output error")) == "Input/output error"
    assert fetch_module._reason(http.client.RemoteDisconnected("gone")) == "RemoteDisconnected"
    assert fetch_module._reason(http.client.IncompleteRead(b"")) == "IncompleteRead"


# --- a job's storage endpoint (s3Config.endpointUrl) ---


def endpoint(url: str, **env) -> tuple:
    return Fetcher(config.fetch(env)).endpoint_addresses(url)


def endpoint_refused(url: str, **env) -> str:
    with pytest.raises(InputError) as caught:
        endpoint(url, **env)
    return str(caught.value)


NOT_PLAIN = ("'endpointUrl' must be a plain http(s) URL: a host name or IP address, an optional port and path, and "
             "no user name, backslash, %-escape, space or control character.")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8302\\@example.com", "http://user@example.com", "http://user:pw@example.com/",
    "http://exa%6dple.com", "http://example.com /x", "http://example.com\t", "ftp://example.com", "example.com",
    "http://example.com?x=1", "http://example.com#frag", "http://[::1", "http://example.com:", "HTTP//x.com",
    "http://example.com:123456",
])
def test_an_endpoint_url_that_two_parsers_could_read_differently_is_refused(url):
    assert endpoint_refused(url) == NOT_PLAIN


def test_an_endpoint_port_outside_the_range_is_not_valid():
    assert endpoint_refused("http://example.com:0") == "'endpointUrl' is not a valid URL."
    assert endpoint_refused("http://example.com:65536") == "'endpointUrl' is not a valid URL."


def test_an_endpoint_on_a_private_address_is_refused_unless_allowed():
    assert endpoint_refused("http://127.0.0.1:9000") == (
        "'endpointUrl' points at a local or private address (127.0.0.1), which this worker refuses; "
        "ALLOW_PRIVATE_URLS=1 allows it for local testing.")
    assert endpoint_refused("https://[::1]/bucket").startswith("'endpointUrl' points at a local or private address (::1)")
    assert endpoint("http://127.0.0.1:9000", ALLOW_PRIVATE_URLS="1") == ("127.0.0.1",)
    assert endpoint("HTTP://LOCALHOST:9000/path", ALLOW_PRIVATE_URLS="1")[0] in ("127.0.0.1", "::1")


def test_an_endpoints_addresses_are_looked_up_on_its_port_or_the_schemes(dns):
    answers, asked = dns
    answers.update({"s3.example.com": ["93.184.216.34", "93.184.216.35", "93.184.216.34"]})
    assert endpoint("https://s3.example.com") == ("93.184.216.34", "93.184.216.35")
    assert endpoint("http://s3.example.com/bucket/") == ("93.184.216.34", "93.184.216.35")
    assert endpoint("http://s3.example.com:9000") == ("93.184.216.34", "93.184.216.35")
    answers["xs3.example.com"] = ["93.184.216.36"]
    assert endpoint("http://XS3.Example.COM:1") == ("93.184.216.36",)  # names are case-blind; port 1 is a port
    assert asked == [("s3.example.com", 443), ("s3.example.com", 80), ("s3.example.com", 9000),
                     ("xs3.example.com", 1)]


def test_an_endpoint_where_the_standard_library_and_urllib3_disagree_is_not_valid(monkeypatch):
    import urllib3.util

    real = urllib3.util.parse_url
    monkeypatch.setattr(urllib3.util, "parse_url", lambda url: real(url.replace("example.com", "example.org")))
    assert endpoint_refused("http://example.com") == "'endpointUrl' is not a valid URL."
    monkeypatch.setattr(urllib3.util, "parse_url", lambda url: real(url.replace(":80", ":81")))
    assert endpoint_refused("http://example.com:80") == "'endpointUrl' is not a valid URL."


# --- HTTPS ---


@pytest.fixture
def tls(monkeypatch):
    """A certificate for 127.0.0.1 that the fetcher trusts (and nothing else does): the server's context."""
    server, client = self_signed("127.0.0.1")
    monkeypatch.setattr(fetch_module.ssl, "create_default_context", lambda: client)
    return server


def test_https_is_fetched_with_the_certificate_checked_for_the_urls_host(tls, private_ok):
    with Server({"/cat.png": body(PNG)}, tls=tls) as server:
        assert server.url("/cat.png").startswith("https://")
        assert fetch(server.url("/cat.png"), "image") == PNG
        assert refused(f"https://localhost:{server.port}/cat.png") == \
            "'image' could not be downloaded: TLS failed (CERTIFICATE_VERIFY_FAILED)."  # the name is not on it


def test_an_https_server_that_says_nothing_fails_within_the_read_timeout(tls, worker_env, private_ok):
    worker_env["FETCH_READ_TIMEOUT"] = "0.5"
    with Server({}, tls=tls) as server:
        server.routes["/silent"] = stall(server.release, after_headers=True)
        assert refused(server.url("/silent")) == "'image': the server sent nothing for 0.5 s (FETCH_READ_TIMEOUT)."


def test_an_https_server_that_drips_fails_at_the_total_deadline(tls, worker_env, private_ok):
    worker_env["FETCH_READ_TIMEOUT"] = "5"
    worker_env["FETCH_TOTAL_TIMEOUT"] = "1"
    with Server({}, tls=tls) as server:
        server.routes["/drip"] = drip(server.release)
        server.routes["/drip-headers"] = drip(server.release, in_headers=True)
        assert refused(server.url("/drip")) == "'image' took longer than 1 s to download (FETCH_TOTAL_TIMEOUT)."
        assert refused(server.url("/drip-headers")) == \
            "'image' took longer than 1 s to download (FETCH_TOTAL_TIMEOUT)."
