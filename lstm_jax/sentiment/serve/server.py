"""The HTTP server around the app (:mod:`.app`): uvicorn with bounds on what one client may hold, and the guards.

Per connection (:func:`guarded_protocol`, a subclass of uvicorn's own HTTP protocol): a request line over
``max_url_bytes`` is a 414 and a request head over ``max_head_bytes`` a 431, counted while it arrives (never
buffered whole); a request not complete (head and body) within ``request_timeout`` seconds of its first byte is
answered 408 and closed (slowloris, short bodies, idle sockets); past ``max_connections`` open connections a new
one is answered 503 with ``Retry-After`` and closed. Every refusal is counted in the metrics, never logged.

Per request (:class:`Guard`, ASGI): the ``Host`` header must name the bound address (DNS rebinding) unless
``allowed_hosts`` says otherwise; with a token, every route but the probes and the page needs
``Authorization: Bearer <token>``.

:func:`serve` binds the socket (a one-line error when it cannot), prints the URL, and stops on SIGTERM, SIGINT
(Ctrl-C) or SIGHUP by finishing the requests in flight, then returns (exit 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import ipaddress
import json
import resource
import signal
import socket
import ssl
import sys
from pathlib import Path

from lstm_jax.sentiment.errors import UserError

OPEN_ROUTES = ("/livez", "/readyz", "/health", "/", "/page.js", "/page.css")  # probes and the page: no token
MAX_TOKEN_BYTES = 4096
_RESERVED_DESCRIPTORS = 64  # files the model and the libraries keep open beside the connections


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What one connection may hold (``serve.py`` flags of the same names)."""

    max_url_bytes: int = 8192
    max_head_bytes: int = 16384
    request_timeout: float = 5.0
    max_connections: int = 512


def connection_limit(wanted: int) -> int:
    """``wanted``, or fewer when the process may not open that many files (``ulimit -n``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - _RESERVED_DESCRIPTORS))


def _raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body  # fmt: skip


def guarded_protocol(bounds: Bounds, refused):
    """uvicorn's HTTP protocol class with ``bounds`` applied; ``refused(reason)`` counts each refusal."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class GuardedProtocol(AutoHTTPProtocol):
        _rejected, _discarding, _in_head, _deadline = False, False, True, None

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= bounds.max_connections:
                self._rejected = True  # answered and closed at once: lingering would hold the descriptors we lack
                transport.write(_raw_response(503, "Service Unavailable", "too many open connections; retry shortly",
                                              "retry-after: 1\r\n"))  # fmt: skip
                transport.close()
                refused("too_many_connections")
                return
            self._head = bytearray()
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            if not self._rejected:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected or self._discarding or self.transport.is_closing():
                return
            self._arm()
            if self._in_head and not self._head_within_bounds(data):
                return
            super().data_received(data)
            if not self._in_head and self.cycle is not None and not self.cycle.more_body:
                self._in_head = True  # this request is complete: the next bytes start the next head

        def _head_within_bounds(self, data: bytes) -> bool:
            """Keeps at most ``max_head_bytes`` of the head; refuses a head or request line too long."""
            self._head += data[: bounds.max_head_bytes + 4 - len(self._head)]
            line, end = self._head.find(b"\r\n"), self._head.find(b"\r\n\r\n")
            if (line if line >= 0 else len(self._head)) > bounds.max_url_bytes:
                return self._refuse(414, "URI Too Long", f"the request line is over {bounds.max_url_bytes} bytes",
                                    "url_too_long")  # fmt: skip
            if (end if end >= 0 else len(self._head)) > bounds.max_head_bytes:
                return self._refuse(431, "Request Header Fields Too Large", f"the request head is over "
                                    f"{bounds.max_head_bytes} bytes", "head_too_large")  # fmt: skip
            if end >= 0:
                self._in_head = False
                self._head.clear()
            return True

        def _refuse(self, status: int, reason: str, message: str, metric: str) -> bool:
            self._answer_and_close(_raw_response(status, reason, message))
            refused(metric)
            return False

        def _answer_and_close(self, answer: bytes) -> None:
            """Answers, then reads and drops what the client is still sending for a moment before closing: a
            socket closed with unread data resets the connection, and the client may lose the answer."""
            self.transport.write(answer)
            if not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()
            self._discarding = True
            self.loop.call_later(1.0, self.transport.close)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(bounds.request_timeout, self._expire)

        def _expire(self) -> None:
            """A request still arriving after ``request_timeout`` closes its connection (an idle one too)."""
            self._deadline = None
            cycle = self.cycle
            answering = cycle is not None and not cycle.more_body and not cycle.response_complete
            if answering or self.transport.is_closing():
                return
            begun = bool(self._head) or (cycle is not None and cycle.more_body and not cycle.response_complete)
            if begun and (cycle is None or cycle.response_complete or not cycle.response_started):
                self.transport.write(_raw_response(408, "Request Timeout", "the request did not arrive within "
                                                   f"{bounds.request_timeout:g} s"))  # fmt: skip
            self.transport.close()  # an idle connection (nothing of a request sent) is closed without a word
            if begun:
                refused("timeout")

    return GuardedProtocol


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) reaches this machine only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError as error:
        raise UserError(f"--host {host} is not an address of this machine ({error.strerror or error}); use e.g. "
                        "127.0.0.1, ::1 or 0.0.0.0") from None  # fmt: skip
    return all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def default_allowed_hosts(host: str) -> set[str] | None:
    """The ``Host`` names a browser uses for the bound address; None (any) for a wildcard address."""
    address = host.strip("[]")
    if address in ("", "0.0.0.0", "::"):
        return None  # every interface: the token (required off loopback) guards it
    names = {address.lower()}
    if is_loopback(address):
        names |= {"localhost", "127.0.0.1", "::1"}
    return names


def read_token(path: str) -> str:
    """The bearer token in ``path`` (a small regular file; surrounding whitespace dropped)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--token_file {path} is not a file; write the token (one line) into a file")
    with open(file, "rb") as handle:
        raw = handle.read(MAX_TOKEN_BYTES + 1)
    token = raw.decode("ascii", errors="replace").strip()
    if len(raw) > MAX_TOKEN_BYTES or not token or not token.isprintable() or " " in token:
        raise UserError(f"--token_file {path} must hold one token of 1 to {MAX_TOKEN_BYTES} printable ASCII "
                        "characters without spaces (e.g. from: python -c 'import secrets; print(secrets.token_hex())')")
    return token


class Guard:
    """ASGI: checks ``Host`` (when ``allowed_hosts`` is a set) and the bearer token (when ``token`` is set)."""

    def __init__(self, app, allowed_hosts: set[str] | None, token: str | None, refused):
        self.app, self.allowed, self.refused = app, allowed_hosts, refused
        self.expected = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.allowed is not None and _host_name(headers.get(b"host", b"")) not in self.allowed:
            return await self._answer(send, 421, "the Host header does not name this server; use its address, or "
                                      "start serve.py with --allowed_hosts", "wrong_host")  # fmt: skip
        if self.expected and scope["path"] not in OPEN_ROUTES:
            scheme, _, sent = headers.get(b"authorization", b"").strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(sent.strip(), self.expected):
                return await self._answer(send, 401, "send the token: Authorization: Bearer <token>", "unauthorized",
                                          [(b"www-authenticate", b"Bearer")])  # fmt: skip
        return await self.app(scope, receive, send)

    async def _answer(self, send, status: int, message: str, reason: str, headers=()) -> None:
        self.refused(reason)
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def _host_name(value: bytes) -> str:
    """``Host``'s name without the port, lower case (``[::1]:8000`` -> ``::1``)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """A one-line error for a certificate or key that uvicorn could not load."""
    if bool(certfile) != bool(keyfile):
        raise UserError("--ssl_certfile and --ssl_keyfile go together; give both (PEM files) or neither")
    if certfile:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as error:
            why = getattr(error, "strerror", None) or error.args[-1]
            raise UserError(f"cannot load the TLS certificate {certfile} with key {keyfile} ({why}); give PEM "
                            "files") from None  # fmt: skip


def url(host: str, port: int, tls: bool) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def listen(host: str, port: int) -> socket.socket:
    try:
        address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(address[0], socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address[4])
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --host/--port"
                        ) from None  # fmt: skip
    return listener


def run(app, listener: socket.socket, bounds: Bounds, refused, tls: tuple[str, str] | None) -> None:
    """uvicorn on ``listener`` until SIGTERM, SIGINT or SIGHUP; then drains the requests in flight and returns."""
    import uvicorn

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            hangup = signal.signal(signal.SIGHUP, self.handle_exit)  # a closed terminal drains too
            try:
                with super().capture_signals():
                    yield
            finally:
                signal.signal(signal.SIGHUP, hangup)

        def handle_exit(self, sig, frame):
            if not self.should_exit:
                print("stopping: finishing the requests in flight", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught signal after draining (exit 130 or 143); for us it is the normal way to stop.
            if sig in stop_signals and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    certfile, keyfile = tls or (None, None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=60,
                            http=guarded_protocol(bounds, refused), timeout_keep_alive=5,
                            h11_max_incomplete_event_size=bounds.max_head_bytes, ssl_certfile=certfile,
                            ssl_keyfile=keyfile, server_header=False)  # fmt: skip
    _Server(config).run(sockets=[listener])
