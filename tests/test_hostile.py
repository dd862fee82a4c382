"""Hostile input on both engines: each vector gets its documented status and a close,
the worker survives, and fds, connections and memory return to their baseline.

The vectors and their statuses are tests/hostile_vectors.py (the README's "HTTP
behaviour" table, row by row). Timing attacks (slowloris headers and bodies, silent
connection floods, clients that never read) use short timeouts; RST storms close with
SO_LINGER 0 mid-request and mid-response. `test_worker_survives_every_vector` runs the
server in a subprocess so that a crash shows as a dead pid rather than a dead pytest.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from _client import RawClient, build_request
from conftest import engine_and_backend
from hostile_vectors import LIMITS, VECTORS

pytestmark = pytest.mark.timeout(90)

from _env import SRC, stop_process  # noqa: E402  (the same fastc1k as this process)
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measurement helpers -----------------------------------------------------------------
def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def wait_until(pred, timeout: float = 3.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def assert_back_to_baseline(server, fds: int, timeout: float = 3.0) -> None:
    """The server closed every connection: no fd left over, `active` back to zero."""
    ok = wait_until(lambda: fd_count() <= fds and server.counters()["active"] == 0, timeout)
    assert ok, (f"not back to baseline after {timeout}s: fds {fd_count()} (baseline {fds}), "
                f"active {server.counters()['active']}")


def rst(sock: socket.socket) -> None:
    """Abortive close: SO_LINGER 0 makes close() send RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect(address, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(address, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Bytes until EOF within timeout: (bytes, closed). A reset counts as closed."""
    deadline = time.monotonic() + timeout
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, False
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return out, True
        if not data:
            return out, True
        out += data


def method_of(data: bytes) -> str:
    return "HEAD" if data.startswith(b"HEAD ") else "GET"


def check_vector(address, data: bytes, status: int, pieces: int = 1) -> None:
    """Send `data` (in `pieces` writes), expect `status`; errors must close cleanly."""
    with RawClient(address, timeout=5.0) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.parser.expect(method_of(data))
        cuts = sorted({len(data) * i // pieces for i in range(1, pieces)} | {len(data)})
        start = 0
        try:
            for cut in cuts:
                c.sock.sendall(data[start:cut])
                start = cut
                if cut < len(data):
                    time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest arrived: read the answer
        resp = c.read_response()
        assert resp.status == status, f"expected {status}, got {resp!r}"
        if status >= 400 and status not in (404, 405):
            assert resp.connection == b"close", f"{status} without Connection: close: {resp!r}"
            rest, reset = c.read_until_close(3.0)
            assert rest == b"", f"bytes after the error response: {rest[:200]!r}"
            assert not reset, "reset instead of a clean (lingering) close after the error response"
        else:
            assert c.still_open(0.05), "a valid request closed the connection"


# --- the vectors, one by one ------------------------------------------------------------
@pytest.fixture
def hserver(make_server):
    return make_server(**LIMITS)


@pytest.mark.parametrize("data,status", [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector(hserver, data, status):
    check_vector(hserver.address, data, status)


@pytest.mark.parametrize("data,status", [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector_split(hserver, data, status):
    """The same status when the bytes arrive in three reads (the incremental parser)."""
    check_vector(hserver.address, data, status, pieces=3)


def test_vectors_leave_no_trace(hserver):
    """Every vector once on a fresh server: afterwards no fd, connection or memory left."""
    check_vector(hserver.address, VECTORS[0][1], 200)   # warm-up: first-use allocations
    fds0 = fd_count()
    for _, data, status in VECTORS:
        check_vector(hserver.address, data, status)
    assert_back_to_baseline(hserver, fds0)
    counters = hserver.counters()
    assert counters["accepted"] == counters["closed"], counters


def test_error_then_pipelined_request_is_not_answered(hserver):
    """Smuggling: bytes after a rejected request are discarded, never parsed as a request."""
    smuggled = build_request("GET", "/static")
    for prefix in (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
                   b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n",
                   b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"):
        with RawClient(hserver.address) as c:
            c.send(prefix + b"0\r\n\r\n" + smuggled, ["POST"])
            resp = c.read_response()
            assert resp.status == 400 and resp.connection == b"close"
            rest, _ = c.read_until_close(3.0)
            assert rest == b"", f"the smuggled request was answered: {rest[:200]!r}"


# --- slow clients -------------------------------------------------------------------------
def _trickle_until_answer(sock: socket.socket, head: bytes, drip: bytes, every: float, limit: float):
    """Send head, then one drip every `every` s; return (response bytes, seconds) at EOF."""
    sock.sendall(head)
    t0 = time.monotonic()
    got = b""
    while time.monotonic() - t0 < limit:
        r, _, _ = select.select([sock], [], [], every)
        if r:
            data, closed = read_all(sock, 1.0)
            got += data
            if closed:
                return got, time.monotonic() - t0
        else:
            try:
                sock.sendall(drip)
            except (BrokenPipeError, ConnectionResetError):
                pass
    raise AssertionError(f"no answer within {limit}s of trickling; got {got[:200]!r}")


@pytest.mark.parametrize("kind", ["headers", "body-cl", "body-chunked"])
def test_slowloris(make_server, kind):
    """Trickled bytes do not extend the deadline: 408 and close at header_timeout."""
    srv = make_server(header_timeout=0.5)
    fds0 = fd_count()
    if kind == "headers":
        head, drip = b"GET /api/health HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n"
    elif kind == "body-cl":
        head, drip = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", b"x"
    else:
        head, drip = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n"
    others_ok = 0
    with connect(srv.address) as s:
        got, took = _trickle_until_answer(s, head, drip, 0.05, 5.0)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert b"\r\nConnection: close\r\n" in got
        assert 0.4 <= took <= 3.0, f"408 after {took:.2f}s with header_timeout 0.5s"
    with RawClient(srv.address) as c:   # the worker went on serving
        others_ok += c.request().status == 200
    assert others_ok == 1
    assert_back_to_baseline(srv, fds0)


def test_many_slowloris_do_not_block_others(make_server):
    srv = make_server(header_timeout=0.5)
    fds0 = fd_count()
    slow = [connect(srv.address) for _ in range(50)]
    for s in slow:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    with RawClient(srv.address) as c:
        for _ in range(20):
            assert c.request().status == 200
    for s in slow:
        got, closed = read_all(s, 3.0)
        assert closed and got.startswith(b"HTTP/1.1 408 "), got[:200]
        s.close()
    assert_back_to_baseline(srv, fds0)


def test_silent_connection_flood(make_server):
    """Connections that send nothing are closed at header_timeout without a response;
    meanwhile the worker serves others."""
    srv = make_server(header_timeout=0.5)
    fds0 = fd_count()
    t0 = time.monotonic()
    silent = [connect(srv.address) for _ in range(300)]
    served = 0
    with RawClient(srv.address) as c:
        for _ in range(50):
            served += c.request().status == 200
    assert served == 50
    for s in silent:
        got, closed = read_all(s, max(0.1, t0 + 4.0 - time.monotonic()))
        assert closed and got == b"", f"silent connection: closed={closed}, got {got[:100]!r}"
        s.close()
    assert_back_to_baseline(srv, fds0)
    assert srv.counters()['timeouts{kind="header"}'] >= 300


def test_over_max_connections_gets_503(make_server):
    srv = make_server(max_connections=20, header_timeout=2.0)
    fds0 = fd_count()
    held = [connect(srv.address) for _ in range(20)]
    time.sleep(0.1)  # accepted and counted
    with connect(srv.address) as s:
        got, closed = read_all(s, 3.0)
    assert closed and got.startswith(b"HTTP/1.1 503 "), got[:200]
    assert b"\r\nRetry-After: 1\r\n" in got and b"\r\nConnection: close\r\n" in got
    for s in held:
        s.close()
    assert_back_to_baseline(srv, fds0)


def test_client_that_never_reads(make_server):
    """Pipelined requests from a client that never reads: the server stops reading once
    4 x buffer_size of output is queued (so the client cannot push its whole pipeline),
    memory stays bounded, and send_timeout closes the connection."""
    srv = make_server(**{**LIMITS, "buffer_size": 16384}, send_timeout=1.0, header_timeout=5.0)
    fds0 = fd_count()
    RawClient(srv.address).request().status  # warm-up
    rss0 = rss()
    pipeline = build_request("GET", "/padded?q") * 2000   # 1 KiB responses: 28x amplification
    cap = 16 << 20
    sent_total = []
    socks = []
    for _ in range(4):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(srv.address)
        s.setblocking(False)
        socks.append(s)
    deadline = time.monotonic() + 3.0
    sent = [0] * len(socks)
    stalled_since = [None] * len(socks)
    while time.monotonic() < deadline and not all(st and time.monotonic() - st > 0.3 for st in stalled_since):
        progressed = False
        for i, s in enumerate(socks):
            if sent[i] >= cap:
                continue
            try:
                n = s.send(pipeline)
                sent[i] += n
                stalled_since[i] = None
                progressed = True
            except BlockingIOError:
                stalled_since[i] = stalled_since[i] or time.monotonic()
            except (BrokenPipeError, ConnectionResetError):
                stalled_since[i] = stalled_since[i] or time.monotonic()
        if not progressed:
            time.sleep(0.01)
    sent_total = sum(sent)
    growth = rss() - rss0
    # What the server may answer: what its kernel send buffer and the client's receive
    # buffer hold, plus the 4 x buffer_size it queues before it stops reading.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    bound = len(socks) * (wmem_max + (1 << 16) + 4 * 16384) // 1024
    answered = srv.counters()["requests"]
    assert answered < bound, f"the server kept reading clients that never read: {answered} requests answered"
    assert all(n < cap for n in sent), f"the server kept reading a client that never reads: sent {sent}"
    assert growth < 48 << 20, f"server memory grew {growth >> 20} MiB for 4 non-reading clients"
    # Nothing is read, so send_timeout (1 s) closes them: the server's fds come back.
    time.sleep(1.2)
    for s in socks:
        rst(s)
    assert_back_to_baseline(srv, fds0, timeout=4.0)
    assert sent_total > 0


# --- resets ---------------------------------------------------------------------------------
def test_rst_storm(make_server):
    """Resets mid-request, mid-body, after a pipeline and mid-response: the worker goes on,
    every connection is released."""
    srv = make_server()
    RawClient(srv.address).request()
    fds0 = fd_count()
    rss0 = rss()
    for round_ in range(3):
        socks = []
        for i in range(100):   # mid-request / mid-body / right after a pipelined burst
            s = connect(srv.address)
            kind = i % 4
            if kind == 0:
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost")
            elif kind == 1:
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
            elif kind == 2:
                s.sendall(build_request() * 50)
            # kind 3: connect and reset with nothing sent
            socks.append(s)
        for s in socks:
            rst(s)
        for _ in range(10):    # mid-response: a 2 MiB body, one read, reset
            s = connect(srv.address)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(build_request("GET", "/big"))
            s.recv(100)
            rst(s)
    with RawClient(srv.address) as c:
        assert c.request().status == 200
    assert_back_to_baseline(srv, fds0)
    assert rss() - rss0 < 32 << 20


# --- survival, pid and fds in a separate process --------------------------------------------
SERVER_SCRIPT = textwrap.dedent("""
    import sys
    from fastc1k import Routes, Server, ServerConfig
    routes = Routes()
    routes.handler("/echo", lambda req: b"%d" % len(req.body), methods=["GET", "POST"])
    srv = Server(ServerConfig(host="127.0.0.1", port=0, header_timeout=2.0, backend=sys.argv[2], **{limits!r}),
                 routes, engine=sys.argv[1])
    print(srv.address[1], flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *a: srv.stop(False))
    srv.serve_forever()
""")


def test_worker_survives_every_vector(engine):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(limits=LIMITS), *engine_and_backend(engine)],
                            stdout=subprocess.PIPE, env=env)
    try:
        port = int(proc.stdout.readline())
        address = ("127.0.0.1", port)
        for _, data, status in VECTORS:  # warm-up round: first-use allocations
            check_vector(address, data, status)
        time.sleep(0.2)
        fds0, rss0 = fd_count(proc.pid), rss(proc.pid)
        for _ in range(3):
            for _, data, status in VECTORS:
                check_vector(address, data, status)
                assert proc.poll() is None, f"the worker died (exit {proc.returncode}) on {data[:80]!r}"
        assert wait_until(lambda: fd_count(proc.pid) <= fds0, 3.0), \
            f"server fds {fd_count(proc.pid)} vs baseline {fds0}"
        growth = rss(proc.pid) - rss0
        assert growth < 4 << 20, f"server RSS grew {growth >> 10} KiB over 3 rounds of every vector"
        with RawClient(address) as c:
            assert c.request().status == 200
        assert proc.poll() is None
    finally:
        stop_process(proc)
