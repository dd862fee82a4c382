"""WSGI (PEP 3333) on both engines: environ, start_response, framing, streaming, errors,
Expect: 100-continue, limits, wsgi.file_wrapper, wsgiref.validate, Flask and Falcon."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from wsgiref.validate import validator

import h11
import pytest

import fastc1k
import wsgi_apps
from _client import RawClient
from conftest import engine_and_backend
from fastc1k import Routes

BIG_N = 4096  # x 64 KiB = 256 MiB


def _with_health(app):
    """The fixture's liveness probe (GET /api/health with a Content-Length) for any app."""
    def outer(environ, start_response):
        if environ["PATH_INFO"] == "/api/health":
            return wsgi_apps.plain(environ, start_response)
        return app(environ, start_response)
    return outer


@pytest.fixture
def wsgi_server(make_server):
    """make(app, validate=True): a server with `app` (wrapped in wsgiref.validate) mounted."""
    def make(app=wsgi_apps.plain, validate=True, builtin_prefix=None, **overrides):
        app = _with_health(validator(app) if validate else app)
        return make_server(Routes(wsgi=app, builtin_prefix=builtin_prefix), **overrides)
    return make


@pytest.fixture
def data_file(tmp_path, monkeypatch):
    path = tmp_path / "payload.bin"
    data = os.urandom(3 << 20) + b"tail"
    path.write_bytes(data)
    monkeypatch.setattr(wsgi_apps, "FILE_PATH", str(path))
    return data


class H11:
    """A strict client (h11 parses every response: chunked, Content-Length, HEAD)."""

    def __init__(self, address, timeout=10.0):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, method="GET", target="/", headers=(), body=b"", chunked=False):
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = list(headers) if any(k.lower() == "host" for k, _ in headers) else [("Host", "t"), *headers]
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        elif body:
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if chunked:
            for i in range(0, len(body), 1000):
                out += self.conn.send(h11.Data(data=body[i:i + 1000]))
        elif body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.sock.sendall(out)
        return self.response()

    def response(self):
        resp, data = None, bytearray()
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                data += ev.data
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in resp.headers}
        return resp.status_code, headers, bytes(data)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(server, target, method="GET", **kw):
    with H11(server.address) as c:
        return c.request(method, target, **kw)


def raw(server, data: bytes, timeout=5.0) -> bytes:
    """Send bytes, read until the server closes."""
    with socket.create_connection(server.address, timeout=timeout) as s:
        s.sendall(data)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


# --- environ -----------------------------------------------------------------------------
def test_environ_has_every_required_key(wsgi_server):
    srv = wsgi_server()
    status, _, body = get(srv, "/env?a=1&b=%20", method="POST", body=b"xyz",
                          headers=[("Content-Type", "text/x-test"), ("X-Multi", "one"), ("X-Multi", "two"),
                                   ("X_Spoof", "dropped"), ("User-Agent", "t/1")])
    assert status == 200
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "POST" and env["SCRIPT_NAME"] == "" and env["PATH_INFO"] == "/env"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["CONTENT_TYPE"] == "text/x-test" and env["CONTENT_LENGTH"] == "3"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (srv.address[0], str(srv.address[1]))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and int(env["REMOTE_PORT"]) > 0
    assert env["http"]["HTTP_X_MULTI"] == "one,two"
    assert env["http"]["HTTP_USER_AGENT"] == "t/1" and env["http"]["HTTP_HOST"] == "t"
    assert not any("SPOOF" in k for k in env["http"]), "a header name with '_' must not become a key"
    assert "HTTP_CONTENT_TYPE" not in env["http"] and "HTTP_CONTENT_LENGTH" not in env["http"]
    assert env["wsgi.version"] == [1, 0] and env["wsgi.url_scheme"] == "http"
    assert (env["wsgi.multithread"], env["wsgi.multiprocess"], env["wsgi.run_once"]) == (False, False, False)
    assert env["wsgi.input_terminated"] is True
    assert env["input"] and env["errors"] and env["file_wrapper"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_remote_addr_over_ipv6(engine):
    name, backend = engine_and_backend(engine)
    with fastc1k.running_server(engine=name, wsgi=wsgi_apps.plain, host="::1", backend=backend) as srv, \
            socket.create_connection(srv.address[:2], timeout=5) as s:
        s.sendall(b"GET /env HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        port = s.getsockname()[1]
    env = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["SERVER_NAME"]) == ("::1", str(port), "::1")


def test_path_info_is_percent_decoded_latin1(wsgi_server):
    srv = wsgi_server()
    resp = raw(srv, b"GET /caf%C3%A9/x%2Fy?q=%C3%A9 HTTP/1.0\r\n\r\n")
    assert b"404" in resp.split(b"\r\n", 1)[0]
    # the app's 404 page does not echo: ask /env under a decoded name
    status, _, body = get(srv, "/%65nv?q=%C3%A9")
    env = json.loads(body)
    assert status == 200 and env["PATH_INFO"] == "/env" and env["QUERY_STRING"] == "q=%C3%A9"

    def echo_path(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; charset=latin-1")])
        return [environ["PATH_INFO"].encode("latin-1")]
    srv2 = wsgi_server(echo_path)
    assert get(srv2, "/caf%C3%A9/x%2Fy")[2] == "/caf\u00c3\u00a9/x/y".encode("latin-1")
    assert get(srv2, "http://host.example/abs%41?z")[2] == b"/absA"


def test_absolute_form_authority_is_http_host(wsgi_server):
    srv = wsgi_server()
    resp = raw(srv, b"GET http://example.test:81/env?x=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
    env = json.loads(split_responses(resp)[0][1])
    assert (env["http"]["HTTP_HOST"], env["PATH_INFO"], env["QUERY_STRING"]) == ("example.test:81", "/env", "x=1")


def test_environ_is_exact_for_each_request_on_one_connection(wsgi_server):
    """Header names, values and paths seen before are reused (C: a cache): never a stale one."""
    srv = wsgi_server()
    long_name, long_value = "X-" + "n" * 60, "v" * 300
    with H11(srv.address) as c:
        for host, extra, path, want_path in [
                ("a.example", [("X-Dup", "same"), ("x-dup", "same")], "/env", "/env"),
                ("b.example", [("X-Dup", "other")], "/env/%20x", "/env/ x"),
                ("a.example", [(long_name, long_value), (long_name, "2")], "/env", "/env"),
                ("a.example", [("X-Dup", "")], "/env/%6E", "/env/n")]:
            status, _, body = c.request("GET", path, headers=[("Host", host), *extra])
            env = json.loads(body) if status == 200 else {}
            want = {"HTTP_HOST": host}
            for k, v in extra:
                key = "HTTP_" + k.upper().replace("-", "_")
                want[key] = want[key] + "," + v if key in want else v
            assert (status, env["http"], env["PATH_INFO"]) == (200, want, want_path)


def test_input_of_a_request_without_a_body_reads_empty(wsgi_server):
    srv = wsgi_server(validate=False)
    for _ in range(3):  # the app closes it each time: the next request's still reads
        status, _, body = get(srv, "/read-empty")
        assert (status, json.loads(body)) == (200, {"read": "", "line": "", "lines": [], "iter": []})


def test_http10_environ_and_no_body_content_length_absent(wsgi_server):
    srv = wsgi_server()
    resp = raw(srv, b"GET /env HTTP/1.0\r\n\r\n")
    env = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0" and env["CONTENT_LENGTH"] is None


# --- framing -------------------------------------------------------------------------------
def test_list_gets_content_length_and_generator_is_chunked(wsgi_server):
    srv = wsgi_server(validate=False)
    with H11(srv.address) as c:
        status, h, body = c.request("GET", "/list")
        assert (status, body, h.get("content-length")) == (200, b"hello world", "11")
        assert "transfer-encoding" not in h and h["server"] == "fastc1k" and "date" in h
        status, h, body = c.request("GET", "/gen")  # same connection: keep-alive
        assert (status, body, h.get("transfer-encoding")) == (200, b"one two three", "chunked")
        assert "content-length" not in h


def test_http10_generator_is_close_delimited(wsgi_server):
    srv = wsgi_server(validate=False)
    resp = raw(srv, b"GET /gen HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, body = resp.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head and b"chunked" not in head and b"Content-Length" not in head
    assert body == b"one two three"


def test_http10_keep_alive_with_known_length(wsgi_server):
    srv = wsgi_server(validate=False)
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"GET /list HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        time.sleep(0.2)
        data = s.recv(65536)
        assert b"Connection: keep-alive" in data and data.endswith(b"\r\n\r\nhello world")
        s.sendall(b"GET /list HTTP/1.0\r\n\r\n")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert b"Connection: close" in rest and rest.endswith(b"hello world")


@pytest.mark.parametrize("validate", [True, False])
def test_head_sends_the_get_headers_without_body(wsgi_server, validate):
    srv = wsgi_server(validate=validate)
    with H11(srv.address) as c:
        for path in ("/list", "/gen", "/length"):
            status, h, body = c.request("HEAD", path)
            _, got, _ = c.request("GET", path)
            h.pop("date"), got.pop("date")
            assert (status, body, h) == (200, b"", got)
        assert c.request("GET", "/list")[2] == b"hello world"  # the connection is still in sync


def test_content_length_from_app_is_kept_short_body_closes(wsgi_server):
    srv = wsgi_server(validate=False)
    wsgi_apps.CLOSED.clear()
    _, h, body = get(srv, "/length")
    assert (h["content-length"], body) == ("5", b"12345")
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.endswith(b"\r\n\r\n12345"), "a body short of its Content-Length ends with the close"
    assert "/short" in wsgi_apps.CLOSED


def test_iterable_whole_within_a_few_items_gets_its_close_once(wsgi_server):
    srv = wsgi_server(validate=False)
    wsgi_apps.CLOSED.clear()
    with H11(srv.address) as c:
        for n in (1, 2):
            status, h, body = c.request("GET", "/whole")
            assert (status, h["content-length"], body) == (200, "5", b"12345")
            assert wsgi_apps.CLOSED == ["/whole"] * n


def test_204_has_no_body_and_no_framing(wsgi_server):
    srv = wsgi_server()
    status, h, body = get(srv, "/empty")
    assert (status, body) == (204, b"") and "transfer-encoding" not in h


def test_write_callable_output_comes_first(wsgi_server):
    srv = wsgi_server()
    wsgi_apps.CLOSED.clear()
    assert get(srv, "/write")[2] == b"written then iterated"
    assert wsgi_apps.CLOSED == ["/write"]


def test_write_is_flow_controlled_not_bounded_by_write_max(wsgi_server, monkeypatch):
    """write() past wsgi.WRITE_BUFFER sends synchronously, so wsgi.WRITE_MAX (the bound of
    write() when it cannot: an io_uring send of the connection in flight) does not limit it."""
    srv = wsgi_server(validate=False)
    monkeypatch.setattr(fastc1k.wsgi, "WRITE_MAX", 1 << 20)
    status, _, body = get(srv, "/write-big")
    assert (status, body) == (200, wsgi_apps.BIG * 32)
    assert get(srv, "/list")[2] == b"hello world"


def split_responses(data: bytes) -> list[tuple[int, bytes]]:
    """Every response in `data` (read until the close), framed by h11, in order."""
    out = []
    while data:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")
        status, body = 0, bytearray()
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Response):
                status = ev.status_code
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
        out.append((status, bytes(body)))
        data = conn.trailing_data[0]
    return out


def test_pipelined_requests_around_a_stream_keep_order(wsgi_server, data_file):
    srv = wsgi_server(validate=False)
    req = b"GET /gen HTTP/1.1\r\nHost: t\r\n\r\nGET /list HTTP/1.1\r\nHost: t\r\n\r\n" \
          b"GET /big?2 HTTP/1.1\r\nHost: t\r\n\r\nGET /file HTTP/1.1\r\nHost: t\r\n\r\n" \
          b"GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    got = split_responses(raw(srv, req))
    assert [b for _, b in got] == [b"one two three", b"hello world", wsgi_apps.BIG * 2,
                                   open(wsgi_apps.FILE_PATH, "rb").read(), b"hello world"]


def test_slow_app_responses_keep_order_and_close(wsgi_server):
    srv = wsgi_server(validate=False)
    with H11(srv.address) as c:
        for _ in range(3):
            assert c.request("GET", "/slow")[2] == b"slow"
    req = b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /slow-gen HTTP/1.1\r\nHost: t\r\n\r\n" \
          b"GET /list HTTP/1.1\r\nHost: t\r\n\r\nGET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    got = split_responses(raw(srv, req))
    assert got == [(200, b"slow"), (200, b"slow stream"), (200, b"hello world"), (200, b"slow")]


def test_slow_responses_pipelined_on_concurrent_connections_arrive_whole_in_order(wsgi_server):
    """Slow responses (C epoll: sent together at the end of the event round) of every size: one
    piece, several, past the 64 KiB flush, 1 MiB (the socket fills: the rest waits for EPOLLOUT)."""
    srv = wsgi_server(validate=False)
    sizes = [0, 3000, 70000, 1 << 20, 10]
    want, got = {}, {}

    def client(k):
        reqs = [b"GET /slow?ms=1&id=%d.%d.&n=%d HTTP/1.1\r\nHost: t\r\n%s\r\n"
                % (k, i, n, b"Connection: close\r\n" if i == len(sizes) - 1 else b"")
                for i, n in enumerate(sizes)]
        want[k] = [(200, b"%d.%d.slow" % (k, i) + b"z" * n) for i, n in enumerate(sizes)]
        got[k] = split_responses(raw(srv, b"".join(reqs), timeout=10))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(got) == list(range(6))
    for k in range(6):
        assert [(s, len(b)) for s, b in got[k]] == [(s, len(b)) for s, b in want[k]] and got[k] == want[k]


def test_a_round_of_many_ready_connections_is_answered_whole_and_in_order(wsgi_server):
    """While one slow call holds the worker, 40 connections send (pipelined pairs, one that
    resets at once, one half a head): the next round finds them all ready at once (C epoll,
    after a slow app call: up to READ_AHEAD reads before their apps run) and answers each in
    order; the reset one leaks no connection, the half head is answered once it is whole."""
    srv = wsgi_server(validate=False)
    blocker = socket.create_connection(srv.address, timeout=10)
    blocker.sendall(b"GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.05)  # the worker is in the app now
    socks = [socket.create_connection(srv.address, timeout=10) for _ in range(40)]
    for k, s in enumerate(socks):
        s.sendall(b"GET /slow?ms=1&id=%d.a. HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"GET /slow?ms=1&id=%d.b. HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % (k, k))
    gone = socket.create_connection(srv.address, timeout=10)
    gone.sendall(b"GET /slow?ms=0 HTTP/1.1\r\nHost: t\r\n\r\n")
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()  # a reset in the same round as the others
    half = socket.create_connection(srv.address, timeout=10)
    half.sendall(b"GET /slow?ms=0&id=half. HTTP/1.1\r\nHo")
    try:
        for k, s in enumerate(socks):
            out = bytearray()
            while chunk := s.recv(65536):
                out += chunk
            assert split_responses(bytes(out)) == [(200, b"%d.a.slow" % k), (200, b"%d.b.slow" % k)]
        half.sendall(b"st: t\r\nConnection: close\r\n\r\n")
        assert split_responses(half.recv(65536)) == [(200, b"half.slow")]
        assert split_responses(blocker.recv(65536)) == [(200, b"slow")]
    finally:
        for s in (*socks, half, blocker):
            s.close()
    deadline = time.monotonic() + 3
    while (k := srv.counters())["accepted"] - k["closed"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert k["accepted"] - k["closed"] == 0


@pytest.mark.parametrize("slow", [True, False])
def test_reading_ahead_holds_a_bounded_number_of_buffers(wsgi_server, slow):
    """100 connections ready at once after a slow call: a slow app's reads (C epoll: after
    SLOW_STREAK slow calls in a row) go ahead of its calls, READ_AHEAD at a time, so at most
    that many buffers are held at once; a fast app's connections are read and answered one
    by one (one buffer): one slow call (a cold start) does not make an app slow."""
    srv = wsgi_server(validate=False)
    if not hasattr(srv.worker, "pool_stats"):
        pytest.skip("no buffer pool in this engine")
    ahead = 1
    if srv.engine_name == "c" and slow:
        from fastc1k import _core
        ahead = _core.MAX_READ_AHEAD
    blocker = socket.create_connection(srv.address, timeout=10)
    blocker.sendall(b"GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.05)
    socks = [socket.create_connection(srv.address, timeout=10) for _ in range(100)]
    try:
        for k, s in enumerate(socks):
            target = b"/slow?ms=1&id=%d." % k if slow else b"/list"
            s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target)
        for k, s in enumerate(socks):
            assert split_responses(s.recv(65536)) == [(200, b"%d.slow" % k if slow else b"hello world")]
    finally:
        for s in (*socks, blocker):
            s.close()
    peak = srv.worker.pool_stats[2]
    assert peak <= ahead + 2, peak


def test_slow_response_to_a_slow_reader_is_whole(wsgi_server):
    """A slow app's 8 MiB answer to a client that reads late: the round's send fills the socket,
    the rest goes out on EPOLLOUT."""
    srv = wsgi_server(validate=False)
    with socket.create_connection(srv.address, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # 8 MiB cannot sit in the socket
        s.sendall(b"GET /slow?n=%d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % (8 << 20))
        time.sleep(0.3)
        data = bytearray()
        while chunk := s.recv(1 << 20):
            data += chunk
    assert split_responses(bytes(data)) == [(200, b"slow" + b"z" * (8 << 20))]


def test_connection_close_after_a_slow_response_closes_at_once(wsgi_server):
    srv = wsgi_server(validate=False)
    with RawClient(srv.address) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", ["GET"])
        resp = c.read_response()
        assert (resp.status, resp.body, resp.connection) == (200, b"slow", b"close")
        c.expect_eof()
        time.sleep(0.3)
        k = srv.counters()
        assert k["accepted"] - k["closed"] == 0  # closed, not lingering, while this client holds its end


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_client_gone_before_a_slow_response_leaks_nothing(wsgi_server):
    """The client resets while the app runs: the response's send fails, the connection is
    closed (its fd too), and the worker goes on."""
    srv = wsgi_server(validate=False)
    assert get(srv, "/list")[0] == 200
    fds = _open_fds()
    for _ in range(3):
        with RawClient(srv.address) as c:
            c.send(b"GET /slow?ms=100&n=100000 HTTP/1.1\r\nHost: t\r\n\r\n", ["GET"])
            time.sleep(0.02)
            c.reset()
    deadline = time.monotonic() + 3
    while (k := srv.counters())["accepted"] - k["closed"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert k["accepted"] - k["closed"] == 0 and _open_fds() <= fds
    assert get(srv, "/slow")[2] == b"slow"


# --- errors ----------------------------------------------------------------------------------
def _errors_logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "fastc1k"]


@pytest.mark.parametrize("path", ["/raise", "/gen-fail-early", "/bad/non-latin1", "/bad/crlf", "/bad/hop",
                                  "/bad/te", "/bad/status", "/bad/status-digits", "/bad/not-tuple",
                                  "/bad/bytes-header", "/bad/twice", "/str-body", "/no-start", "/exc-info-late",
                                  "/whole-fail", "/whole-str"])
def test_app_errors_are_500_logged_once_and_the_worker_goes_on(wsgi_server, caplog, path):
    srv = wsgi_server(validate=False)
    caplog.set_level(logging.ERROR, logger="fastc1k")
    wsgi_apps.CLOSED.clear()
    for n in (1, 2):  # twice: the second time its head (when valid) is a cache hit (C: _StartResponse)
        with H11(srv.address) as c:
            status, h, body = c.request("GET", path)
        assert status == 500 and b"never sent" not in body and b"Injected" not in body
        errs = _errors_logged(caplog)
        assert len(errs) == n and errs[-1].exc_info is not None, [r.getMessage() for r in errs]
        assert get(srv, "/list")[0] == 200
        if path in ("/gen-fail-early", "/whole-fail", "/whole-str"):
            assert wsgi_apps.CLOSED == [path] * n
        assert srv.counters()["handler_errors"] == n


def test_exc_info_before_the_body_replaces_the_status(wsgi_server):
    srv = wsgi_server(validate=False)
    status, _, body = get(srv, "/exc-info")
    assert (status, body) == (503, b"replaced")


def test_failure_mid_stream_closes_the_connection_and_calls_close(wsgi_server, caplog):
    srv = wsgi_server(validate=False)
    caplog.set_level(logging.ERROR, logger="fastc1k")
    wsgi_apps.CLOSED.clear()
    data = raw(srv, b"GET /gen-fail HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"5\r\nfirst\r\n" in data and not data.endswith(b"0\r\n\r\n")
    assert wsgi_apps.CLOSED == ["/gen-fail"]
    assert len(_errors_logged(caplog)) == 1


def test_client_gone_mid_stream_calls_close(wsgi_server):
    srv = wsgi_server(validate=False)
    wsgi_apps.CLOSED.clear()
    with socket.create_connection(srv.address) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big?4096 HTTP/1.1\r\nHost: t\r\n\r\n")
        s.recv(1000)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "/big" not in wsgi_apps.CLOSED and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wsgi_apps.CLOSED == ["/big"]


# --- request bodies ------------------------------------------------------------------------------
def test_chunked_request_body_is_decoded(wsgi_server):
    srv = wsgi_server()
    body = os.urandom(50_000)
    status, _, out = get(srv, "/echo", method="POST", body=body, chunked=True)
    got = json.loads(out)
    assert status == 200 and got["len"] == len(body) and got["md5"] == hashlib.md5(body).hexdigest()
    assert got["content_length"] == str(len(body))


def test_body_over_max_body_is_413(wsgi_server):
    srv = wsgi_server(max_body=1000)
    assert b" 413 " in raw(srv, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")[:20]
    chunked = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + b"x" * 1000 \
        + b"\r\n1\r\nx\r\n0\r\n\r\n"
    assert b" 413 " in raw(srv, chunked)[:20]
    assert get(srv, "/echo", method="POST", body=b"x" * 1000)[0] == 200


def _expect(srv, path: str, body: bytes, chunked: bool = False):
    s = socket.create_connection(srv.address, timeout=5)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n%s\r\n\r\n" % (path.encode(), framing))
    return s


def test_expect_100_continue_when_the_app_reads_the_body(wsgi_server):
    srv = wsgi_server()
    body = b"b" * 5000
    for chunked in (False, True):
        with _expect(srv, "/echo", body, chunked) as s:
            first = s.recv(100)
            assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"1388\r\n" + body + b"\r\n0\r\n\r\n" if chunked else body)
            s.sendall(b"GET /list HTTP/1.1\r\nHost: t\r\n\r\n")  # pipelined after the body
            data = b""
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"0\r\n\r\n"):
                data += s.recv(65536)
        assert json.loads(data.split(b"\r\n\r\n")[1].split(b"HTTP/1.1")[0])["len"] == 5000
        assert data.endswith(b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n")


def test_expect_100_continue_not_sent_when_the_app_does_not_read(wsgi_server):
    srv = wsgi_server()
    with _expect(srv, "/unread", b"x" * 100) as s:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in data
    assert b"Connection: close" in data  # the body it may still send is not read


# --- file_wrapper, streaming, memory ---------------------------------------------------------------
def test_file_wrapper_is_sent_with_sendfile(wsgi_server, data_file, monkeypatch):
    srv = wsgi_server(validate=False)
    calls = []
    real = os.sendfile

    def counting(*a):
        calls.append(a[3])
        return real(*a)
    monkeypatch.setattr(os, "sendfile", counting)
    status, h, body = get(srv, "/file")
    assert status == 200 and body == data_file and h["content-length"] == str(len(data_file))
    assert calls and "transfer-encoding" not in h
    status, h, body = get(srv, "/file", method="HEAD")
    assert (status, body, h["content-length"]) == (200, b"", str(len(data_file)))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stalled_download(srv, request: bytes, want: int, rcvbuf: int = 0) -> tuple[int, int]:
    """Send `request`, read nothing for 0.5 s, then read the body's `want` bytes: (bytes of body
    received, peak growth of this process's RSS meanwhile; the server runs in a thread here)."""
    base, peak = _rss(), [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    total = 0
    try:
        with socket.create_connection(srv.address, timeout=30) as s:
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.sendall(request)
            time.sleep(0.5)  # stalled: the server must stop producing
            head = s.recv(4096)
            total = len(head.split(b"\r\n\r\n", 1)[1])
            buf = bytearray(1 << 20)
            while total < want:
                n = s.recv_into(buf)
                assert n, "closed early"
                total += n
    finally:
        stop.set()
        t.join()
    return total, peak[0] - base


def test_large_stream_to_a_slow_client_stays_out_of_memory(wsgi_server):
    """256 MiB streamed to a client that first stalls, then reads slowly: the server's
    memory stays flat."""
    srv = wsgi_server(validate=False, send_timeout=30.0)
    want = BIG_N * len(wsgi_apps.BIG)
    total, grew = stalled_download(srv, b"GET /big?%d HTTP/1.1\r\nHost: t\r\n\r\n" % BIG_N, want, 1 << 16)
    assert total == want
    assert grew < 48 << 20, f"RSS grew {grew >> 20} MiB while streaming 256 MiB"


# --- built-ins, validate ---------------------------------------------------------------------------
def test_builtins_only_under_the_prefix(wsgi_server):
    srv = wsgi_server(builtin_prefix="/_fastc1k")
    assert get(srv, "/_fastc1k/api/health")[2] == b'{"status":"ok"}'
    assert b"fastc1k_requests_total" in get(srv, "/_fastc1k/metrics")[2]
    assert get(srv, "/metrics")[2] == b"no such path\n"  # the app's, not ours
    plain = wsgi_server()
    assert get(plain, "/metrics")[0] == 404


# --- Flask and Falcon ------------------------------------------------------------------------------
def test_flask_app_end_to_end(wsgi_server, data_file, caplog):
    srv = wsgi_server(wsgi_apps.make_flask(), validate=False)  # werkzeug reads as validate forbids
    with H11(srv.address) as c:
        assert c.request("GET", "/")[::2] == (200, b"flask hello")
        status, h, body = c.request("GET", "/items/42?q=x")
        assert status == 200 and h["content-type"] == "application/json" and json.loads(body) == {"id": 42, "q": "x"}
        assert c.request("GET", "/nope")[0] == 404
        assert c.request("DELETE", "/")[0] == 405
        payload = json.dumps({"a": [1, 2, 3]}).encode()
        status, _, body = c.request("POST", "/json", [("Content-Type", "application/json")], payload)
        assert json.loads(body) == {"got": {"a": [1, 2, 3]}, "n": 1}
        status, _, body = c.request("POST", "/form", [("Content-Type", "application/x-www-form-urlencoded")],
                                    b"name=fast&n=1")
        assert json.loads(body) == {"name": "fast", "n": "1"}
        blob = os.urandom(100_000)
        status, _, body = c.request("POST", "/upload", [("Content-Type", "application/octet-stream")], blob,
                                    chunked=True)
        assert json.loads(body) == {"len": len(blob), "md5": hashlib.md5(blob).hexdigest()}
        status, h, body = c.request("GET", "/download")
        assert status == 200 and body == data_file
        status, h, body = c.request("GET", "/stream")
        assert body == b"".join(b"line %d\n" % i for i in range(100)) and h["transfer-encoding"] == "chunked"
        status, h, body = c.request("HEAD", "/")
        assert (status, body, h["content-length"]) == (200, b"", "11")
        caplog.set_level(logging.CRITICAL, logger="fastc1k_test_flask")
        assert c.request("GET", "/boom")[0] == 500  # Flask's own 500 page
        assert c.request("GET", "/")[2] == b"flask hello"


def test_falcon_app_end_to_end(wsgi_server, data_file):
    srv = wsgi_server(wsgi_apps.make_falcon(), validate=False)
    with H11(srv.address) as c:
        status, _, body = c.request("GET", "/things/x?q=1")
        assert status == 200 and json.loads(body) == {"name": "x", "q": "1"}
        status, _, body = c.request("POST", "/things/y", [("Content-Type", "application/json")], b'{"k": 2}')
        assert status == 201 and json.loads(body) == {"name": "y", "got": {"k": 2}}
        status, _, body = c.request("POST", "/things/z", [("Content-Type", "application/json")], b'{"k": 3}',
                                    chunked=True)
        assert status == 201 and json.loads(body) == {"name": "z", "got": {"k": 3}}
        assert c.request("GET", "/stream")[2] == b"a" * 1000 + b"b" * 1000
        assert c.request("GET", "/download")[2] == data_file
        assert c.request("HEAD", "/things/x")[::2] == (200, b"")
        assert c.request("GET", "/nowhere")[0] == 404
        assert c.request("GET", "/boom")[0] == 500
