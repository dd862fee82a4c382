"""Test clients: a raw-socket client with exact framing, and a strict h11 client.

Every response either client returns has passed `check_response`: h11 (as a client) parses
the exact bytes received, and the fastc1k contract holds (CRLF line ends, one `Server`,
one RFC `Date` near now, one `Content-Length` on every final response). So h11 validates
every response the suite receives, whichever client a test uses.

The raw reader frames responses itself (it must handle pipelining, which h11's client
cannot) and then hands each response's bytes to a fresh h11 connection, so the two
parsers must agree on status and body.
"""
from __future__ import annotations

import http.client
import io
import re
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import h11

__all__ = ["Response", "ResponseParser", "RawClient", "H11Client", "check_response", "build_request",
           "fetch", "ClosedError", "HTTPConnection",
           "assert_error_and_close"]

DEFAULT_TIMEOUT = 5.0

# RFC 9110 section 5.6.7: IMF-fixdate = day-name "," SP date1 SP time-of-day SP GMT
_IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    rb"\d\d:\d\d:\d\d GMT")
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3}) ([^\r\n]*)")


class ClosedError(AssertionError):
    """The server closed (or reset) the connection before a complete response."""


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]      # names as sent, values stripped of OWS
    body: bytes
    raw: bytes                              # interim responses + this one, exactly as received
    method: bytes = b"GET"
    interim: list[int] = field(default_factory=list)  # statuses of 1xx responses before this one

    def header(self, name: str | bytes) -> bytes | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str | bytes) -> list[bytes]:
        key = (name.encode() if isinstance(name, str) else name).lower()
        return [v for k, v in self.headers if k.lower() == key]

    @property
    def connection(self) -> bytes:
        return (self.header("connection") or b"").lower()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.raw[:200]!r}>"


def build_request(method: str = "GET", target: str = "/api/health", headers: list | None = None,
                  body: bytes = b"", version: str = "HTTP/1.1", host: bool = True,
                  content_length: bool | None = None) -> bytes:
    """Request bytes. Host is added for HTTP/1.1, Content-Length when there is a body."""
    lines = [f"{method} {target} {version}".encode()]
    hdrs = list(headers or [])
    names = {(n.decode() if isinstance(n, bytes) else n).lower() for n, _ in hdrs}
    if host and version == "HTTP/1.1" and "host" not in names:
        hdrs.insert(0, ("Host", "localhost"))
    if content_length or (content_length is None and body and "content-length" not in names
                          and "transfer-encoding" not in names):
        hdrs.append(("Content-Length", str(len(body))))
    for n, v in hdrs:
        n = n.encode() if isinstance(n, str) else n
        v = v.encode() if isinstance(v, str) else v
        lines.append(n + b": " + v)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _h11_events(raw: bytes, method: bytes) -> tuple[list[int], int, bytes]:
    """Parse one response (with its 1xx) as h11's client does: (interim, status, body)."""
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "localhost")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    interim: list[int] = []
    status, body = -1, bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise AssertionError(f"h11 rejects the response: {exc}; bytes: {raw[:500]!r}") from None
        if event is h11.NEED_DATA:
            raise AssertionError(f"h11 finds the response incomplete: {raw[:500]!r}")
        if isinstance(event, h11.InformationalResponse):
            interim.append(event.status_code)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return interim, status, bytes(body)


def check_response(resp: Response, now: float | None = None) -> None:
    """h11 accepts the bytes, agrees with our framing, and the fastc1k contract holds."""
    interim, status, body = _h11_events(resp.raw, resp.method)
    assert (interim, status, body) == (resp.interim, resp.status, resp.body), \
        f"h11 and the raw reader disagree: {(interim, status, body[:100])} vs {resp!r}"
    heads = resp.raw[:len(resp.raw) - len(resp.body)]  # interim heads + this head
    if re.search(rb"(?<!\r)\n", heads):
        raise AssertionError(f"bare LF in a response head: {resp.raw[:300]!r}")
    for name in ("server", "date", "content-length"):
        got = resp.headers_named(name)
        assert len(got) == 1, f"{resp.status} response has {len(got)} {name} headers: {resp.raw[:300]!r}"
    date = resp.header("date")
    assert _IMF_FIXDATE.fullmatch(date), f"Date is not IMF-fixdate: {date!r}"
    skew = parsedate_to_datetime(date.decode()).timestamp() - (time.time() if now is None else now)
    assert -5 <= skew <= 2, f"Date {date!r} is {skew:.1f}s from now"
    if resp.method != b"HEAD":
        assert int(resp.header("content-length")) == len(resp.body)


class ResponseParser:
    """Incremental response framer: feed bytes, get complete (checked) Responses.

    `expect(method)` must be called once per request sent, in order, so HEAD responses
    are framed without a body (as RFC 9112 section 6.3 says).
    """

    def __init__(self, check: bool = True) -> None:
        self.buf = bytearray()
        self.methods: deque[bytes] = deque()
        self.check = check

    def expect(self, method: str | bytes) -> None:
        self.methods.append(method.encode() if isinstance(method, str) else method)

    def feed(self, data: bytes) -> list[Response]:
        self.buf += data
        out = []
        while True:
            resp = self._next()
            if resp is None:
                return out
            out.append(resp)

    def _next(self) -> Response | None:
        pos, interim = 0, []
        while True:
            end = self.buf.find(b"\r\n\r\n", pos)
            if end < 0:
                return None
            lines = bytes(self.buf[pos:end]).split(b"\r\n")
            m = _STATUS_LINE.fullmatch(lines[0])
            if not m:
                raise AssertionError(f"not an HTTP/1.x status line: {bytes(self.buf[pos:pos + 200])!r}")
            status = int(m.group(3))
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise AssertionError(f"header line without colon: {line!r}")
                headers.append((name, value.strip(b" \t")))
            if 100 <= status < 200:
                interim.append(status)
                pos = end + 4
                continue
            break
        method = self.methods[0] if self.methods else b"GET"
        body_start = end + 4
        names = {n.lower() for n, _ in headers}
        if method == b"HEAD" or status in (204, 304):
            length = 0
        elif b"content-length" in names:
            length = int(next(v for n, v in headers if n.lower() == b"content-length"))
        else:
            raise AssertionError(f"response without Content-Length: {bytes(self.buf[:300])!r}")
        if len(self.buf) < body_start + length:
            return None
        raw = bytes(self.buf[:body_start + length])
        del self.buf[:body_start + length]
        if self.methods:
            self.methods.popleft()
        resp = Response(status, m.group(4), headers, raw[body_start:], raw, method, interim)
        if self.check:
            check_response(resp)
        return resp


class RawClient:
    """One TCP connection; bytes in, framed and checked responses out."""

    def __init__(self, address: tuple[str, int], timeout: float = DEFAULT_TIMEOUT,
                 rcvbuf: int | None = None, sndbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.timeout = timeout
        self.parser = ResponseParser()
        self.ready: deque[Response] = deque()
        self.eof = False

    # -- sending
    def send(self, data: bytes, methods: list[str] | tuple[str, ...] = ()) -> None:
        """Send bytes; `methods` registers the requests they hold (for HEAD framing)."""
        for m in methods:
            self.parser.expect(m)
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/api/health", **kw) -> Response:
        self.send(build_request(method, target, **kw), [method])
        return self.read_response()

    # -- receiving
    def read_response(self, timeout: float | None = None) -> Response:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.ready:
            if self.eof:
                raise ClosedError(f"connection closed before a complete response; "
                                  f"have {bytes(self.parser.buf)[:300]!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no complete response in time; have {bytes(self.parser.buf)[:300]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                raise ClosedError(f"connection reset before a complete response; have "
                                  f"{bytes(self.parser.buf)[:300]!r}") from None
            if not data:
                self.eof = True
            self.ready.extend(self.parser.feed(data))
        return self.ready.popleft()

    def read_responses(self, n: int, timeout: float | None = None) -> list[Response]:
        return [self.read_response(timeout) for _ in range(n)]

    def read_until_close(self, timeout: float | None = None) -> tuple[bytes, bool]:
        """Every byte until EOF: (bytes, reset). Fails if the server keeps it open past timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        chunks = [bytes(self.parser.buf)]
        self.parser.buf.clear()
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close within {timeout}s; got {b''.join(chunks)[:200]!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return b"".join(chunks), True
            if not data:
                self.eof = True
            chunks.append(data)
        return b"".join(chunks), False

    def expect_eof(self, timeout: float | None = None) -> None:
        """The server closes cleanly (FIN, no reset) and sends nothing more."""
        assert not self.ready, f"unexpected extra responses: {list(self.ready)}"
        rest, reset = self.read_until_close(timeout)
        assert rest == b"", f"unexpected bytes before close: {rest[:200]!r}"
        assert not reset, "connection reset instead of a clean close"

    def still_open(self, wait: float = 0.05) -> bool:
        """True when, after `wait`, the server has neither closed nor sent anything."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        assert not data, f"unexpected bytes from the server: {data!r}"
        return False  # EOF

    # -- closing
    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 makes close() send RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def assert_error_and_close(client: RawClient, status: int) -> Response:
    """An error status, `Connection: close` (as nginx sends), then a clean close (no reset)."""
    resp = client.read_response()
    assert resp.status == status, resp
    assert resp.connection == b"close", resp
    client.expect_eof()
    return resp


def fetch(address: tuple[str, int], data: bytes, methods: tuple[str, ...] = ("GET",),
          timeout: float = DEFAULT_TIMEOUT) -> Response:
    """One request on a fresh connection; the first response."""
    with RawClient(address, timeout) as c:
        c.send(data, methods)
        return c.read_response()


class H11Client:
    """A strict HTTP/1.1 client: h11 builds the requests and parses the responses."""

    def __init__(self, address: tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.conn = h11.Connection(our_role=h11.CLIENT)

    def request(self, method: str = "GET", target: str = "/api/health", headers=(), body: bytes = b"") -> Response:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", "localhost"), *headers]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.sock.sendall(out)
        raw = bytearray()
        interim: list[int] = []
        resp: h11.Response | None = None
        data = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                chunk = self.sock.recv(65536)
                raw += chunk
                self.conn.receive_data(chunk)
                if not chunk:
                    raise ClosedError(f"connection closed mid-response; got {bytes(raw)[:300]!r}")
                continue
            if isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                resp = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ClosedError("connection closed before a response")
        assert resp is not None
        # The exact bytes of this response: h11 keeps any excess in its buffer, so drop it.
        extra = len(self.conn.trailing_data[0])
        result = Response(resp.status_code, resp.reason, list(resp.headers.raw_items()), bytes(data),
                          bytes(raw[:len(raw) - extra]), method.encode(), interim)
        check_response(result)
        return result

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "H11Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Recorder(io.RawIOBase):
    def __init__(self, sock: socket.socket, log: bytearray) -> None:
        self.sock, self.log = sock, log

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.sock.recv_into(b)
        self.log += memoryview(b)[:n]
        return n


class _RecordingSocket:
    def __init__(self, sock: socket.socket, log: bytearray) -> None:
        self._sock, self._log = sock, log

    def makefile(self, mode: str = "rb", *args, **kw):
        assert mode == "rb", mode
        return io.BufferedReader(_Recorder(self._sock, self._log))

    def __getattr__(self, name):
        return getattr(self._sock, name)


class HTTPConnection(http.client.HTTPConnection):
    """http.client's client, recording every byte it receives; `check()` runs those bytes
    through ResponseParser (h11 + the contract), as every response in the suite must be."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.received = bytearray()
        self.methods: list[str] = []

    def connect(self) -> None:
        super().connect()
        self.sock = _RecordingSocket(self.sock, self.received)

    def putrequest(self, method: str, *args, **kw) -> None:
        self.methods.append(method)
        super().putrequest(method, *args, **kw)

    def check(self) -> list[Response]:
        parser = ResponseParser()
        for m in self.methods:
            parser.expect(m)
        got = parser.feed(bytes(self.received))
        assert len(got) == len(self.methods) and not parser.buf, (len(got), self.methods, bytes(parser.buf[:200]))
        return got
