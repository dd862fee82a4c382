"""fastc1k.load against small servers written here: framing, counts, error classes,
open loop, coordinated omission, many connections, histogram layout, the CLI.

Every server is a single-thread selectors loop on 127.0.0.1:0 whose answers are chosen by
``mode``; runs are 1-4 s.
"""
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

if os.environ.get("FASTC1K_NO_EXTENSIONS"):
    pytest.skip("the load generator needs its C extension", allow_module_level=True)

from hdrh.histogram import HdrHistogram  # noqa: E402

from fastc1k.load import LoadFarm, LoadSpec, run  # noqa: E402
from fastc1k.load import hist  # noqa: E402
from fastc1k.load._client import Client  # noqa: E402

BODY = b'{"status":"ok"}'


def _resp(status=200, body=BODY, extra=b""):
    reason = {200: b"OK", 503: b"Service Unavailable", 100: b"Continue"}.get(status, b"X")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, reason, len(body), extra) + body)


def _chunked(body=BODY):
    # several chunks, an extension and a trailer: the parser must find the end exactly
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Long-Header: " + b"x" * 600
            + b"\r\n\r\n4;ext=1\r\n" + body[:4] + b"\r\n" + b"%x\r\n" % (len(body) - 4) + body[4:]
            + b"\r\n0\r\nX-Trailer: t\r\n\r\n")


class Server(threading.Thread):
    """mode: ok | chunked | close | http10 | eof | continue | head-aware | status503 | split
    | garbage | never | rst | stall (stall_every s, stall_for s)."""

    def __init__(self, mode="ok", backlog=1024, stall_every=0.0, stall_for=0.0, host="127.0.0.1"):
        super().__init__(daemon=True)
        self.mode = mode
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(backlog)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/api/health"
        self.requests = 0
        self.methods = {}
        self.peers = set()
        self.accepted = 0
        self.stall_every, self.stall_for = stall_every, stall_for
        self._halt = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._halt = True
        self.join(5)

    def _answer(self, sock, method):
        m = self.mode[6:] if self.mode.startswith("split-") else self.mode
        if m == "chunked":
            return _chunked(), False
        if m == "close":
            return _resp(extra=b"Connection: close\r\n"), True
        if m == "http10":
            return b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\n" + BODY, True
        if m == "eof":
            return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY, True
        if m == "continue":
            return b"HTTP/1.1 100 Continue\r\n\r\n" + _resp(), False
        if m == "status503":
            return _resp(503, b"busy\n"), False
        if m == "garbage":
            return b"SMTP ready\r\n\r\n", False
        if m == "fuzz":
            return self._fuzzed(), False
        if m == "endless":
            return b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (3 << 20), False
        if method == "HEAD":
            return _resp()[:-len(BODY)], False        # headers say 15 bytes, none follow
        return _resp(), False

    def _fuzzed(self):
        # a valid response of some framing, then maybe mutated: bytes flipped, cut, repeated
        rnd = self.rnd
        good = rnd.choice([_resp(), _chunked(), _resp(503, b"x" * rnd.randrange(0, 3000)),
                           b"HTTP/1.1 100 Continue\r\n\r\n" + _resp(), _resp(204, b"")])
        b = bytearray(good)
        for _ in range(rnd.choice([0, 0, 1, 2, 8])):
            i = rnd.randrange(len(b))
            op = rnd.randrange(3)
            if op == 0:
                b[i] = rnd.randrange(256)
            elif op == 1:
                del b[i:i + rnd.randrange(1, 20)]
            else:
                b[i:i] = bytes(rnd.choice(b"\r\n:0123456789abcdefHTTP/ ,;") for _ in range(rnd.randrange(1, 9)))
        return bytes(b)

    def run(self):
        self.rnd = random.Random(1)
        sel = selectors.DefaultSelector()
        sel.register(self.lsock, selectors.EVENT_READ, None)
        bufs = {}
        next_stall = time.monotonic() + self.stall_every if self.stall_every else None
        while not self._halt:
            if next_stall and time.monotonic() >= next_stall:
                time.sleep(self.stall_for)
                next_stall += self.stall_every
            for key, _ in sel.select(0.02):
                if key.data is None:
                    while True:
                        try:
                            s, addr = self.lsock.accept()
                        except BlockingIOError:
                            break
                        self.accepted += 1
                        self.peers.add(addr[0])
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        bufs[s] = b""
                        sel.register(s, selectors.EVENT_READ, 1)
                    continue
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    bufs.pop(s, None)
                    continue
                if self.mode == "never":
                    continue
                buf = bufs[s] + data
                out = []
                closing = False
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buf[:end]
                    n = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            n = int(v)
                    if len(buf) < end + 4 + n:
                        break
                    buf = buf[end + 4 + n:]
                    method = head.split(b" ", 1)[0].decode()
                    self.requests += 1
                    self.methods[method] = self.methods.get(method, 0) + 1
                    if self.mode == "rst":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        closing = True
                        break
                    resp, closing = self._answer(s, method)
                    out.append(resp)
                    if closing:
                        break
                bufs[s] = buf
                payload = b"".join(out)
                try:
                    if self.mode.startswith("split"):
                        s.setblocking(True)
                        for i in range(0, len(payload), 7):   # 7-byte pieces, each its own segment
                            s.sendall(payload[i:i + 7])
                            time.sleep(0.0002)
                        s.setblocking(False)
                    elif payload:
                        s.setblocking(True)
                        s.sendall(payload)
                        s.setblocking(False)
                except OSError:
                    closing = True
                if closing:
                    sel.unregister(s)
                    s.close()
                    bufs.pop(s, None)
        for s in list(bufs):
            s.close()
        self.lsock.close()
        sel.close()

    def settle(self, want, timeout=3.0):
        """Wait until the server has read `want` requests (bytes in flight at stop)."""
        end = time.monotonic() + timeout
        while self.requests < want and time.monotonic() < end:
            time.sleep(0.02)
        return self.requests


def _run(url, **kw):
    kw.setdefault("duration", 0.6)
    kw.setdefault("connections", 4)
    return run(LoadSpec(url=url, **kw)).summary


# ---------------------------------------------------------------------------- framing

@pytest.mark.parametrize("mode", ["ok", "chunked", "split", "split-chunked", "continue"])
def test_framing_keep_alive(mode):
    # split: every 7 bytes its own segment, so lines (and a 600-byte header) span reads
    with Server(mode) as srv:
        s = _run(srv.url, connections=3, pipeline=1 if mode.startswith("split") else 2)
    assert s["requests"] > 10, s
    assert s["ok"] == s["requests"] and s["errors"] == {}, s
    # framing stayed in sync: never a reconnect
    assert s["connects_ok"] == 3, s


@pytest.mark.parametrize("mode", ["close", "http10", "eof"])
def test_framing_connection_close(mode):
    with Server(mode) as srv:
        s = _run(srv.url, connections=3)
    assert s["requests"] > 10, s
    assert s["errors"] == {} and s["ok"] == s["requests"], s
    # one answer per connection, then a new connection
    assert abs(s["connects_ok"] - s["requests"]) <= 3, s


def test_head_and_post_mix():
    with Server("ok") as srv:
        s = _run(srv.url, connections=4, pipeline=4,
                 requests=[("GET", "/a", None, 2), ("HEAD", "/a", None, 1), ("POST", "/b", b"x" * 3000, 1)])
        srv.settle(s["sent"])
    assert s["errors"] == {} and s["requests"] > 100, s
    m = srv.methods
    total = sum(m.values())
    assert total == s["sent"]
    # weights 2:1:1, within rounding of the 1000-slot mix table
    assert abs(m["GET"] / total - 0.5) < 0.05 and abs(m["HEAD"] / total - 0.25) < 0.05, m


def test_closed_loop_counts_match_the_server_exactly():
    with Server("ok") as srv:
        s = _run(srv.url, connections=20, pipeline=4, duration=1.0)
        got = srv.settle(s["sent"])
    assert s["requests"] > 1000
    assert got == s["sent"], (got, s)
    # what is unanswered is at most one pipeline per connection, cut at stop
    assert 0 <= s["sent"] - s["requests"] <= 20 * 4
    assert s["latency"]["count"] == s["requests"]


def test_thousand_connections():
    with Server("ok", backlog=2048) as srv:
        s = _run(srv.url, connections=1000, duration=1.5)
        got = srv.settle(s["sent"])
    assert s["errors"] == {}, s
    assert s["connects_ok"] == 1000 and srv.accepted == 1000
    assert got == s["sent"] and s["requests"] >= 1000


# ---------------------------------------------------------------------------- errors

def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_error_refused():
    s = _run(f"http://127.0.0.1:{_closed_port()}/", connections=3, reconnect_delay=0.05)
    assert s["requests"] == 0
    assert s["errors"].get("refused", 0) >= 3 * 3, s
    assert set(s["errors"]) == {"refused"}
    assert s["connects_failed"] == s["errors"]["refused"]


def test_error_reset():
    with Server("rst") as srv:
        s = _run(srv.url, connections=3)
    assert s["requests"] == 0
    assert s["errors"].get("reset", 0) >= 10, s
    assert set(s["errors"]) == {"reset"}


def test_error_read_timeout():
    with Server("never") as srv:
        s = _run(srv.url, connections=3, request_timeout=0.3, duration=1.3)
    assert s["requests"] == 0
    # each connection times out about every 0.3-0.35 s
    assert 3 * 2 <= s["errors"].get("read_timeout", 0) <= 3 * 5, s
    assert set(s["errors"]) == {"read_timeout"}


def test_error_status_503_and_bad_response():
    with Server("status503") as srv:
        s = _run(srv.url)
    assert s["requests"] > 10 and s["ok"] == 0
    assert s["errors"] == {"status_503": s["requests"]}, s
    with Server("garbage") as srv:
        s = _run(srv.url, reconnect_delay=0.05)
    assert s["requests"] == 0 and s["errors"].get("bad_response", 0) >= 3, s
    # a header line that never ends is cut off at 1 MiB, not buffered without bound
    with Server("endless") as srv:
        s = _run(srv.url, connections=1, reconnect_delay=0.05)
    assert s["requests"] == 0 and s["errors"].get("bad_response", 0) >= 1, s


def test_a_shed_client_backs_off_instead_of_storming():
    """A 503 with Connection: close (a server at max_connections) is an error: the
    connection comes back after reconnect_delay, not at once (which made one shed client
    a storm of hundreds of failed attempts a second and broke capacity stages)."""
    from fastc1k import running_server
    with running_server(engine="python", max_connections=1) as srv:
        hog = socket.create_connection(srv.address)  # the one slot, held
        try:
            s = run(LoadSpec(url=srv.url + "/api/health", connections=2, duration=1.0, reconnect_delay=0.2))
        finally:
            hog.close()
    n = s.summary["errors"].get("status_503", 0)
    assert 2 <= n <= 2 * (1.0 / 0.2 + 2), s.summary["errors"]


def test_fuzzed_responses_never_crash_the_loop():
    with Server("fuzz") as srv:
        farm = LoadFarm(LoadSpec(url=srv.url, connections=4, pipeline=3, reconnect_delay=0.01,
                                 request_timeout=0.3)).start()
        time.sleep(1.5)
        res = farm.stop()
    assert farm.errors == []
    s = res.summary
    assert s["requests"] > 20 and s["errors"].get("bad_response", 0) > 5, s
    assert s["requests"] == s["latency"]["count"]


def test_error_addrnotavail():
    # 192.0.2.1 (TEST-NET-1) is not an address of this host: bind() fails, nothing is sent
    with Server("ok") as srv:
        s = _run(srv.url, connections=2, source_ips=["192.0.2.1"], reconnect_delay=0.05)
    assert s["requests"] == 0 and srv.accepted == 0
    assert s["errors"].get("addrnotavail", 0) >= 2 * 3, s


def test_error_connect_timeout():
    # a listener that never accepts, backlog 0: once its queue is full, loopback SYNs are
    # dropped and connect() stays pending
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    try:
        s = _run(f"http://127.0.0.1:{ls.getsockname()[1]}/", connections=6,
                 connect_timeout=0.3, duration=1.2)
    finally:
        ls.close()
    assert s["errors"].get("connect_timeout", 0) >= 3, s


def test_error_emfile_in_a_subprocess():
    with Server("ok") as srv:
        code = textwrap.dedent(f"""
            import json, resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
            from fastc1k.load import LoadSpec, run
            s = run(LoadSpec(url={srv.url!r}, connections=100, duration=1.0)).summary
            print(json.dumps(s))
        """)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["errors"].get("emfile", 0) > 0, s
    assert s["requests"] > 0           # the connections that fit still work
    assert 0 < s["connects_ok"] < 100


# ---------------------------------------------------------------------------- open loop

def test_open_loop_achieves_the_intended_rate():
    with Server("ok") as srv:
        s = _run(srv.url, connections=10, rate=2000, duration=1.5)
    assert s["mode"] == "open" and s["errors"] == {}
    assert abs(s["scheduled"] - 2000 * s["duration_s"]) <= 25, s
    assert abs(s["achieved_rate"] - 2000) / 2000 < 0.05, s
    assert s["dropped_sends"] == 0


def test_open_loop_ramp_owes_nothing_from_before_a_connection_existed():
    with Server("ok") as srv:
        res = run(LoadSpec(url=srv.url, connections=10, rate=1000, ramp=1.0, duration=2.2))
    s, rows = res.summary, res.timeline
    assert s["errors"] == {}
    # a connection opened at 0.9 s does not start 0.9 s behind its schedule
    assert s["latency"]["p99_us"] < 100_000, s["latency"]
    # the offered rate grows with the open connections, then is the full rate
    assert 300 <= rows[0]["intended"] <= 700, rows[0]
    assert abs(rows[1]["intended"] - 1000) <= 20, rows[1]


def test_set_rate_while_running():
    with Server("ok") as srv:
        farm = LoadFarm(LoadSpec(url=srv.url, connections=8, rate=400)).start()
        try:
            end = time.monotonic() + 8
            while len(farm.timeline()) < 1 and time.monotonic() < end:
                time.sleep(0.02)
            farm.set_rate(1600)
            with pytest.raises(ValueError):
                farm.set_rate(-1)
            n = len(farm.timeline())
            while len(farm.timeline()) < n + 2 and time.monotonic() < end:
                time.sleep(0.02)
        finally:
            res = farm.stop()
    rows = res.timeline
    assert abs(rows[0]["intended"] - 400) <= 10, rows[0]
    assert abs(rows[-2]["intended"] - 1600) <= 20, rows[-2]
    # a send due on a busy connection at the change is dropped, at most one per connection
    assert res.summary["errors"] == {} and res.summary["dropped_sends"] <= 8
    closed = LoadFarm(LoadSpec(url="http://127.0.0.1:1/"))
    with pytest.raises(ValueError):
        closed.set_rate(10)                 # closed loop has no rate to change


def _co_check(stall_every, stall_for, duration, rate):
    with Server("ok", stall_every=stall_every, stall_for=stall_for) as srv:
        s = _run(srv.url, connections=4, rate=rate, duration=duration)
    lat, svc = s["latency"], s["service_time"]
    assert s["errors"] == {}, s
    # corrected: every request due during a stall waits for its end
    assert lat["p99_us"] >= 0.8 * stall_for * 1e6, s
    # uncorrected: only the few requests in flight when a stall began saw it
    assert svc["p99_us"] < 0.2 * stall_for * 1e6, s
    return s


def test_coordinated_omission():
    _co_check(stall_every=1.0, stall_for=0.3, duration=2.5, rate=1000)


def test_fine_rows_time_a_stall_to_100ms():
    """A 0.3 s stall once a second: the second's row only says its p99 was high, the
    100 ms rows say when: quiet rows around the one that holds the stall's backlog."""
    with Server("ok", stall_every=1.0, stall_for=0.3) as srv:
        res = run(LoadSpec(url=srv.url, connections=4, rate=1000, duration=2.2))
    fine = res.fine_timeline
    assert [r["t"] for r in fine] == [round(j * 0.1, 1) for j in range(len(fine))] and len(fine) >= 21
    assert sum(r["requests"] for r in fine) == res.summary["requests"]
    for sec in res.timeline[:2]:   # each second's row is its ten 100 ms rows
        tenths = [r for r in fine if sec["t"] <= r["t"] < sec["t"] + 1]
        assert len(tenths) == 10 and sum(r["requests"] for r in tenths) == sec["requests"]
    stalled = [r for r in fine if r["p99_us"] >= 200_000]
    quiet = [r for r in fine if r["requests"] and r["p99_us"] < 50_000]
    assert stalled and len(quiet) >= 8, fine
    assert all(r["error_count"] == 0 for r in fine)


@pytest.mark.slow
def test_coordinated_omission_500ms_every_5s():
    _co_check(stall_every=5.0, stall_for=0.5, duration=12.0, rate=1000)


# ---------------------------------------------------------------------------- farm API

def test_farm_set_connections_timeline_and_windows():
    with Server("ok") as srv:
        farm = LoadFarm(LoadSpec(url=srv.url, connections=10, processes=2)).start()

        def wait_for_open(n):
            end = time.monotonic() + 8
            while time.monotonic() < end:
                rows = farm.timeline()
                if rows and rows[-1]["connections_open"] == n:
                    return len(rows) - 1
                time.sleep(0.05)
            raise AssertionError(f"never {n} open: {farm.timeline()}")

        try:
            at10 = wait_for_open(10)
            farm.set_connections(30)
            at30 = wait_for_open(30)
            farm.set_connections(4)
            at4 = wait_for_open(4)
        finally:
            res = farm.stop()
    rows = res.timeline
    assert [r["t"] for r in rows] == list(range(len(rows))) and len(rows) >= 3
    assert at10 < at30 < at4 and rows[-1]["connections_open"] == 4
    total = sum(r["requests"] for r in rows)
    assert total == res.summary["requests"] == res.histogram.get_total_count()
    assert farm.histogram_between(0, 1).get_total_count() == rows[0]["requests"]
    assert res.summary["errors"] == {}
    d = json.loads(res.to_json())
    assert d["summary"]["requests"] == total
    h = HdrHistogram.decode(d["histogram"])
    assert h.get_total_count() == total


def test_ramp_opens_connections_gradually():
    with Server("ok") as srv:
        s = run(LoadSpec(url=srv.url, connections=20, ramp=2.0, duration=2.3))
    rows = s.timeline
    assert 6 <= rows[0]["connections_open"] <= 14, rows
    assert 15 <= rows[1]["connections_open"] <= 20 and rows[-1]["connections_open"] == 20
    assert s.summary["connects_ok"] == 20 and s.summary["errors"] == {}


def test_source_ips_rotate():
    with Server("ok", host="127.0.0.1") as srv:
        s = _run(srv.url, connections=6, source_ips="127.0.0.2-127.0.0.4")
    assert s["errors"] == {} and s["requests"] > 0
    assert srv.peers == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}


def test_bad_specs_are_refused_clearly():
    for kw in ({"url": "https://127.0.0.1/"}, {"url": "http://127.0.0.1:99999/"},
               {"url": "http://127.0.0.1/", "pipeline": 0},
               {"url": "http://127.0.0.1/", "connections": -1},
               {"url": "http://127.0.0.1/", "rate": -5},
               {"url": "http://127.0.0.1/", "source_ips": "127.0.0.9-127.0.0.1"},
               {"url": "http://127.0.0.1/", "requests": [("GET", "no-slash", None, 1)]},
               {"url": "http://127.0.0.1/", "requests": [("GET", "/", None, 0)]},
               {"url": "http://127.0.0.1/", "headers": {"X": "a\r\nInjected: 1"}},
               {"url": "http://[::1]:80/"}):
        with pytest.raises(ValueError):
            LoadSpec(**kw)


# ---------------------------------------------------------------------------- histograms

def test_histogram_layout_matches_the_hdrhistogram_package():
    rnd = random.Random(5)
    values = [int(rnd.lognormvariate(7, 2)) for _ in range(20000)] + [0, 1, 2047, 2048, 10**9, 10**12]
    c = Client("127.0.0.1", 1, [(b"GET / HTTP/1.1\r\n\r\n", False)], [0], 1, 1, 0)
    ref = HdrHistogram(1, 3600 * 10**6, 3)
    for v in values:
        c.record_for_test(v, 1)
        ref.record_value(min(v, 3600 * 10**6))
    pairs, vmax, _, _ = c.take_interval()
    ours = hist.from_sparse(pairs, vmax)
    assert list(ours.counts) == list(ref.counts)
    pcts = [50, 90, 99, 99.9, 99.99, 100]
    assert ours.get_percentile_to_value_dict(pcts) == ref.get_percentile_to_value_dict(pcts)
    assert ours.get_total_count() == len(values)
    assert c.take_interval()[0] == []        # the interval was cleared
    # the fast one-pass statistics agree with the package's own
    st = hist.stats(dict(pairs), vmax, pcts)
    assert st["p"] == ref.get_percentile_to_value_dict(pcts)
    assert st["mean"] == pytest.approx(ref.get_mean_value(), rel=1e-9)
    assert st["stdev"] == pytest.approx(ref.get_stddev(), rel=1e-9)


# ---------------------------------------------------------------------------- CLI

def _cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "fastc1k.load", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_cli_run_and_json(tmp_path):
    out = tmp_path / "r.json"
    log = tmp_path / "r.hlog"
    with Server("ok") as srv:
        p = _cli(srv.url, "-c", "5", "-d", "1.5s", "--json", str(out), "--hdr-log", str(log))
    assert p.returncode == 0, p.stderr
    assert "req/s" in p.stdout and "p99" in p.stdout and "errors: none" in p.stdout
    assert p.stdout.count("open      5") >= 1          # the live line
    d = json.loads(out.read_text())
    assert d["summary"]["requests"] > 0 and d["summary"]["errors"] == {}
    from hdrh.log import HistogramLogReader
    r = HistogramLogReader(str(log), HdrHistogram(1, 3600 * 10**6, 3))
    assert r.get_next_interval_histogram() is not None


def test_cli_method_body_and_headers():
    with Server("ok") as srv:
        p = _cli(srv.url, "-c", "2", "-d", "0.5s", "-q", "-m", "POST", "--body", "hello",
                 "-H", "X-Test: 1")
        srv.settle(1)
    assert p.returncode == 0, p.stderr
    assert set(srv.methods) == {"POST"} and srv.methods["POST"] > 0
    assert "errors: none" in p.stdout


@pytest.mark.parametrize("args", [["-c", "many", "http://127.0.0.1:1/"], ["--bogus"],
                                  ["http://127.0.0.1:1/", "-d", "soon"],
                                  ["ftp://127.0.0.1/"], [],
                                  ["http://127.0.0.1:1/", "--json", "/nonexistent-dir/x.json"]])
def test_cli_bad_flags(args):
    p = _cli(*args)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_a_load_process_that_fails_to_start_is_reported_at_once(monkeypatch):
    """One farm process failing at start-up is reported without waiting out the others,
    which sit waiting for their start command: they are let go at once, not each given
    2 s before it is killed."""
    from fastc1k.load import procs
    launch = procs.ProcessExecutor.launch

    def first_broken(self, cfgs):
        return launch(self, [{"broken": True}] + cfgs[1:])
    monkeypatch.setattr(procs.ProcessExecutor, "launch", first_broken)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="load worker 0 failed"):
        LoadFarm(LoadSpec(url="http://127.0.0.1:9/", connections=8, processes=8)).start()
    assert time.monotonic() - t0 < 4.0
