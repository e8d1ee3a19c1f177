"""Who may use the studio (studio/guard.py), one rule at a time: its own host names, its own page,
its key, its login. The same attacks from a real browser and a real server are in
tests/studio/test_attacks.py."""

import pytest

from sdxl_worker.studio.guard import Guard, Refused, check_login, host_name, is_loopback, own_host_names

KEY = "k" * 43
HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@pytest.fixture
def clock(monkeypatch) -> list:
    """The guard's monotonic clock, at 0 until the test moves it (``clock[0] = ...``)."""
    now = [0.0]
    monkeypatch.setattr("sdxl_worker.studio.guard.time.monotonic", lambda: now[0])
    return now


def _call(guard: Guard, method="POST", client="10.0.0.9", **headers) -> None:
    sent = {"host": "127.0.0.1:8188", "origin": "http://127.0.0.1:8188", "x-studio-key": KEY, **headers}
    guard.check_api_call(method, {name: value for name, value in sent.items() if value is not None}, client)


def _refusal(call) -> tuple[int, str]:
    with pytest.raises(Refused) as refused:
        call()
    return refused.value.status, str(refused.value)


@pytest.mark.parametrize("header, name", [
    ("127.0.0.1:8188", "127.0.0.1"), ("LOCALHOST", "localhost"), ("[::1]:80", "::1"), ("studio.lan", "studio.lan"),
    ("127.0.0.1:evil.com", ""), ("evil.com@127.0.0.1", ""), ("127.0.0.1:8188:1", ""), ("a b", ""), ("[::1", ""),
    ("127.0.0.1:123456", ""),
])
def test_the_host_header_gives_a_name_only_when_it_is_plainly_one(header, name):
    assert host_name(header) == name


def test_loopback_is_localhost_and_loopback_addresses_only():
    assert [is_loopback(h) for h in ("localhost", "127.0.0.2", "[::1]", "::1")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "studio.lan", "localhost.evil.com")] == [False] * 4


def test_own_names_are_loopback_the_bound_address_and_the_listed_ones():
    assert own_host_names("192.168.1.5", ("Studio.LAN", "[fd00::1]")) == \
        {"127.0.0.1", "localhost", "::1", "192.168.1.5", "studio.lan", "fd00::1"}
    assert own_host_names("127.0.0.1") == HOSTS


def test_a_foreign_host_is_refused_with_421_and_the_fix():
    guard = Guard(HOSTS, key=KEY)
    assert _refusal(lambda: guard.check_host({"host": "rebound.evil.com:8188"})) == (
        421, "This studio answers only to its own address (127.0.0.1, ::1, localhost); to open it under "
             "another name, add that name to STUDIO_HOSTS.")
    assert _refusal(lambda: guard.check_host({}))[0] == 421
    guard.check_host({"host": "[::1]:8188"})


def test_the_studios_own_page_with_its_key_passes():
    guard = Guard(HOSTS, key=KEY)
    _call(guard)
    _call(guard, origin="HTTPS://127.0.0.1:8188", **{"sec-fetch-site": "same-origin"})
    _call(guard, method="GET", origin=None)  # a GET without Origin: the page's own event stream


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.com"}, {"origin": "null"}, {"origin": "http://127.0.0.1:9999"},
    {"origin": None}, {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
])
def test_a_call_from_another_page_is_refused_with_403(headers):
    assert _refusal(lambda: _call(Guard(HOSTS, key=KEY), **headers)) == \
        (403, "This studio takes requests only from its own page, not from another site.")


def test_a_get_from_another_site_is_refused_too():
    assert _refusal(lambda: _call(Guard(HOSTS, key=KEY), method="GET", origin=None,
                                  **{"sec-fetch-site": "cross-site"}))[0] == 403


@pytest.mark.parametrize("key", [None, "", KEY[:-1], KEY + "k"])
def test_a_call_without_the_key_is_refused_with_the_fix(key):
    assert _refusal(lambda: _call(Guard(HOSTS, key=KEY), **{"x-studio-key": key})) == \
        (403, "This request lacks the studio's key: reload the studio's page and try again.")


def test_each_start_makes_a_new_unguessable_key():
    first, second = Guard(HOSTS), Guard(HOSTS)
    assert first.key != second.key and len(first.key) >= 43
    assert KEY not in repr(Guard(HOSTS, key=KEY, login="a-login-of-12"))


def test_with_a_login_a_wrong_one_is_401_and_ten_a_minute_lock_the_address_out(clock):
    clock[0] = 1000.0
    guard = Guard(HOSTS, key=KEY, login="correct horse battery")
    _call(guard, **{"x-studio-login": "correct horse battery"})
    for _ in range(10):
        assert _refusal(lambda: _call(guard, **{"x-studio-login": "guess"})) == \
            (401, "This studio asks for its login (STUDIO_LOGIN): enter it on the page.")
    locked = (429, "Too many wrong logins from this address; wait a minute and try again.")
    assert _refusal(lambda: _call(guard, **{"x-studio-login": "correct horse battery"})) == locked
    _call(guard, client="10.0.0.10", **{"x-studio-login": "correct horse battery"})  # another address is not locked
    clock[0] += 59.9
    assert _refusal(lambda: _call(guard, **{"x-studio-login": "guess"})) == locked
    clock[0] += 0.2  # a minute after the first wrong tries
    _call(guard, **{"x-studio-login": "correct horse battery"})


def test_addresses_with_no_recent_wrong_login_are_forgotten_past_1024(clock):
    guard = Guard(HOSTS, key=KEY, login="correct horse battery")
    for number in range(1025):
        with pytest.raises(Refused):
            _call(guard, client=f"10.1.{number // 256}.{number % 256}", **{"x-studio-login": "guess"})
    clock[0] = 61.0
    with pytest.raises(Refused):
        _call(guard, client="10.9.9.9", **{"x-studio-login": "guess"})
    assert list(guard.failures) == ["10.9.9.9"]


@pytest.mark.parametrize("host, login, problem", [
    ("127.0.0.1", None, None),
    ("localhost", "twelve chars", None),
    ("0.0.0.0", "twelve chars", None),
    ("127.0.0.1", "eleven char", "The studio's login must be at least 12 characters long."),
    ("127.0.0.1", "twelve charsé", "The studio's login must be printable ASCII (a browser sends nothing else in a header)."),
    ("0.0.0.0", None, "--host 0.0.0.0 opens the studio to the network: set a login of at least 12 characters in "
                      "STUDIO_LOGIN (or --login-file PATH), or keep the default --host 127.0.0.1."),
])
def test_a_studio_open_to_the_network_needs_a_long_printable_login(host, login, problem):
    assert check_login(host, login) == problem


def test_bound_to_every_address_the_machines_own_names_and_addresses_are_its_own(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-7")
    monkeypatch.setattr(socket, "getfqdn", lambda: "gpu-7.lan")
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 0))] if host == "gpu-7" else [])
    assert own_host_names("0.0.0.0", ("BOX",)) == {*HOSTS, "gpu-7", "gpu-7.lan", "10.1.2.3", "box"}

    def unresolvable(host, port):
        raise OSError("no address")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    assert own_host_names("::") == {*HOSTS, "gpu-7", "gpu-7.lan"}


def test_the_origin_is_compared_case_blind_with_the_host():
    guard = Guard(HOSTS, key=KEY)
    _call(guard, host="LocalHost:8080", origin="http://localhost:8080")


def test_a_missing_login_header_is_a_wrong_login():
    guard = Guard(HOSTS, key=KEY, login="correct horse battery")
    assert _refusal(lambda: _call(guard)) == (401, "This studio asks for its login (STUDIO_LOGIN): enter it on the page.")


def test_wrong_logins_count_for_exactly_a_minute(clock):
    guard = Guard(HOSTS, key=KEY, login="correct horse battery")
    for _ in range(10):
        with pytest.raises(Refused):
            _call(guard, **{"x-studio-login": "guess"})
    clock[0] = 60.0
    _call(guard, **{"x-studio-login": "correct horse battery"})


def test_past_1024_addresses_only_those_quiet_for_a_minute_are_forgotten(clock):
    guard = Guard(HOSTS, key=KEY, login="correct horse battery")

    def wrong(client):
        with pytest.raises(Refused):
            _call(guard, client=client, **{"x-studio-login": "guess"})

    for number in range(1023):
        wrong(f"10.1.{number // 256}.{number % 256}")
    clock[0] = 30.0
    wrong("10.7.7.7")  # recent at the next sweep
    clock[0] = 60.0
    wrong("10.8.8.8")  # 1025 addresses now: not past 1024 when this one came
    assert len(guard.failures) == 1025
    wrong("10.9.9.9")  # past 1024: those quiet for a minute go, the recent ones stay
    assert sorted(guard.failures) == ["10.7.7.7", "10.8.8.8", "10.9.9.9"]


def test_a_login_with_a_delete_character_is_not_printable():
    assert check_login("127.0.0.1", "twelve chars\x7f") == \
        "The studio's login must be printable ASCII (a browser sends nothing else in a header)."
    assert check_login("127.0.0.1", "twelve chars~") is None
