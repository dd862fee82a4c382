"""One backpressure rule, both engines: once a response is not taken whole by the socket,
the connection is not read and none of its buffered requests is answered until the client
drains it; so the output held in user space is at most the unsent tail of one send.

The rule is checked through the counters: answers queued (responses{status="200"}) times
the answer's length, minus bytes_out, is what the engine holds unsent."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from fastc1k import Routes

from _client import build_request

pytestmark = pytest.mark.timeout(60)

BODY = b"b" * 70_000  # over 64 KiB: each handler answer is sent on its own


def _settled(srv, keys=("bytes_out", "requests"), quiet: float = 0.3, within: float = 10.0) -> dict:
    """The counters once `keys` have not moved for `quiet` seconds."""
    deadline = time.monotonic() + within
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        k = srv.counters()
        now = tuple(k[x] for x in keys)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return k
        time.sleep(0.05)
    raise AssertionError(f"counters never settled: {last}")


def test_stops_at_the_first_response_the_socket_does_not_take(make_server):
    routes = Routes()
    routes.handler("/body", lambda req: BODY)
    srv = make_server(routes)
    req = build_request(target="/body")
    with socket.create_connection(srv.address) as s:
        s.sendall(req)
        got = b""
        while len(got) < len(BODY) or b"\r\n\r\n" not in got:
            got += s.recv(1 << 20)
        rlen = got.index(b"\r\n\r\n") + 4 + len(BODY)
        assert len(got) == rlen
        base = _settled(srv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        n = 200
        sender = threading.Thread(target=lambda: s.sendall(req * n), daemon=True)
        sender.start()
        k = _settled(srv)  # the client reads nothing: the engine stops
        answered = k['responses{status="200"}'] - base['responses{status="200"}']
        sent = k["bytes_out"] - base["bytes_out"]
        held = answered * rlen - sent
        assert answered < n, "the engine answered every request although nothing was read"
        assert 0 < held < rlen, (f"{held} bytes held unsent for {answered} answers: more than the tail "
                                 f"of one answer ({rlen} bytes)")
        # the client drains: every answer arrives, whole and in order
        s.settimeout(10)
        need, buf = n * rlen, bytearray()
        while len(buf) < need:
            data = s.recv(1 << 20)
            assert data, "closed early"
            buf += data
        sender.join(5)
        assert len(buf) == need and buf[:rlen].endswith(BODY) and buf[-rlen:].endswith(BODY)
    k = _settled(srv)
    assert k["requests"] - base["requests"] == n
