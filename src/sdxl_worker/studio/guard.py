"""Who may use the studio: its own page, on its own host names, with its key (and login, if set).

The threat model (docs/security.md, "The studio"): any web page the user visits can make the
browser send requests to the studio's port, and a page on a name that rebinds to 127.0.0.1 is
even same-origin with it. So every API call must show it comes from the studio's own page:

- the ``Host`` is one of the studio's own names (127.0.0.1, localhost, [::1], ``--host``, the
  machine's names when bound to every address, and STUDIO_HOSTS), else 421: a rebinding name is
  never served, not even the page;
- ``Origin`` (or, without one, ``Sec-Fetch-Site``) says same origin; a POST must carry
  ``Origin``, as browsers always send it on POST;
- the key made at start-up, which only the page served here holds, comes in ``X-Studio-Key``: a
  custom header, which a cross-site page cannot send without a CORS preflight the studio never
  grants, and a value it cannot read;
- with a login (required when bound beyond loopback), ``X-Studio-Login`` matches it.

Each refusal is one sentence for the page.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import socket
import time
from dataclasses import dataclass, field

KEY_HEADER = "x-studio-key"
LOGIN_HEADER = "x-studio-login"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
MIN_LOGIN_CHARS = 12
MAX_WRONG_LOGINS = 10  # a minute, per client address: guessing a 12-character login takes forever


class Refused(Exception):
    """A request the studio does not serve: an HTTP status and one sentence."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def own_host_names(bound: str, listed: tuple[str, ...] = ()) -> frozenset[str]:
    """The names the studio answers to: loopback's, the address it is bound to, STUDIO_HOSTS, and when
    bound to every address, the machine's own name and the addresses that name resolves to."""
    names = {*LOOPBACK_NAMES, *listed}
    if bound in WILDCARDS:
        machine = socket.gethostname()
        names.update({machine, socket.getfqdn()})
        try:
            names.update(answer[4][0] for answer in socket.getaddrinfo(machine, None))
        except OSError:
            pass
    else:
        names.add(bound)
    return frozenset(name.strip("[]").lower() for name in names if name)


_HOST = re.compile(r"(?P<name>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without the port and brackets; "" for anything that is not
    plainly a name or bracketed address and an optional numeric port (``127.0.0.1:evil.com``)."""
    match = _HOST.fullmatch(header.strip().lower())
    return match["name"].strip("[]") if match else ""


@dataclass(frozen=True)
class Guard:
    hosts: frozenset[str]
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    login: str | None = field(default=None, repr=False)
    failures: dict = field(default_factory=dict, repr=False)  # client address -> times of wrong logins

    def check_host(self, headers) -> None:
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            raise Refused(421, f"This studio answers only to its own address ({', '.join(sorted(self.hosts))}); "
                               f"to open it under another name, add that name to STUDIO_HOSTS.")

    def check_api_call(self, method: str, headers, client: str = "") -> None:
        """An API call: from the studio's own page, with its key and the login. ``client``: the
        caller's address, whose wrong logins are counted (MAX_WRONG_LOGINS a minute)."""
        self.check_host(headers)
        host = headers.get("host", "").lower()
        origin, fetch_site = headers.get("origin"), headers.get("sec-fetch-site")
        same_origin = (origin.lower() in (f"http://{host}", f"https://{host}") if origin is not None
                       else method == "GET")  # browsers send Origin with every POST, same-origin ones too
        if not same_origin or fetch_site not in (None, "same-origin"):
            raise Refused(403, "This studio takes requests only from its own page, not from another site.")
        if not hmac.compare_digest(headers.get(KEY_HEADER, "").encode(), self.key.encode()):
            raise Refused(403, "This request lacks the studio's key: reload the studio's page and try again.")
        if self.login is not None:
            self._check_login(headers.get(LOGIN_HEADER, ""), client)

    def _check_login(self, given: str, client: str) -> None:
        now = time.monotonic()
        recent = [at for at in self.failures.get(client, ()) if now - at < 60]
        if len(recent) >= MAX_WRONG_LOGINS:
            raise Refused(429, "Too many wrong logins from this address; wait a minute and try again.")
        if not hmac.compare_digest(given.encode(), self.login.encode()):
            if len(self.failures) > 1024:  # forget addresses with no wrong login in the last minute
                for stale in [key for key, times in self.failures.items() if now - max(times) >= 60]:
                    del self.failures[stale]
            self.failures[client] = [*recent, now]
            raise Refused(401, "This studio asks for its login (STUDIO_LOGIN): enter it on the page.")


def check_login(host: str, login: str | None) -> str | None:
    """Why the studio may not start with this ``--host`` and login, or None."""
    if login is not None and len(login) < MIN_LOGIN_CHARS:
        return f"The studio's login must be at least {MIN_LOGIN_CHARS} characters long."
    if login is not None and not all(32 <= ord(c) < 127 for c in login):
        return "The studio's login must be printable ASCII (a browser sends nothing else in a header)."
    if not is_loopback(host) and login is None:
        return (f"--host {host} opens the studio to the network: set a login of at least {MIN_LOGIN_CHARS} "
                f"characters in STUDIO_LOGIN (or --login-file PATH), or keep the default --host 127.0.0.1.")
    return None
