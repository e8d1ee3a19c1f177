"""Fetching what the user points at: an http(s) URL, a data URL or bare base64, as bytes.

One module for every fetch (input images, masks, LoRA files), so every limit applies to all.
A job's URLs are fetched from inside a GPU host on behalf of whoever holds the endpoint key,
so this module refuses to become a way in:

- only http and https (data URLs and bare base64 never touch the network); every other scheme
  (``file:``, ``ftp:``, ``gopher:``, ...) is refused;
- the host name is resolved once, every address it resolves to must be public (not loopback,
  private, link-local such as 169.254.169.254, multicast, reserved or unspecified), and the
  connection goes to the address that was checked, so a second DNS answer cannot swap in an
  internal one (the Host header and TLS server name stay the URL's host);
- redirects are followed here, at most MAX_REDIRECTS, each one checked like the first URL;
- connect, read (longest silence) and total timeouts; the body is streamed and abandoned as
  soon as it passes the size limit.

The limits are FETCH_* and ALLOW_PRIVATE_URLS (sdxl_worker.config's FetchSettings), given to a
``Fetcher`` when the worker starts (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urljoin, urlsplit

from sdxl_worker.config import FetchSettings
from sdxl_worker.errors import InputError, megabytes, quoted

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_REDIRECTS = (301, 302, 303, 307, 308)
_PRINTABLE = "".join(chr(code) for code in range(33, 127))  # kept as is in a request path; the rest is %-encoded


class Fetcher:
    """Every fetch a job makes, under one set of limits (FETCH_*, ALLOW_PRIVATE_URLS)."""

    def __init__(self, limits: FetchSettings = FetchSettings()):
        self.limits = limits

    def fetch(self, source: str, field: str, max_bytes: int | None = None) -> bytes:
        """The bytes ``source`` names; InputError naming ``field`` for anything refused or unreachable.

        ``max_bytes`` lowers or raises the size limit for one kind of file (a LoRA is larger than an
        image); unset, FETCH_MAX_BYTES applies.
        """
        chunks: list[bytes] = []
        self.fetch_into(source, field, chunks.append, max_bytes)
        return b"".join(chunks)

    def fetch_into(self, source: str, field: str, write: Callable[[bytes], object], max_bytes: int | None = None) -> int:
        """Like ``fetch``, but hands the body to ``write`` piece by piece as it arrives; the byte count.

        For large files (LoRAs): what is held in memory is one network read, never the whole file.
        On an error, ``write`` may already have had part of the body: the caller discards it.
        """
        return _fetch_into(source, field, write, self.limits if max_bytes is None else
                           dataclasses.replace(self.limits, max_bytes=max_bytes))

    def endpoint_addresses(self, url: str, field: str = "endpointUrl") -> tuple[str, ...]:
        """The checked addresses to connect to for an endpoint a job names (its s3Config.endpointUrl):
        InputError for a URL that is not plainly one host, or whose host is local or private (the
        download rules, unless ALLOW_PRIVATE_URLS). The caller connects to these addresses only."""
        return _endpoint_addresses(url, field, self.limits)


def _fetch_into(source: str, field: str, write: Callable[[bytes], object], limits: FetchSettings) -> int:
    max_bytes = limits.max_bytes
    source = source.strip()
    scheme = _SCHEME.match(source[:40])
    if scheme is None:  # base64 has no colon: anything else with one is a URL of some scheme
        return _written(_base64(source, field, max_bytes), write)
    name = scheme.group(1).lower()
    if name in ("http", "https"):
        return _download(source, field, max_bytes, limits, write)
    if name == "data":
        header, _, payload = source.partition(",")
        if ";base64" not in header.lower():
            raise InputError(f"'{field}' is a data URL without base64 data.")
        return _written(_base64(payload, field, max_bytes), write)
    raise InputError(f"'{field}' uses the URL scheme {quoted(name + ':')}, which is refused; "
                     "give an http(s) URL, a data URL or base64 data.")


# A job's endpoint URL as one strict pattern: scheme, a plain host name or bracketed IP, an optional
# port and path. No user info, backslash, percent-encoding, whitespace or control character, so no
# two URL parsers can see two different hosts in it (urllib.parse and urllib3, which botocore uses,
# read "http://127.0.0.1:8302\\@public.example" differently).
_PLAIN_ENDPOINT = re.compile(r"(?P<scheme>(?i:https?))://(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
                             r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[!-\[\]-~]*)?", re.ASCII)


def _endpoint_addresses(url: str, field: str, limits: FetchSettings) -> tuple[str, ...]:
    match = _PLAIN_ENDPOINT.fullmatch(url)
    if match is None:
        raise InputError(f"'{field}' must be a plain http(s) URL: a host name or IP address, an optional port "
                         "and path, and no user name, backslash, %-escape, space or control character.")
    host = match["host"].strip("[]").lower()
    port = int(match["port"]) if match["port"] else (443 if match["scheme"].lower() == "https" else 80)
    if not 0 < port < 65536 or _parsers_disagree(url, host, port):
        raise InputError(f"'{field}' is not a valid URL.")
    return _resolve(host, port, field, limits)


def _parsers_disagree(url: str, host: str, port: int) -> bool:
    """Belt and braces: the standard library and urllib3 must both read this host and port."""
    from urllib3.util import parse_url

    try:
        ours, theirs = urlsplit(url), parse_url(url)
        theirs_port = theirs.port or (443 if theirs.scheme == "https" else 80)
        ours_port = ours.port or (443 if ours.scheme == "https" else 80)
    except ValueError:
        return True
    return ((ours.hostname or "").lower(), ours_port) != (host, port) or \
        ((theirs.host or "").strip("[]").lower(), theirs_port) != (host, port)


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address on the public internet; the IPv4 inside a mapped IPv6 is what counts."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_private
                                       or address.is_loopback or address.is_link_local
                                       or address.is_unspecified)


def _base64(payload: str, field: str, max_bytes: int) -> bytes:
    payload = "".join(payload.split())
    if len(payload) // 4 * 3 > max_bytes:  # refuse before decoding
        raise InputError(f"'{field}' is larger than the {megabytes(max_bytes)} limit.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"'{field}' is neither an http(s) URL nor valid base64 data.") from None
    if not data:
        raise InputError(f"'{field}' is empty.")
    return data


def _written(data: bytes, write: Callable[[bytes], object]) -> int:
    write(data)
    return len(data)


def _download(url: str, field: str, max_bytes: int, limits: FetchSettings, write: Callable[[bytes], object]) -> int:
    deadline = time.monotonic() + limits.total_timeout
    for _ in range(MAX_REDIRECTS + 1):
        target = _Target.of(url, field, limits)
        status, location, size = _get(target, field, max_bytes, limits, deadline, write)
        if status in _REDIRECTS:
            if not location:
                raise InputError(f"'{field}': the server answered {status} without saying where to go.")
            url = urljoin(url, location)
            if _SCHEME.match(url) is None or urlsplit(url).scheme.lower() not in ("http", "https"):
                raise InputError(f"'{field}' redirects to a URL that is not http(s), which is refused.")
            continue
        if status >= 400:
            raise InputError(f"'{field}' could not be downloaded: the server answered {status}.")
        if status != 200:
            raise InputError(f"'{field}' could not be downloaded: unexpected answer {status}.")
        return size
    raise InputError(f"'{field}' redirects more than {MAX_REDIRECTS} times.")


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect (an address already found public) and what to ask for."""

    https: bool
    host: str  # the URL's host, for the Host header and TLS
    addresses: tuple[str, ...]  # the checked IPs, tried in order (as create_connection does with a name)
    port: int
    path: str

    @classmethod
    def of(cls, url: str, field: str, limits: FetchSettings) -> "_Target":
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise InputError(f"'{field}' is not a valid URL.") from None
        if not host:
            raise InputError(f"'{field}' is a URL without a host.")
        if parts.username is not None or parts.password is not None:
            raise InputError(f"'{field}' has a user name or password in its URL, which is refused.")
        try:
            host = host.encode("idna").decode("ascii")  # what DNS, the Host header and TLS use
        except UnicodeError:
            raise InputError(f"'{field}' has a host name that is not valid ({quoted(host)}).") from None
        https = parts.scheme.lower() == "https"
        port = port or (443 if https else 80)
        addresses = _resolve(host, port, field, limits)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(https, host, addresses, port, quote(path, safe=_PRINTABLE))


def _resolve(host: str, port: int, field: str, limits: FetchSettings) -> tuple[str, ...]:
    """The addresses to connect to; every address the name has must be public (unless opted in)."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise InputError(f"'{field}' names a host that does not resolve ({quoted(host)}).") from None
    addresses = [ipaddress.ip_address(answer[4][0].split("%")[0]) for answer in answers]
    if not addresses:
        raise InputError(f"'{field}' names a host that does not resolve ({quoted(host)}).")
    if not limits.allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise InputError(
                    f"'{field}' points at a local or private address ({address}), which this worker "
                    "refuses; ALLOW_PRIVATE_URLS=1 allows it for local testing."
                )
    return tuple(dict.fromkeys(str(address) for address in addresses))


def _get(target: _Target, field: str, max_bytes: int, limits: FetchSettings, deadline: float,
         write: Callable[[bytes], object]):
    """(status, Location, bytes written) for one request; the body goes to ``write``, only for a 200."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _too_slow(field, limits)
    connection = _connection(target, limits.connect_timeout, min(limits.read_timeout, remaining))
    # The socket timeout bounds each silence; this watchdog bounds the whole exchange, for a
    # server that drips a byte at a time.
    watchdog = threading.Timer(remaining, connection.abort)
    watchdog.daemon = True
    watchdog.start()
    response = None
    try:
        connection.request("GET", target.path, headers={"User-Agent": "sdxl-worker", "Accept": "*/*",
                                                         "Accept-Encoding": "identity"})
        response = connection.getresponse()
        if response.status != 200:
            return response.status, response.getheader("Location"), 0
        declared = response.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > max_bytes:
            raise InputError(f"'{field}' is larger than the {megabytes(max_bytes)} limit.")
        size = 0
        while True:
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise InputError(f"'{field}' is larger than the {megabytes(max_bytes)} limit.")
            write(chunk)
            if time.monotonic() > deadline:
                raise _too_slow(field, limits)
        if connection.aborted:  # the watchdog's shutdown reads as an early end of the body
            raise _too_slow(field, limits)
        if declared and declared.strip().isdigit() and size != int(declared):
            raise InputError(f"'{field}' could not be downloaded: the server stopped after {size:,} "
                             f"of {int(declared):,} bytes.")
        return 200, None, size
    except InputError:
        raise
    except (socket.timeout, TimeoutError):
        if time.monotonic() >= deadline:
            raise _too_slow(field, limits) from None
        if not connection.connected:
            raise InputError(f"'{field}': the server did not accept a connection within "
                             f"{limits.connect_timeout:g} s (FETCH_CONNECT_TIMEOUT).") from None
        raise InputError(f"'{field}': the server sent nothing for {limits.read_timeout:g} s "
                         "(FETCH_READ_TIMEOUT).") from None
    except ssl.SSLError as error:
        raise InputError(f"'{field}' could not be downloaded: TLS failed ({_short(error.reason or 'error')}).") \
            from None
    except (OSError, http.client.HTTPException) as error:
        if connection.aborted or time.monotonic() >= deadline:
            raise _too_slow(field, limits) from None
        raise InputError(f"'{field}' could not be downloaded ({_short(_reason(error))}).") from None
    finally:
        watchdog.cancel()
        watchdog.join()  # before closing: the watchdog never touches a closed connection
        if response is not None:
            response.close()
        connection.close()


class _Pinned:
    """Connects to an address checked beforehand, whatever DNS says now (mixed into http.client's)."""

    def pin(self, target: _Target, connect_timeout: float):
        self._addresses = target.addresses
        self._connect_timeout = connect_timeout
        self.aborted = self.connected = False
        self._live = None
        return self

    def connect(self):
        for index, address in enumerate(self._addresses):
            try:
                self.sock = socket.create_connection((address, self.port), self._connect_timeout)
                break
            except OSError:
                if index == len(self._addresses) - 1:
                    raise
        self.connected = True  # from here on, a timeout is the server's silence
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._live = self.sock

    def abort(self):
        """Called by the watchdog at the deadline: wakes whatever read is waiting."""
        self.aborted = True
        sock = self._live  # not self.sock: http.client hands the socket to the response
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    pass


class _PinnedHTTPS(http.client.HTTPSConnection, _PinnedHTTP):
    """HTTPS on the checked address; the certificate is checked for the URL's host name.

    HTTPSConnection.connect calls super().connect(), which the method order makes the pinned one.
    """

    def connect(self):
        super().connect()
        self._live = self.sock  # the TLS socket, shut down as a whole by the watchdog


def _connection(target: _Target, connect_timeout: float, read_timeout: float):
    if target.https:
        connection = _PinnedHTTPS(target.host, target.port, timeout=read_timeout,
                                  context=ssl.create_default_context())
    else:
        connection = _PinnedHTTP(target.host, target.port, timeout=read_timeout)
    return connection.pin(target, connect_timeout)


def _too_slow(field: str, limits: FetchSettings) -> InputError:
    return InputError(f"'{field}' took longer than {limits.total_timeout:g} s to download (FETCH_TOTAL_TIMEOUT).")


def _reason(error: Exception) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.timeout):
        return "connection timed out"
    return getattr(error, "strerror", None) or type(error).__name__


def _short(text, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
