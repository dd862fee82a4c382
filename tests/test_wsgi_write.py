"""WSGI write() (PEP 3333's legacy callable), flow-controlled on every engine and backend:
past wsgi.WRITE_BUFFER it sends synchronously and waits for the client, so a large body
written in pieces keeps the server's memory flat; framing, order, HEAD, a client that
stalls or leaves."""
from __future__ import annotations

import logging
import socket
import time

import pytest

import fastc1k
import wsgi_apps
from conftest import TEST_DEFAULTS, engine_and_backend
from fastc1k import Routes, ServerConfig
from test_wsgi import BIG_N, H11, _errors_logged, raw, split_responses, stalled_download, wsgi_server  # noqa: F401 (fixture)


def _write_stream(n: int, num: bool = True, tail: int = 0) -> bytes:
    blocks = b"".join(map(wsgi_apps.numbered, range(n))) if num else wsgi_apps.BIG * n
    return blocks + b"".join(b"tail-%d " % i for i in range(tail))


def _slow_read(s: socket.socket, stall: float = 0.3) -> bytes:
    """Read until the server closes: first nothing for `stall` s, then 16 KiB at a time, slowly."""
    time.sleep(stall)
    out = bytearray()
    while chunk := s.recv(16384):
        out += chunk
        if len(out) % (1 << 20) < 16384:
            time.sleep(0.02)
    return bytes(out)


@pytest.mark.parametrize("framing", ["chunked", "length", "http10"])
def test_write_streams_in_order_to_a_slow_reader(wsgi_server, framing):
    """write() beyond its buffer waits for the socket (PEP 3333: it returns once its data is
    sent or buffered for sending): a slow reader with a small window gets every written block
    in order, then the returned iterable's items, framed as the head says."""
    srv = wsgi_server()
    wsgi_apps.CLOSED.clear()
    query = b"n=64&num&tail=2" + (b"&cl" if framing == "length" else b"")
    version = b"1.0" if framing == "http10" else b"1.1"
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?%s HTTP/%s\r\nHost: t\r\nConnection: close\r\n\r\n" % (query, version))
        data = _slow_read(s)
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.lower()
    want = _write_stream(64, tail=2)
    if framing == "chunked":
        assert b"transfer-encoding: chunked" in head and b"content-length" not in head
        assert split_responses(data) == [(200, want)]
    elif framing == "length":
        assert b"content-length: %d" % len(want) in head and b"transfer-encoding" not in head
        assert body == want
    else:
        assert head.startswith(b"http/1.1 200") and b"content-length" not in head
        assert b"transfer-encoding" not in head and b"connection: close" in head and body == want
    assert wsgi_apps.CLOSED == ["/write-stream"]


def test_write_after_pipelined_responses_keeps_their_order(wsgi_server):
    """write() sending itself first sends what the engine still held for the connection."""
    srv = wsgi_server(validate=False)
    req = b"GET /list HTTP/1.1\r\nHost: t\r\n\r\nGET /write-stream?n=8&num HTTP/1.1\r\nHost: t\r\n\r\n" \
          b"GET /list HTTP/1.1\r\nHost: t\r\n\r\nGET /write-big HTTP/1.1\r\nHost: t\r\n\r\n" \
          b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    got = split_responses(raw(srv, req))
    assert got == [(200, b"hello world"), (200, _write_stream(8)), (200, b"hello world"),
                   (200, wsgi_apps.BIG * 32), (200, b"hello world")]


def _read_all(s: socket.socket) -> bytes:
    out = bytearray()
    while chunk := s.recv(1 << 16):
        out += chunk
    return bytes(out)


def test_write_takes_only_its_own_connections_output(wsgi_server):
    """Connections served in the same round as write()'s keep their responses: write() sends
    first only what the engine held for its own connection."""
    srv = wsgi_server(validate=False)
    conns = [socket.create_connection(srv.address, timeout=10) for _ in range(3)]
    try:
        conns[0].sendall(b"GET /sleep?0.3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        time.sleep(0.1)  # the worker sleeps in the app: the next two arrive together
        conns[1].sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        conns[2].sendall(b"GET /write-stream?n=8&num HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = [split_responses(_read_all(s)) for s in conns]
    finally:
        for s in conns:
            s.close()
    assert got == [[(200, b"slept")], [(200, b"slow")], [(200, _write_stream(8))]]


def test_write_before_an_unread_100_continue_body_closes_after(wsgi_server):
    """write() sends the head of a request whose 100-continue body the app did not read: it says
    Connection: close, and what the client sends then is never taken for a request."""
    srv = wsgi_server(validate=False)
    smuggled = b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"POST /write-stream?n=8&num HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(smuggled))
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):
            data += s.recv(1 << 16)
        s.sendall(smuggled)  # the body, late
        data += _read_all(s)
    assert b"connection: close" in data.partition(b"\r\n\r\n")[0].lower() and b"100 Continue" not in data
    assert split_responses(bytes(data)) == [(200, _write_stream(8))]


def test_write_then_a_100_continue_body_read_sends_no_interim_response(wsgi_server):
    """The app reads its 100-continue body after write() sent the final head: no 100 Continue
    lands in the body; the body the client sends anyway is read."""
    srv = wsgi_server(validate=False)
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"POST /write-stream?n=8&num&read HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        data = bytearray(s.recv(1 << 16))
        s.sendall(b"12345")  # as curl does when no 100 Continue came
        data += _read_all(s)
    assert b"100 Continue" not in data
    assert split_responses(bytes(data)) == [(200, _write_stream(8) + b"read 5")]


@pytest.mark.parametrize("cl", [False, True])
def test_write_to_head_sends_the_head_only(wsgi_server, cl):
    srv = wsgi_server()
    with H11(srv.address) as c:
        status, h, body = c.request("HEAD", "/write-stream?n=64" + ("&cl" if cl else ""))
        assert (status, body) == (200, b"")
        assert h.get("content-length") == (str(64 * len(wsgi_apps.BIG)) if cl else None)
        assert c.request("GET", "/list")[2] == b"hello world"  # nothing of a body came in between


@pytest.mark.parametrize("blocks", [BIG_N, pytest.param(4 * BIG_N, marks=pytest.mark.slow, id="1GiB")])
def test_write_of_a_large_body_keeps_the_server_memory_flat(wsgi_server, blocks):
    """256 MiB (slow: 1 GiB) written by write() calls to a client that stalls, then reads: the
    server's memory (this process: the server runs in a thread) stays flat."""
    srv = wsgi_server(validate=False, send_timeout=30.0)
    want = blocks * len(wsgi_apps.BIG)
    total, grew = stalled_download(srv, b"GET /write-stream?n=%d&cl HTTP/1.1\r\nHost: t\r\n\r\n" % blocks, want)
    assert total == want
    assert grew < 48 << 20, f"RSS grew {grew >> 20} MiB while write() sent {want >> 20} MiB"


def _answers_meanwhile(srv) -> bytes:
    with H11(srv.address, timeout=10) as c:
        return c.request("GET", "/list")[2]


def test_write_to_a_stalled_reader_times_out_and_the_worker_goes_on(wsgi_server, caplog):
    """A client that stops reading: write() raises TimeoutError (an OSError) in the app after
    send_timeout, the connection closes, and the worker answers the next client."""
    srv = wsgi_server(validate=False, send_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="fastc1k")
    wsgi_apps.WRITE_ERRORS.clear()
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?n=4096 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        assert _answers_meanwhile(srv) == b"hello world"  # after the stalled write() gave up
        assert 0.2 < time.monotonic() - t0 < 5
        [exc] = wsgi_apps.WRITE_ERRORS
        assert isinstance(exc, TimeoutError) and "send_timeout" in str(exc)
        got = bytearray()
        while chunk := s.recv(1 << 16):  # what was sent, then the close
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and len(got) < 4096 * len(wsgi_apps.BIG)
    assert not _errors_logged(caplog)  # the client's doing: one warning line, no traceback
    assert any("send_timeout" in r.getMessage() for r in caplog.records)


def test_write_to_a_client_that_left_raises_and_the_worker_goes_on(wsgi_server):
    srv = wsgi_server(validate=False)
    wsgi_apps.WRITE_ERRORS.clear()
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?n=4096 HTTP/1.1\r\nHost: t\r\n\r\n")
        s.recv(1 << 16)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    assert _answers_meanwhile(srv) == b"hello world"
    deadline = time.monotonic() + 5
    while not wsgi_apps.WRITE_ERRORS and time.monotonic() < deadline:
        time.sleep(0.02)
    [exc] = wsgi_apps.WRITE_ERRORS
    assert isinstance(exc, (BrokenPipeError, ConnectionResetError)), repr(exc)


def test_app_failing_after_write_sent_the_head_closes_the_connection(wsgi_server, caplog):
    srv = wsgi_server(validate=False)
    caplog.set_level(logging.ERROR, logger="fastc1k")
    data = raw(srv, b"GET /write-stream?n=8&fail HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"\r\n0\r\n\r\n")  # cut, then closed
    assert len(data) > 8 << 16 and len(_errors_logged(caplog)) == 1
    assert _answers_meanwhile(srv) == b"hello world"


def test_app_that_catches_writes_error_and_returns_still_closes(wsgi_server):
    """The app swallows write()'s OSError and returns an iterable: the connection closes all the
    same, and the iterable's close() is called."""
    srv = wsgi_server(validate=False, send_timeout=0.3)
    wsgi_apps.WRITE_ERRORS.clear()
    wsgi_apps.CLOSED.clear()
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?n=4096&catch&tail=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        assert _answers_meanwhile(srv) == b"hello world"
        got = _read_all(s)
    assert [type(e) for e in wsgi_apps.WRITE_ERRORS] == [TimeoutError] and wsgi_apps.CLOSED == ["/write-stream"]
    assert b"tail-0" not in got


@pytest.mark.parametrize("graceful", [False, True])
def test_stop_cuts_a_write_blocked_on_a_stalled_client(engine, graceful):
    """The worker is asked to stop while write() waits for a client that reads nothing: write()
    gives up at once (stop now) or after graceful_timeout, not after send_timeout."""
    name, backend = engine_and_backend(engine)
    cfg = ServerConfig(**{**TEST_DEFAULTS, "backend": backend, "send_timeout": 30.0, "graceful_timeout": 0.5})
    wsgi_apps.WRITE_ERRORS.clear()
    with fastc1k.running_server(cfg, Routes(wsgi=wsgi_apps.plain), engine=name) as srv, \
            socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?n=4096 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        t0 = time.monotonic()
        srv.stop(graceful)
        deadline = t0 + 5
        while not wsgi_apps.WRITE_ERRORS and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - t0
    [exc] = wsgi_apps.WRITE_ERRORS
    assert isinstance(exc, TimeoutError) and "stopping" in str(exc)
    assert (0.4 < took < 2.5) if graceful else took < 0.4, took


def test_stalled_reader_after_write_still_gets_the_iterable_closed(wsgi_server):
    """write() sent the head itself; the returned iterable then streams: a client that stalls
    there times out as any stream's does, and the iterable's close() is called."""
    srv = wsgi_server(validate=False, send_timeout=0.5)
    wsgi_apps.CLOSED.clear()
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 14)
        s.sendall(b"GET /write-stream?n=8&tail=4096 HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 5
        while not wsgi_apps.CLOSED and time.monotonic() < deadline:
            time.sleep(0.02)
        assert wsgi_apps.CLOSED == ["/write-stream"]
    assert _answers_meanwhile(srv) == b"hello world"
