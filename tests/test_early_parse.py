"""Parse early, parse incrementally (both engines).

A request head is rejected at the first byte that no valid request can have, as nginx
does, without waiting for the blank line that ends the head: the answer comes at once,
counted as a parse error, not as a 408 header timeout seconds later. And a head that
arrives in pieces is scanned from where the last read ended: trickled byte by byte, the
bytes the parser looks at (head_bytes_scanned) stay proportional to the head, not to its
square."""
from __future__ import annotations

import socket
import time

import pytest

from _client import RawClient, assert_error_and_close

pytestmark = pytest.mark.timeout(60)

H = b"Host: x\r\n"
TLS_CLIENT_HELLO = bytes.fromhex("16030100c4010000c00303") + bytes(range(32))

# bytes sent (the head never finished), and the status that must come at once
EARLY = [
    ("tls-client-hello", TLS_CLIENT_HELLO, 400),
    ("binary-junk", b"\x00\x01\x02\x03", 400),
    ("bad-version", b"GET / HTTX/1.1", 400),
    ("version-too-long", b"GET / HTTP/1.10", 400),
    ("unsupported-version", b"GET / HTTP/2.0\r\n", 505),
    ("bare-cr-request-line", b"GET / HTTP/1.1\rX", 400),
    ("bare-cr-header", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb", 400),
    ("bare-lf-header", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\nX-B", 400),
    ("line-starts-with-space", b"GET / HTTP/1.1\r\n" + H + b" X-A: a", 400),
    ("first-line-starts-with-tab", b"GET / HTTP/1.1\r\n\tHost: x", 400),
    ("duplicate-content-length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 1\r\n", 400),
    ("overflowing-content-length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1234567890123456789\r\n", 400),
    ("signed-content-length", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n", 400),
    ("raw-utf8-target", b"GET /caf\xc3\xa9", 400),
]


@pytest.mark.parametrize("data,status", [e[1:] for e in EARLY], ids=[e[0] for e in EARLY])
def test_rejected_at_the_first_impossible_byte(make_server, data, status):
    srv = make_server(header_timeout=5.0)
    with RawClient(srv.address, timeout=2.0) as c:
        t0 = time.monotonic()
        c.sock.sendall(data)
        assert_error_and_close(c, status)
        assert time.monotonic() - t0 < 2.0  # not at the 5 s header timeout
    k = srv.counters()
    assert k['timeouts{kind="header"}'] == 0
    assert sum(v for name, v in k.items() if name.startswith("parse_errors")) == 1


def _trickle(srv, head: bytes) -> bytes:
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(head)):
            s.sendall(head[i:i + 1])
            if i % 4 == 0:
                time.sleep(0.0005)  # let most bytes arrive in reads of their own
        return s.recv(65536)


def test_a_trickled_head_is_not_rescanned(make_server):
    srv = make_server(header_timeout=30.0)
    head = b"GET /api/health HTTP/1.1\r\n" + H + b"X-Pad: " + b"p" * 3000 + b"\r\nConnection: close\r\n\r\n"
    before = srv.counters()["head_bytes_scanned"]
    got = _trickle(srv, head)
    assert got.startswith(b"HTTP/1.1 200 OK"), got[:100]
    scanned = srv.counters()["head_bytes_scanned"] - before
    reads = srv.counters()["loop_events"]
    # linear: the head once by the scanner, once by the final parse, plus the first look;
    # a re-scan from byte 0 on every read would be ~ len(head)**2 / 2 (millions here)
    assert scanned <= 4 * len(head), f"{scanned} bytes looked at for a {len(head)}-byte head ({reads} events)"
