"""Deferred accept (`defer_accept`, TCP_DEFER_ACCEPT on the listener), on every engine.

The kernel hands a connection over with its first bytes, so the engines read them at once
(the C engine's epoll backend adds the connection to its event set only if it stays open).
What users rely on holds as without it: responses whole, then a clean close when the
request said Connection: close; nothing answered after that request; keep-alive goes on;
a large response to a slow reader is delivered; a silent client still meets the header
timeout; no connection left counted.
"""
from __future__ import annotations

import socket
import time

import pytest

from conftest import BIG_BODY, ENGINES
from _client import RawClient, build_request
from fastc1k import ServerConfig
from fastc1k.capacity.nginx import nginx_conf

pytestmark = pytest.mark.timeout(60)

TCP_DEFER_ACCEPT = getattr(socket, "TCP_DEFER_ACCEPT", 9)
CLOSE = [("Connection", "close")]
all_engines = pytest.mark.parametrize("engine", ENGINES, indirect=True)


def _closed_all(srv, n: int, within: float = 3.0) -> dict:
    deadline = time.monotonic() + within
    while (k := srv.counters())["closed"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return k


def test_config_and_nginx_mirror(tmp_path):
    assert ServerConfig().defer_accept == 0
    assert ServerConfig(defer_accept=2).defer_accept == 2
    with pytest.raises(ValueError, match="defer_accept"):
        ServerConfig(defer_accept=-1)
    # the bench's nginx gets the same listener option as fastc1k, or none
    assert " deferred;" in nginx_conf(str(tmp_path), 8080, config=ServerConfig(defer_accept=1))
    assert "deferred" not in nginx_conf(str(tmp_path), 8080, config=ServerConfig())


@all_engines
def test_listener_defers_only_when_asked(make_server):
    on, off = make_server(defer_accept=1), make_server()
    assert on.sock.getsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT) > 0
    assert off.sock.getsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT) == 0


@all_engines
def test_close_requests_answered_whole_then_clean_close(make_server):
    srv = make_server(defer_accept=1)
    paths = ("/api/health", "/api/data", "/static", "/echo", "/missing") * 4
    for path in paths:
        with RawClient(srv.address) as c:
            r = c.request("GET", path, headers=CLOSE)
            assert r.status == (404 if path == "/missing" else 200) and r.connection == b"close"
            c.expect_eof()
    k = _closed_all(srv, len(paths))
    assert k["accepted"] == k["closed"] == len(paths) and k["active"] == 0


@all_engines
def test_nothing_answered_after_a_close_request(make_server):
    srv = make_server(defer_accept=1)
    with RawClient(srv.address) as c:
        c.send(build_request(headers=CLOSE) + build_request("GET", "/static"), ["GET"])
        assert c.read_response().status == 200
        rest, _ = c.read_until_close()
        assert rest == b""  # the pipelined request is not answered (a reset may follow: unread input)


@all_engines
def test_keep_alive_goes_on_after_the_first_read(make_server):
    srv = make_server(defer_accept=1)
    with RawClient(srv.address) as c:
        for path in ("/api/health", "/echo", "/static"):
            assert c.request("GET", path).status == 200
        assert c.still_open()
        assert c.request("GET", "/api/health", headers=CLOSE).status == 200
        c.expect_eof()


@all_engines
@pytest.mark.parametrize("close", [False, True])
def test_large_response_to_a_slow_reader(make_server, close):
    """The first read's response does not fit the socket: the engine waits for the client to
    drain it (on the C engine, from before the connection is in the event set)."""
    srv = make_server(defer_accept=1)
    with RawClient(srv.address, rcvbuf=16384) as c:
        c.send(build_request("GET", "/big", headers=CLOSE if close else None), ["GET"])
        time.sleep(0.3)
        r = c.read_response()
        assert r.status == 200 and r.body == BIG_BODY
        if close:
            c.expect_eof()
        else:
            assert c.request("GET", "/static").body == b"hello\n"


@all_engines
def test_silent_client_meets_the_header_timeout(make_server):
    """The kernel hands a silent connection over after about defer_accept seconds; the header
    timeout then closes it quietly, as it would have without deferring."""
    srv = make_server(defer_accept=1, header_timeout=0.3)
    t0 = time.monotonic()
    with RawClient(srv.address) as c:
        c.expect_eof(timeout=8.0)
    assert time.monotonic() - t0 < 8.0
    k = _closed_all(srv, 1)
    assert k["accepted"] == k["closed"] == 1 and k["active"] == 0


@all_engines
@pytest.mark.parametrize("defer", [0, 1])
def test_first_read_needs_no_readiness_event(make_server, engine, defer):
    """With deferred accept a request that came with its connection is answered from the
    accept itself: the listener's readiness is the only event per connection (io_uring: the
    accept's and the send's completions, no recv armed); without it the connection's own
    readiness comes too (one connection at a time: no batching)."""
    srv = make_server(defer_accept=defer)
    n = 20
    before = srv.counters()["loop_events"]
    for _ in range(n):
        with RawClient(srv.address) as c:
            c.request("GET", "/api/health", headers=CLOSE)
            c.expect_eof()
    events = srv.counters()["loop_events"] - before
    per = 2 if engine == "c-uring" else 1  # (io_uring: + the send's completion)
    assert (events <= per * n + 2) if defer else (events >= (per + 1) * n - 2), events
