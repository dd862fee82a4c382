"""C-engine-only behaviour: it really loads, its counters move, its buffer pool sheds load
when exhausted, stop() is prompt, and a bounded run leaves no fd or memory growth.

The HTTP behaviour itself is the conformance suite's (run on both engines); these tests
cover what only the C engine has (the pool, the fixed-size connection table) or what must
be measured on it (fds, RSS, stop latency).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fastc1k
from fastc1k import Routes, ServerConfig, metrics, responses, running_server

from _client import RawClient, assert_error_and_close, build_request

pytestmark = pytest.mark.skipif(os.environ.get("FASTC1K_NO_EXTENSIONS") == "1",
                                reason="built without extensions")

CFG = dict(host="127.0.0.1", port=0, header_timeout=3.0, idle_timeout=5.0, send_timeout=5.0,
           graceful_timeout=0.5, backend="epoll")
HEALTH = build_request()  # GET /api/health, HTTP/1.1, keep-alive


@pytest.fixture(autouse=True, params=["epoll", "io_uring"])
def backend(request, monkeypatch) -> str:
    """Every test here runs on both backends of the C engine (CFG and the spawned servers)."""
    if request.param == "io_uring":
        why = _core().uring_unavailable()
        if why:
            pytest.skip(f"io_uring unavailable here: {why}")
    monkeypatch.setitem(CFG, "backend", request.param)
    return request.param


def _core():
    from fastc1k import _core
    return _core


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_engine_is_the_real_one():
    core = _core()
    assert core.ENGINE_READY is True and core.ENGINE_NAME == "c"
    assert fastc1k.load_engine("c") is core
    assert core.CONN_STRUCT_SIZE <= 64  # the per-connection table entry (memory per idle connection)


def test_layout_check_rejects_a_changed_metrics_layout(monkeypatch):
    core = _core()
    core._check_layout()  # what the import ran
    monkeypatch.setitem(metrics.IDX, "requests", metrics.IDX["requests"] + 1)
    with pytest.raises(ImportError, match="metrics layout"):
        core._check_layout()


def _bigger_error_table():
    bodies = dict(responses.ERROR_BODIES)
    bodies.update({s: b"x\n" for s in (201, 202, 204, 301, 302, 304, 403, 411, 417, 429)})
    return bodies


@pytest.mark.parametrize("target,name,value,message", [
    ("consts", "IOV_CAP", 512, "engine constants"),
    ("consts", "F_PAUSED", 1 << 14, "engine constants"),
    ("consts", "LINGER_MS", 2000, "engine constants"),
    ("responses", "ERROR_BODIES", None, "error-response table"),
    ("responses", "KEEPS_CONNECTION", frozenset({404, 405, 400}), "keeps the connection"),
    ("metrics", "PARSE_ERROR_STATUS", {"bad_request": 400}, "parse-error map"),
])
def test_layout_check_rejects_any_shared_constant_changed(monkeypatch, target, name, value, message):
    """Every constant both engines share is checked when the C engine is imported: a change
    on one side fails the import instead of diverging (or, for the tables C fills without a
    bounds check, writing past them)."""
    from fastc1k._core_py import consts
    core = _core()
    mod = {"consts": consts, "responses": responses, "metrics": metrics}[target]
    monkeypatch.setattr(mod, name, _bigger_error_table() if value is None else value)
    with pytest.raises(ImportError, match=message):
        core._check_layout()


def test_counters_move():
    with running_server(ServerConfig(**CFG), engine="c") as srv:
        with RawClient(srv.address) as c:
            c.send(HEALTH * 5, ["GET"] * 5)
            assert [r.status for r in c.read_responses(5)] == [200] * 5
            c.send(build_request(target="/nope"), ["GET"])
            assert c.read_response().status == 404
        with RawClient(srv.address) as c:
            c.send(b"GET / HTTP/9.9\r\n\r\n")
            assert_error_and_close(c, 505)
        deadline = time.monotonic() + 2
        while srv.counters()["closed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        k = srv.counters()
    assert k["pid"] == os.getpid() and k["engine"] == metrics.ENGINE_C and k["started_ms"] > 0
    assert k["accepted"] == 2 and k["closed"] == 2 and k["active"] == 0
    assert k["requests"] == 7
    assert k['responses{status="200"}'] == 5 and k['responses{status="404"}'] == 1
    assert k['responses{status="505"}'] == 1 and k['parse_errors{kind="bad_version"}'] == 1
    assert k["bytes_in"] == len(HEALTH) * 5 + len(build_request(target="/nope")) + len(b"GET / HTTP/9.9\r\n\r\n")
    assert k["bytes_out"] > 5 * 100
    assert k["loop_waits"] > 0 and k["loop_events"] >= 7
    lag = [k[f'loop_lag_bucket{{le_us="{1 << i}"}}'] for i in range(metrics.LAG_BUCKETS)]
    assert sum(lag) > 0 and k["loop_lag_max_us"] < 1 << 20
    assert k["pool_size"] == ServerConfig().pool_size and k["pool_in_use"] == 0 and k["pool_peak"] >= 1


def test_data_ids_count_up_and_metrics_render():
    with running_server(ServerConfig(**CFG), engine="c") as srv:
        with RawClient(srv.address) as c:
            c.send(build_request(target="/api/data") * 3, ["GET"] * 3)
            ids = [int(r.body.split(b'"id":')[1].split(b",")[0]) for r in c.read_responses(3)]
            c.send(build_request(target="/metrics"), ["GET"])
            text = c.read_response().body.decode()
    assert ids == [1, 2, 3]
    assert "fastc1k_requests_total 4" in text and 'fastc1k_loop_lag_p99_us{worker="%d"}' % os.getpid() in text


def _partial(address):
    """A connection holding an unfinished request, hence a pool buffer."""
    c = RawClient(address)
    c.send(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    return c


def _wait(pred, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_pool_grows_in_slabs_then_sheds_load_with_503():
    with running_server(ServerConfig(**CFG, pool_size=2, pool_max=5), engine="c") as srv:
        w = srv.worker
        assert w.pool_stats[:2] == (2, 2)
        held = [_partial(srv.address) for _ in range(5)]
        _wait(lambda: srv.counters()["pool_in_use"] == 5)
        total, free, peak, slabs = w.pool_stats
        assert (total, free, peak, slabs) == (5, 0, 5, 3)  # slabs of 2, 2, then 1 (capped)
        with RawClient(srv.address) as c:  # a 6th request finds the pool at pool_max
            c.send(HEALTH, ["GET"])
            resp = assert_error_and_close(c, 503)
            assert resp.header("retry-after") == b"1"
        k = srv.counters()
        assert k["pool_exhausted"] == 1 and k['responses{status="503"}'] == 1
        for c in held:  # the held requests complete normally
            c.send(b"\r\n", ["GET"])
            assert c.read_response().status == 200
        _wait(lambda: srv.counters()["pool_in_use"] == 0)
        with RawClient(srv.address) as c:
            assert c.request().status == 200
        for c in held:
            c.close()
        assert srv.counters()["pool_peak"] == 5 and srv.counters()["pool_size"] == 5


def test_idle_keep_alive_connection_holds_no_buffer():
    with running_server(ServerConfig(**CFG), engine="c") as srv:
        clients = [RawClient(srv.address) for _ in range(20)]
        for c in clients:
            assert c.request().status == 200
        _wait(lambda: srv.counters()["active"] == 20)
        assert srv.counters()["pool_in_use"] == 0
        for c in clients:
            c.close()


def _serve_in_thread(**overrides):
    srv = fastc1k.Server(ServerConfig(**{**CFG, **overrides}), engine="c")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    with RawClient(srv.address) as c:  # the loop is running
        assert c.request().status == 200
    return srv, t


@pytest.mark.parametrize("graceful", [False, True])
def test_stop_returns_within_100ms(graceful):
    srv, t = _serve_in_thread()
    idle = None
    if not graceful:
        idle = RawClient(srv.address)
        assert idle.request().status == 200  # a hard stop does not wait for anyone
    t0 = time.monotonic()
    srv.stop(graceful)
    t.join(1)
    elapsed = time.monotonic() - t0
    assert not t.is_alive() and elapsed < 0.1, f"stop took {elapsed * 1000:.0f} ms"
    if idle is not None:
        idle.expect_eof()
        idle.close()
    srv.close()


def test_graceful_stop_gives_idle_connections_a_short_grace():
    """As the pure engine: idle connections stay open min(0.5 s, graceful_timeout / 2) so a
    request already on its way is answered (with close), then they are closed."""
    srv, t = _serve_in_thread(graceful_timeout=0.4)  # grace 0.2 s
    idle, late = RawClient(srv.address), RawClient(srv.address)
    assert idle.request().status == 200 and late.request().status == 200
    t0 = time.monotonic()
    srv.stop(True)
    time.sleep(0.05)
    resp = late.request()
    assert resp.status == 200 and resp.header("connection") == b"close"
    late.expect_eof()
    late.close()  # ends the lingering close
    t.join(1)
    elapsed = time.monotonic() - t0
    assert not t.is_alive() and 0.15 < elapsed < 0.2 + 0.25, f"graceful stop took {elapsed * 1000:.0f} ms"
    idle.expect_eof()
    idle.close()
    srv.close()


def test_graceful_stop_answers_the_request_in_flight_with_close():
    srv, t = _serve_in_thread(graceful_timeout=2.0)
    c = _partial(srv.address)
    _wait(lambda: srv.counters()["pool_in_use"] == 1)
    srv.stop(True)
    time.sleep(0.1)
    assert t.is_alive()  # waiting for the request in flight
    c.send(b"\r\n", ["GET"])
    resp = c.read_response()
    assert resp.status == 200 and resp.header("connection") == b"close"
    c.expect_eof()
    c.close()  # ends the lingering close; the loop then has nothing left and returns
    t.join(1)
    assert not t.is_alive()
    srv.close()


def test_stop_before_run_and_twice():
    srv = fastc1k.Server(ServerConfig(**CFG), engine="c")
    srv.stop(False)
    srv.stop(False)
    t0 = time.monotonic()
    srv.serve_forever()  # returns at once: the stop is already pending
    assert time.monotonic() - t0 < 0.1
    srv.close()
    srv.stop()  # after close: a no-op, not a crash


def test_backpressure_stops_reading_until_the_client_drains():
    routes = Routes()
    big = b"x" * 65536
    routes.static("/big", big)
    n = 400
    req = build_request(target="/big")
    with running_server(ServerConfig(**CFG), routes, engine="c") as srv:
        with RawClient(srv.address) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.sock.sendall(req * 40)
            sender = threading.Thread(target=lambda: c.sock.sendall(req * (n - 40)), daemon=True)
            sender.start()
            time.sleep(0.3)
            k = srv.counters()
            # ~26 MB of answers asked for, the client reads nothing: the server stops
            # reading (and parsing) after its socket buffers fill
            assert k["requests"] < n and k["bytes_out"] < 16 << 20
            got = 0
            expect = n * (len(big))
            c.sock.settimeout(5)
            buf = bytearray()
            bodies = 0
            while bodies < n:
                data = c.sock.recv(1 << 20)
                assert data, "closed early"
                buf += data
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0 or len(buf) < end + 4 + len(big):
                        break
                    assert buf.startswith(b"HTTP/1.1 200 OK\r\n")
                    assert buf[end + 4:end + 4 + len(big)] == big
                    del buf[:end + 4 + len(big)]
                    bodies += 1
                    got += len(big)
            sender.join(5)
            assert got == expect and not buf
        assert srv.counters()["requests"] == n


def _hammer(address, requests: int, cycles: int) -> None:
    """`requests` keep-alive requests (pipelined 100 at a time on 4 connections), then
    `cycles` connection open / one request / close cycles."""
    probe = socket.create_connection(address)
    probe.sendall(HEALTH)
    one = probe.recv(4096)
    probe.close()
    assert one.startswith(b"HTTP/1.1 200 OK")
    rlen = len(one)  # every answer has the same length (the Date line is fixed-size)
    batch = 100
    socks = [socket.create_connection(address) for _ in range(4)]
    left = requests
    while left > 0:
        k = min(batch, left)
        for s in socks:
            s.sendall(HEALTH * k)
        for s in socks:
            need = k * rlen
            while need:
                data = s.recv(min(need, 1 << 20))
                assert data
                need -= len(data)
        left -= k * len(socks)
    for s in socks:
        s.close()
    for _ in range(cycles):
        s = socket.create_connection(address)
        s.sendall(HEALTH)
        need = rlen
        while need:
            data = s.recv(need)
            assert data
            need -= len(data)
        s.close()


def _growth_run(requests: int, cycles: int) -> None:
    with running_server(ServerConfig(**CFG, max_connections=100000), engine="c") as srv:
        _hammer(srv.address, requests // 10, cycles // 10)  # warm up: pool, table, allocator
        _wait(lambda: srv.counters()["active"] == 0)
        fds, rss = _fds(), _rss_kb()
        _hammer(srv.address, requests, cycles)
        _wait(lambda: srv.counters()["active"] == 0)
        k = srv.counters()
        assert _fds() == fds, "fd growth"
        grown = _rss_kb() - rss
        assert grown < 2048, f"RSS grew {grown} kB over {requests} requests and {cycles} connections"
        assert k["requests"] >= requests + cycles and k["pool_in_use"] == 0
        assert k["accepted"] == k["closed"]


def test_no_fd_or_memory_growth():
    _growth_run(200_000, 20_000)


@pytest.mark.slow
def test_no_fd_or_memory_growth_long():
    _growth_run(1_000_000, 100_000)


SERVER_SCRIPT = textwrap.dedent("""
    import os, resource, sys, threading
    sys.path.insert(0, {src!r})
    import fastc1k
    from fastc1k import ServerConfig
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    srv = fastc1k.Server(ServerConfig(host="127.0.0.1", port=0, max_connections=100000, backend=sys.argv[2]),
                         engine="c")
    print(srv.address[1], flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), srv.stop(False)), daemon=True).start()
    srv.serve_forever()
    k = srv.counters()
    print(k["accepted"], k["accept_paused"], k["loop_waits"], flush=True)
""")


def _spawn(limit: int):
    src = os.path.join(os.path.dirname(fastc1k.__file__), os.pardir)
    p = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(src=os.path.abspath(src)), str(limit),
                          CFG["backend"]],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    return p, ("127.0.0.1", port)


def test_out_of_fds_pauses_accepting_without_spinning():
    p, addr = _spawn(64)
    try:
        socks = []
        for _ in range(120):  # more than the server's fd limit: the backlog holds the rest
            socks.append(socket.create_connection(addr))
        time.sleep(0.5)
        cpu0 = _cpu(p.pid)
        time.sleep(0.5)
        spent = _cpu(p.pid) - cpu0
        assert spent < 0.2, f"server spun at EMFILE: {spent:.2f} s CPU in 0.5 s"
        for s in socks[:100]:
            s.close()
        time.sleep(0.3)  # the pause ends, the backlog is accepted
        s = socks[-1]
        s.settimeout(3)
        s.sendall(HEALTH)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        for s in socks[100:]:
            s.close()
    finally:
        out, _ = p.communicate("", timeout=10)
    accepted, paused, waits = map(int, out.split())
    assert paused >= 1 and accepted >= 120
    assert waits < 500, f"{waits} epoll_waits: the loop spun"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_memory_per_idle_connection():
    """RSS of a server process per idle keep-alive connection (goal: <= 128 B; the table
    entry is 64 B, the kernel socket is not RSS)."""
    p, addr = _spawn(20000)
    n = 2000
    try:
        socks = [socket.create_connection(addr)]
        socks[0].sendall(HEALTH)
        socks[0].recv(4096)
        time.sleep(0.2)
        rss0 = _rss_kb(p.pid)
        for _ in range(n):
            s = socket.create_connection(addr)
            s.sendall(HEALTH)
            socks.append(s)
        for s in socks[1:]:
            s.settimeout(3)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.2)
        per_conn = (_rss_kb(p.pid) - rss0) * 1024 / n
        for s in socks:
            s.close()
    finally:
        p.communicate("", timeout=10)
    print(f"memory per idle connection: {per_conn:.0f} B")
    assert per_conn <= 256, f"{per_conn:.0f} B of server RSS per idle connection"
