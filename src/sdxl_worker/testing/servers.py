"""Real local HTTP servers for the fetch tests: each route a small function, every request recorded."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """An HTTP server on ``host`` (``port``, or a free one) in a thread; ``routes`` maps a path to a responder.

    A responder gets the request handler and writes the answer itself; the route ``"*"`` takes
    every path no other route names. ``requests`` lists (path, Host header) of everything that
    arrived, so a test can prove nothing did; ``calls`` the same as (method, path, all headers).
    """

    def __init__(self, routes: dict, host: str = "127.0.0.1", port: int = 0, tls=None):
        self.routes = routes
        self.requests: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, dict]] = []
        self.release = threading.Event()  # stalling responders wait on it; set at shutdown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Host", "")))
                server.calls.append((self.command, self.path, dict(self.headers)))
                responder = server.routes.get(self.path.split("?")[0], server.routes.get("*"))
                if responder is None:
                    self.send_error(404)
                    return
                try:
                    responder(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

            do_PUT = do_POST = do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:  # an ssl.SSLContext for the server side (``self_signed``): HTTPS
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.host, self.port = host, self.httpd.server_address[1]
        # A short poll interval: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return self.url("")

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def body(data: bytes, content_type: str = "application/octet-stream", length: bool = True):
    """A responder sending ``data``; without ``length`` the body ends when the connection closes."""

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if length:
            handler.send_header("Content-Length", str(len(data)))
        else:
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(data)

    return respond


def redirect(location: str, status: int = 302):
    def respond(handler):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


def endless(chunk: bytes = b"\0" * 65536, sent: list | None = None):
    """A body that never ends, without a Content-Length; counts what it managed to send."""

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.close_connection = True
        handler.end_headers()
        while True:
            handler.wfile.write(chunk)
            if sent is not None:
                sent.append(len(chunk))

    return respond


def stall(server_release: threading.Event, after_headers: bool = False):
    """Accept the request, then say nothing (or only the headers) until the test ends."""

    def respond(handler):
        if after_headers:
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.flush()
        server_release.wait(30)

    return respond


def drip(server_release: threading.Event, interval: float = 0.2, in_headers: bool = False):
    """One byte at a time, each well inside the read timeout, forever: only a total deadline stops it."""

    def respond(handler):
        handler.send_response(200)
        if in_headers:
            handler.wfile.write(b"X-Slow: ")  # a header line that never ends
        else:
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
        handler.wfile.flush()
        while not server_release.is_set():
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(interval)

    return respond


def answer(status: int = 200, body: bytes = b"", **headers: str):
    """A responder that reads the request's body and answers ``status`` with ``body`` and ``headers``."""

    def respond(handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    return respond


def self_signed(name: str = "127.0.0.1"):
    """(server context, client context) for HTTPS on loopback: a certificate made now for ``name``
    (an IP address or a host name), which the client context trusts and nothing else does."""
    import datetime
    import ipaddress
    import ssl
    import tempfile
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alternative = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alternative = x509.DNSName(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_bytes(pem)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client
