"""Abusive and crowded traffic: deep pipelines without reading, half-close, resets,
1,000 concurrent keep-alive clients, and real clients (curl, http.client).

Many-socket tests use selectors with non-blocking sockets, not threads.
"""
from __future__ import annotations

import json
import selectors
import shutil
import socket
import subprocess
import threading
import time

import pytest

from _client import H11Client, HTTPConnection, RawClient, ResponseParser, build_request, fetch


def test_10000_pipelined_without_reading(make_server):
    """A client that pipelines 10,000 requests and reads nothing cannot grow server memory.

    With small socket buffers on both ends, the kernel holds little; a server that keeps
    reading while its output is unsent would take all ~300 KB of requests. Backpressure
    makes the client's sends block instead. Meanwhile other clients are served, and once
    the client reads, all 10,000 responses arrive, in order.
    """
    n = 10_000
    srv = make_server(max_request_line=1024, max_header_bytes=1024, buffer_size=4096)
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # inherited by accepted sockets
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    reqs = [build_request("GET", f"/padded?{i}") for i in range(n)]
    data = b"".join(reqs)
    c = RawClient(srv.address, rcvbuf=8192, sndbuf=8192)
    try:
        c.sock.setblocking(False)
        sent, stalled_since = 0, None
        deadline = time.monotonic() + 10
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += c.sock.send(data[sent:sent + 65536])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break  # the server has stopped reading us
                time.sleep(0.01)
        assert sent < len(data) / 2, f"server read {sent} of {len(data)} bytes without us reading a response"

        # Other clients are served while this one is stuck.
        for _ in range(3):
            assert fetch(srv.address, build_request()).status == 200

        # Now read everything (and send the rest) until every response is in.
        parser = ResponseParser()
        for _ in range(n):
            parser.expect("GET")
        got = 0
        sel = selectors.DefaultSelector()
        sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while got < n:
            assert time.monotonic() < deadline, f"only {got} of {n} responses arrived"
            for _key, ev in sel.select(1):
                if ev & selectors.EVENT_WRITE and sent < len(data):
                    try:
                        sent += c.sock.send(data[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    if sent == len(data):
                        sel.modify(c.sock, selectors.EVENT_READ)
                if ev & selectors.EVENT_READ:
                    chunk = c.sock.recv(262144)
                    assert chunk, f"server closed after {got} responses"
                    for resp in parser.feed(chunk):
                        assert resp.status == 200 and resp.body[:len(str(got)) + 1] == b"%d." % got, resp
                        got += 1
        sel.close()
    finally:
        c.close()


def test_half_close_still_answered(server):
    with RawClient(server.address) as c:
        c.send(build_request() + build_request("GET", "/static"), ["GET", "GET"])
        c.sock.shutdown(socket.SHUT_WR)
        first, second = c.read_responses(2)
        assert (first.status, second.body) == (200, b"hello\n")
        c.expect_eof()


def test_half_close_mid_request_closes_quietly(server):
    with RawClient(server.address) as c:
        c.sock.sendall(b"GET /api/health HTTP/1.1\r\nHo")
        c.sock.shutdown(socket.SHUT_WR)
        data, _reset = c.read_until_close(timeout=2)
    # Nothing to answer, or a 400 for the truncated request: never a hang.
    if data:
        parser = ResponseParser()
        [resp] = parser.feed(data)
        assert resp.status == 400 and not parser.buf


@pytest.mark.parametrize("partial", [
    b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Long: ",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000,
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
])
def test_reset_mid_request_others_served(server, partial):
    with RawClient(server.address) as other:
        assert other.request().status == 200
        for _ in range(20):
            c = RawClient(server.address)
            c.sock.sendall(partial)
            c.reset()
        assert other.request().status == 200  # a connection opened before the resets
        assert fetch(server.address, build_request()).status == 200  # and a new one


def test_reset_with_unsent_output(make_server):
    """The client resets while the server still holds a large response for it."""
    srv = make_server()
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    for _ in range(5):
        c = RawClient(srv.address, rcvbuf=16384)
        c.sock.sendall(build_request("GET", "/big") * 3)
        time.sleep(0.05)
        c.reset()
    with H11Client(srv.address) as h:
        assert h.request("GET", "/api/health").status == 200


def test_1000_concurrent_keep_alive_clients(make_server):
    n = 1000
    srv = make_server(header_timeout=20, idle_timeout=20)
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    parsers: dict[socket.socket, ResponseParser] = {}
    answered: dict[socket.socket, int] = {}
    request = build_request()
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(srv.address)
            socks.append(s)
            parsers[s] = ResponseParser()
            answered[s] = 0
        deadline = time.monotonic() + 40
        for rnd in (1, 2):  # the second round proves every connection was kept alive
            for s in socks:
                sel.register(s, selectors.EVENT_WRITE)
            pending = set(socks)
            while pending:
                assert time.monotonic() < deadline, f"round {rnd}: {len(pending)} of {n} clients unanswered"
                for key, ev in sel.select(1):
                    s = key.fileobj
                    if ev & selectors.EVENT_WRITE:
                        s.sendall(request)  # 40 bytes always fit in an empty send buffer
                        parsers[s].expect("GET")
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    chunk = s.recv(65536)
                    assert chunk, f"round {rnd}: server closed a keep-alive connection"
                    for resp in parsers[s].feed(chunk):
                        assert resp.status == 200 and resp.connection != b"close"
                        answered[s] += 1
                    assert answered[s] <= rnd
                    if answered[s] == rnd:
                        pending.discard(s)
                        sel.unregister(s)
        assert all(v == 2 for v in answered.values())
        assert srv.counters()["active"] >= n
    finally:
        sel.close()
        for s in socks:
            s.close()
    deadline = time.monotonic() + 3  # every closed connection is released (no leak)
    while srv.counters()["active"] > 0:
        assert time.monotonic() < deadline, f"{srv.counters()['active']} connections still counted active"
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(server):
    """`curl -i` prints the responses as received, so they go through h11 like any other."""
    url = server.url + "/api/health"

    def curl(*args: str, methods: tuple[str, ...] = ("GET",)) -> tuple[list, bytes]:
        out = subprocess.run(["curl", "-si", "--max-time", "5", *args], capture_output=True, timeout=10)
        assert out.returncode == 0, out.stderr
        parser = ResponseParser()
        for m in methods:
            parser.expect(m)
        got = parser.feed(out.stdout)
        assert len(got) == len(methods) and not parser.buf, out.stdout
        return got, out.stderr

    [resp], _ = curl(url)
    assert (resp.status, resp.body) == (200, b'{"status":"ok"}')
    assert resp.header("content-length") == b"15" and resp.header("content-type") == b"application/json"
    # Two URLs in one run reuse the connection.
    got, err = curl("-v", url, url, methods=("GET", "GET"))
    assert [r.body for r in got] == [b'{"status":"ok"}'] * 2 and b"Re-using existing connection" in err
    [resp], _ = curl("-0", "-d", "hello", server.url + "/echo", methods=("POST",))  # HTTP/1.0
    assert resp.body.startswith(b"5:")
    [resp], _ = curl("-I", url, methods=("HEAD",))
    assert resp.status == 200 and resp.header("content-length") == b"15"


def test_http_client_keep_alive_reuse(server):
    host, port = server.address
    conn = HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/api/health")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b'{"status":"ok"}')
        sock = conn.sock
        conn.request("POST", "/echo", body=b"abc")
        assert conn.getresponse().read().startswith(b"3:")
        conn.request("HEAD", "/api/data")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b""
        conn.request("GET", "/missing")
        r = conn.getresponse()
        assert r.status == 404 and r.read() == b"not found\n"
        assert conn.sock is sock, "http.client had to reconnect: keep-alive was not honoured"
        conn.check()
    finally:
        conn.close()


def test_many_threads_of_http_client(server):
    """A few blocking clients at once (the way test suites and scripts use the server)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn = HTTPConnection(*server.address, timeout=5)
            for _ in range(50):
                conn.request("GET", "/api/data")
                assert conn.getresponse().read().startswith(b'{"id":')
            conn.check()
            conn.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors[0]


def test_two_servers_in_one_process(make_server):
    """Engine state is per worker: two servers side by side keep separate ids and counters."""
    a, b = make_server(), make_server(max_connections=6)
    clients = [RawClient(s.address) for s in (a, b) for _ in range(5)]
    try:
        for rnd in range(20):
            for c in clients:
                assert c.request("GET", "/api/data").status == 200
        ids = {}
        for srv in (a, b):
            with RawClient(srv.address) as c:
                ids[srv] = json.loads(c.request("GET", "/api/data").body)["id"]
        assert ids[a] == ids[b] == 5 * 20 + 1
        assert a.counters()["accepted"] == b.counters()["accepted"] == 6
    finally:
        for c in clients:
            c.close()
