"""Every ServerConfig limit at its exact boundary: the limit passes, limit + 1 fails.

Timers use short values (0.3 s); their assertions leave slack for a busy 2-core machine
but still fail if a timer never fires or fires far too early.
"""
from __future__ import annotations

import hashlib
import select
import socket
import time

import pytest

from _client import RawClient, assert_error_and_close, build_request, fetch

HOST_LINE = b"Host: localhost\r\n"


# --- max_request_line (CRLF excluded) -> 414 -------------------------------------------------

def _line(length: int) -> bytes:
    """`GET /aaa… HTTP/1.1` of exactly `length` bytes, to an unknown path (404, kept)."""
    fixed = len(b"GET / HTTP/1.1")
    return b"GET /" + b"a" * (length - fixed) + b" HTTP/1.1"


LIMITS = [100, 8192]  # a small one, and the default (which the C engine may size buffers by)


@pytest.mark.parametrize("limit", LIMITS)
def test_request_line_at_limit_passes(make_server, limit):
    srv = make_server(max_request_line=limit)
    with RawClient(srv.address) as c:
        c.send(_line(limit) + b"\r\n" + HOST_LINE + b"\r\n", ["GET"])
        assert c.read_response().status == 404
        pad = limit - len("GET /api/health? HTTP/1.1")
        assert c.request("GET", "/api/health?" + "q" * pad).status == 200  # `limit` bytes exactly


def test_request_line_at_limit_with_crlf_split(make_server):
    """A line of exactly the limit whose CR and LF arrive in separate reads is not 414."""
    srv = make_server(max_request_line=100)
    with RawClient(srv.address) as c:
        c.parser.expect("GET")
        c.sock.sendall(_line(100) + b"\r")
        time.sleep(0.1)
        c.sock.sendall(b"\n" + HOST_LINE + b"\r\n")
        assert c.read_response().status == 404


@pytest.mark.parametrize("limit", LIMITS)
def test_request_line_over_limit_414(make_server, limit):
    srv = make_server(max_request_line=limit)
    with RawClient(srv.address) as c:
        c.send(_line(limit + 1) + b"\r\n" + HOST_LINE + b"\r\n", ["GET"])
        assert_error_and_close(c, 414)


def test_request_line_over_limit_without_crlf_414(make_server):
    """The server does not wait for a line end it will never accept (header_timeout is 3 s)."""
    srv = make_server(max_request_line=100)
    with RawClient(srv.address, timeout=1.5) as c:
        c.send(_line(101), ["GET"])
        assert_error_and_close(c, 414)


# --- max_header_bytes (after the request line, final CRLF included) -> 431 -----------------

def _section(length: int) -> bytes:
    """A header section of exactly `length` bytes: Host, one padding field, the empty line."""
    fixed = len(HOST_LINE + b"X-Pad: \r\n\r\n")
    return HOST_LINE + b"X-Pad: " + b"p" * (length - fixed) + b"\r\n\r\n"


@pytest.mark.parametrize("limit", LIMITS)
def test_header_bytes_at_limit_passes(make_server, limit):
    srv = make_server(max_header_bytes=limit)
    assert len(_section(limit)) == limit
    assert fetch(srv.address, b"GET /api/health HTTP/1.1\r\n" + _section(limit)).status == 200


@pytest.mark.parametrize("limit", LIMITS)
def test_header_bytes_over_limit_431(make_server, limit):
    srv = make_server(max_header_bytes=limit)
    with RawClient(srv.address) as c:
        c.send(b"GET /api/health HTTP/1.1\r\n" + _section(limit + 1), ["GET"])
        assert_error_and_close(c, 431)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_header_bytes_at_limit_with_end_split(make_server, split):
    """The header section's final CRLF arriving in pieces does not push it over the limit."""
    srv = make_server(max_header_bytes=200)
    section = _section(200)
    with RawClient(srv.address) as c:
        c.parser.expect("GET")
        c.sock.sendall(b"GET /api/health HTTP/1.1\r\n" + section[:-split])
        time.sleep(0.1)
        c.sock.sendall(section[-split:])
        assert c.read_response().status == 200


def test_both_limits_full_at_once(make_server):
    """A request line and a header section both exactly at their limits, in one request."""
    srv = make_server(max_request_line=8192, max_header_bytes=8192)
    pad = 8192 - len("GET /api/health? HTTP/1.1")
    head = b"GET /api/health?" + b"q" * pad + b" HTTP/1.1\r\n" + _section(8192)
    with RawClient(srv.address) as c:
        c.send(head * 2, ["GET", "GET"])  # pipelined: two full-size heads back to back
        assert [r.status for r in c.read_responses(2)] == [200, 200]


def test_header_bytes_over_limit_without_end_431(make_server):
    srv = make_server(max_header_bytes=200)
    with RawClient(srv.address, timeout=1.5) as c:
        c.send(b"GET /api/health HTTP/1.1\r\n" + HOST_LINE + b"X-Pad: " + b"p" * 300, ["GET"])
        assert_error_and_close(c, 431)


def test_unfinished_head_filling_the_smallest_buffer_431(make_server):
    """buffer_size at its smallest (max_request_line + max_header_bytes + 2): a request line
    at its limit and header bytes at theirs, still without the blank line, fill the buffer
    exactly. Nothing more can be read into it: 431 at once (not a read of 0 bytes taken as
    EOF, nor a 408 later)."""
    srv = make_server(max_request_line=512, max_header_bytes=510, buffer_size=1024, header_timeout=5.0)
    head = _line(512) + b"\r\n" + HOST_LINE + b"X-Pad: " + b"p" * (510 - len(HOST_LINE) - 7)
    assert len(head) == 1024
    with RawClient(srv.address, timeout=2.0) as c:
        t0 = time.monotonic()
        c.send(head, ["GET"])
        assert_error_and_close(c, 431)
        assert time.monotonic() - t0 < 2.0
    assert srv.counters()['parse_errors{kind="headers_too_large"}'] == 1


# --- max_headers -> 431 --------------------------------------------------------------------

def _fields(n: int) -> bytes:
    return b"GET /api/health HTTP/1.1\r\n" + HOST_LINE + b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1)) + b"\r\n"


@pytest.mark.parametrize("limit", [10, 100])
def test_header_count_at_limit_passes(make_server, limit):
    srv = make_server(max_headers=limit)
    assert fetch(srv.address, _fields(limit)).status == 200


@pytest.mark.parametrize("limit", [10, 100])
def test_header_count_over_limit_431(make_server, limit):
    srv = make_server(max_headers=limit)
    with RawClient(srv.address) as c:
        c.send(_fields(limit + 1), ["GET"])
        assert_error_and_close(c, 431)


# --- max_body -> 413 -----------------------------------------------------------------------

def test_content_length_at_max_body_passes(make_server):
    srv = make_server(max_body=1000)
    resp = fetch(srv.address, build_request("POST", "/echo", body=b"b" * 1000))
    assert resp.status == 200 and resp.body.startswith(b"1000:")


def test_content_length_over_max_body_413_without_reading_it(make_server):
    """413 comes from the headers alone: the body is never sent here (no 408 wait)."""
    srv = make_server(max_body=1000)
    with RawClient(srv.address, timeout=1.5) as c:
        c.send(build_request("POST", "/echo", headers=[("Content-Length", "1001")]), ["POST"])
        assert_error_and_close(c, 413)


def test_413_is_read_not_reset_when_the_body_follows(make_server):
    """Lingering close: the client that already sent a large body still reads the 413."""
    srv = make_server(max_body=1000)
    with RawClient(srv.address) as c:
        c.send(build_request("POST", "/echo", body=b"z" * 200_000), ["POST"])
        assert_error_and_close(c, 413)


def test_default_max_body_both_framings(make_server):
    """1 MiB (the default max_body) passes with either framing; one byte more does not."""
    srv = make_server()
    body = bytes(range(256)) * 4096
    assert len(body) == 1 << 20
    want = b"%d:%s" % (len(body), hashlib.md5(body).hexdigest().encode())
    with RawClient(srv.address) as c:
        assert c.request("POST", "/echo", body=body).body == want
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + n]), body[i:i + n])
                           for i, n in zip(range(0, len(body), 70001), [70001] * 20)) + b"0\r\n\r\n"
        assert c.request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")], body=chunked).body == want
        c.send(build_request("POST", "/echo", body=body + b"!"), ["POST"])
        assert_error_and_close(c, 413)


def test_max_body_zero(make_server):
    srv = make_server(max_body=0)
    assert fetch(srv.address, build_request("POST", "/echo", headers=[("Content-Length", "0")])).body == \
        b"0:d41d8cd98f00b204e9800998ecf8427e"
    with RawClient(srv.address) as c:
        c.send(build_request("POST", "/echo", body=b"a"), ["POST"])
        assert_error_and_close(c, 413)


def _chunked(body: bytes, size: int = 300) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def test_chunked_at_max_body_passes(make_server):
    srv = make_server(max_body=1000)
    resp = fetch(srv.address, build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")],
                                            body=_chunked(b"c" * 1000)))
    assert resp.status == 200 and resp.body.startswith(b"1000:")


def test_chunked_over_max_body_413(make_server):
    srv = make_server(max_body=1000)
    with RawClient(srv.address) as c:
        c.send(build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")],
                             body=_chunked(b"c" * 1001)), ["POST"])
        assert_error_and_close(c, 413)


def test_chunk_size_over_max_body_413_before_its_data(make_server):
    """A chunk that declares more than max_body is refused at its size line (as nginx does)."""
    srv = make_server(max_body=1000)
    with RawClient(srv.address, timeout=1.5) as c:
        c.send(build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")], body=b"3e9\r\n"), ["POST"])
        assert_error_and_close(c, 413)


# --- header_timeout -> 408 (slowloris), body timeout -> 408 ---------------------------------

def test_slowloris_408_despite_trickled_bytes(make_server):
    srv = make_server(header_timeout=0.3)
    with RawClient(srv.address) as c:
        start = time.monotonic()
        c.send(b"GET /api/health HTTP/1.1\r\n", ["GET"])
        for i in range(40):  # a header line every 50 ms: well under the deadline each time
            if select.select([c.sock], [], [], 0.05)[0]:
                break  # the answer (or the close) is in
            try:
                c.sock.sendall(b"X-%d: v\r\n" % i)
            except OSError:
                break
        got = c.read_response()
        elapsed = time.monotonic() - start
    assert got.status == 408 and got.connection == b"close"
    assert 0.25 <= elapsed <= 2.5, elapsed


def test_trickled_request_within_header_timeout_passes(make_server):
    srv = make_server(header_timeout=1.0)
    with RawClient(srv.address) as c:
        data = build_request()
        c.parser.expect("GET")
        for i in range(0, len(data), 8):  # ~0.3 s in all
            c.sock.sendall(data[i:i + 8])
            time.sleep(0.05)
        assert c.read_response().status == 200


def test_body_not_complete_in_time_408(make_server):
    srv = make_server(header_timeout=0.3)
    with RawClient(srv.address) as c:
        start = time.monotonic()
        c.send(build_request("POST", "/echo", headers=[("Content-Length", "10")]) + b"12345", ["POST"])
        assert_error_and_close(c, 408)
    assert 0.25 <= time.monotonic() - start <= 2.5


def test_chunked_body_not_complete_in_time_408(make_server):
    srv = make_server(header_timeout=0.3)
    with RawClient(srv.address) as c:
        c.send(build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]) + b"5\r\nab", ["POST"])
        assert_error_and_close(c, 408)


def test_header_deadline_is_per_request(make_server):
    """The deadline starts at each request's first byte, not at the connection's."""
    srv = make_server(header_timeout=0.4, idle_timeout=5)
    with RawClient(srv.address) as c:
        for _ in range(3):
            assert c.request().status == 200
            time.sleep(0.25)  # three requests span > header_timeout in all


def test_header_deadline_starts_at_first_byte_after_idle(make_server):
    """On a keep-alive connection the deadline runs from the next request's first byte,
    not from the previous response."""
    srv = make_server(header_timeout=0.5, idle_timeout=5)
    with RawClient(srv.address) as c:
        assert c.request().status == 200
        time.sleep(0.4)
        start = time.monotonic()
        c.send(b"GET /api/health HTTP/1.1\r\n", ["GET"])
        assert_error_and_close(c, 408)
    assert 0.4 <= time.monotonic() - start <= 2.5


def test_silent_new_connection_closed_without_response(make_server):
    srv = make_server(header_timeout=0.3)
    with RawClient(srv.address) as c:
        start = time.monotonic()
        c.expect_eof(timeout=2)
    assert 0.25 <= time.monotonic() - start <= 2.5


# --- idle_timeout ----------------------------------------------------------------------------

def test_idle_keep_alive_closed_without_response(make_server):
    srv = make_server(idle_timeout=0.3, header_timeout=3)
    with RawClient(srv.address) as c:
        assert c.request().status == 200
        start = time.monotonic()
        c.expect_eof(timeout=2)
    assert 0.25 <= time.monotonic() - start <= 2.5


def test_idle_within_timeout_kept(make_server):
    srv = make_server(idle_timeout=1.0, header_timeout=3)
    with RawClient(srv.address) as c:
        for _ in range(3):
            assert c.request().status == 200
            time.sleep(0.3)
        assert c.request().status == 200


# --- send_timeout ------------------------------------------------------------------------------

def test_client_not_reading_is_closed_after_send_timeout(make_server):
    srv = make_server(send_timeout=0.3)
    # Small socket buffers on both sides so the 2 MiB response cannot sit in the kernel.
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    with RawClient(srv.address, rcvbuf=16384) as c:
        c.send(build_request("GET", "/big"), ["GET"])
        time.sleep(1.5)
        data, _reset = c.read_until_close(timeout=3)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert len(data) < (2 << 20), "the whole response arrived: the connection was not timed out"


def test_slow_reader_within_send_timeout_gets_everything(make_server):
    srv = make_server(send_timeout=1.0)
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    with RawClient(srv.address, rcvbuf=16384) as c:
        c.send(build_request("GET", "/big"), ["GET"])
        time.sleep(0.3)
        resp = c.read_response()
    assert resp.status == 200 and len(resp.body) == 2 << 20


# --- max_connections -> 503 + Retry-After -------------------------------------------------------

def test_max_connections_boundary_503(make_server):
    srv = make_server(max_connections=3)
    clients = [RawClient(srv.address) for _ in range(3)]
    try:
        for c in clients:
            assert c.request().status == 200  # the limit itself is served
        with RawClient(srv.address) as extra:
            extra.send(build_request(), ["GET"])
            resp = extra.read_response()
            assert resp.status == 503 and resp.header("retry-after") == b"1"
            assert resp.connection == b"close"
            extra.expect_eof()
        for c in clients:  # the admitted ones are unaffected
            assert c.request().status == 200
    finally:
        for c in clients:
            c.close()
    # Once one closes, a new connection is admitted (the teardown check waits for that too).
    deadline = time.monotonic() + 2
    while fetch(srv.address, build_request()).status != 200:
        assert time.monotonic() < deadline, "a slot freed by a close was never reused"
        time.sleep(0.05)


def test_max_connections_burst_all_rejected_cleanly(make_server):
    srv = make_server(max_connections=2)
    held = [RawClient(srv.address) for _ in range(2)]
    try:
        for c in held:
            assert c.request().status == 200
        extra = [RawClient(srv.address) for _ in range(30)]
        for c in extra:
            resp = c.read_response()  # answered on accept, before any request
            assert resp.status == 503 and resp.header("retry-after") == b"1"
            c.expect_eof()
            c.close()
        before = srv.counters()
        assert before["active"] == 2, before["active"]  # rejected connections never count
    finally:
        for c in held:
            c.close()


# --- pool_max: read buffers held by unfinished requests -> 503 past it ----------------------------

def test_pool_max_boundary_503(make_server):
    """ServerConfig.pool_max: `pool_max` connections may hold an unfinished request (a read
    buffer each); one more connection that needs a buffer is shed with 503 and closed."""
    srv = make_server(pool_size=1, pool_max=3, header_timeout=5)
    partial = b"GET /api/health HTTP/1.1\r\nHost: x\r\n"
    holders = [RawClient(srv.address) for _ in range(3)]
    try:
        for c in holders:
            c.sock.sendall(partial)  # each now holds a buffer
        time.sleep(0.1)
        for c in holders:
            assert c.still_open(0.01)  # the limit itself is fine
        with RawClient(srv.address) as extra:
            extra.send(build_request(), ["GET"])
            assert_error_and_close(extra, 503)
        assert srv.counters()["pool_exhausted"] >= 1
        holders[0].send(b"\r\n", ["GET"])  # completing a request returns its buffer
        assert holders[0].read_response().status == 200
        assert fetch(srv.address, build_request()).status == 200
    finally:
        for c in holders:
            c.close()


@pytest.mark.parametrize("field,value", [("max_request_line", 15), ("max_headers", 0), ("max_body", -1),
                                         ("header_timeout", 0), ("max_connections", 0)])
def test_config_rejects_out_of_range(field, value):
    from fastc1k import ConfigError, ServerConfig
    with pytest.raises(ConfigError, match=field):
        ServerConfig(**{field: value})


# --- lingering close after an error ------------------------------------------------------------

def test_lingering_close_is_bounded(server):
    """After an error the server discards input for up to 1 s, then closes for good."""
    with RawClient(server.address) as c:
        c.send(b"GET / HTTP/1.1\r\nBad\r\n\r\n", ["GET"])
        assert_error_and_close(c, 400)  # write side shut: EOF while we may still send
        start = time.monotonic()
        c.sock.sendall(b"more input the server discards")  # accepted: it is lingering
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - start < 4:
                c.sock.sendall(b"x" * 100)
                time.sleep(0.05)
    assert 0.5 <= time.monotonic() - start <= 2.5
