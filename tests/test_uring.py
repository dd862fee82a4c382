"""The io_uring backend's own contract: it is chosen by config, flag and environment, and
where io_uring cannot start the server says so in one line and serves with epoll.

Its HTTP behaviour is the conformance, hostile and robustness suites' (the "c-uring" mode of
tests/conftest.py) and the C-engine suite's (both backends). The refusal here is real: the
server process runs under a seccomp filter that fails io_uring_setup with EPERM, as a
container runtime's default profile does, without touching the host-wide
kernel.io_uring_disabled that other processes on the machine may rely on.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import textwrap
import time

import h11
import pytest

import fastc1k
from fastc1k import Routes, ServerConfig
from fastc1k.config import ConfigError

from _env import SRC

pytestmark = pytest.mark.skipif(not fastc1k.c_available(), reason="C engine not built")

NR_IO_URING_SETUP = 425  # the same number on every architecture (the unified syscall table)


def _deny_io_uring_setup() -> None:
    """preexec_fn: from here on (and across exec) io_uring_setup fails with EPERM."""
    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * 4)(
        Insn(0x20, 0, 0, 0),                      # A = seccomp_data.nr
        Insn(0x15, 0, 1, NR_IO_URING_SETUP),      # A == io_uring_setup ?
        Insn(0x06, 0, 0, 0x00050000 | 1),         #   SECCOMP_RET_ERRNO | EPERM
        Insn(0x06, 0, 0, 0x7FFF0000))             # SECCOMP_RET_ALLOW
    prog = Prog(4, insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
        os._exit(99)


SERVER = textwrap.dedent("""
    import sys, threading, urllib.request
    import fastc1k
    from fastc1k import ServerConfig
    with fastc1k.running_server(ServerConfig(host="127.0.0.1", port=0, backend="io_uring"), engine="c") as srv:
        body = urllib.request.urlopen(srv.url + "/api/health", timeout=5).read()
    print(srv.config.backend, getattr(srv.worker, "backend", "-"), body.decode())
""")


def _run(args, deny: bool, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=_deny_io_uring_setup if deny else None, **kw)


def test_refused_io_uring_falls_back_to_epoll_with_one_line():
    r = _run(["-c", SERVER], deny=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["epoll", "epoll", '{"status":"ok"}']
    assert r.stderr.splitlines() == [
        "fastc1k: io_uring unavailable (io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN (Linux >= 6.1): "
        "Operation not permitted); serving with epoll"]


def test_io_uring_runs_where_it_is_available():
    from fastc1k import _core
    why = _core.uring_unavailable()
    if why:
        pytest.skip(f"io_uring unavailable here: {why}")
    r = _run(["-c", SERVER], deny=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["io_uring", "io_uring", '{"status":"ok"}'] and r.stderr == ""


def test_serve_cli_says_it_once_for_every_worker_and_names_the_backend():
    """The master probes once: one line, not one per worker; the start-up line says epoll."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), FASTC1K_BACKEND="io_uring")
    p = subprocess.Popen([sys.executable, "-m", "fastc1k.serve", "--engine", "c", "--workers", "3", "--port", "0"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_deny_io_uring_setup)
    try:
        startup = p.stdout.readline()
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert " engine=c backend=epoll workers=3 " in startup
    assert sum("io_uring unavailable" in line for line in err.splitlines()) == 1, err


def test_backend_is_validated():
    assert ServerConfig(backend="io_uring").backend == "io_uring"
    assert ServerConfig().backend == "epoll"
    with pytest.raises(ConfigError, match="backend must be one of epoll, io_uring, got 'kqueue'"):
        ServerConfig(backend="kqueue")


def test_the_pure_engine_says_it_has_no_io_uring():
    r = _run(["-c", SERVER.replace('engine="c"', 'engine="python"')], deny=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["epoll", "-", '{"status":"ok"}']
    assert r.stderr.splitlines() == [
        "fastc1k: io_uring unavailable (the python engine has no io_uring backend); serving with epoll"]


# --- the review of core/uring.pxi: behaviour the epoll backend has and io_uring must keep ---------
def _read_until_close(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("engine", ["c", "c-uring"], indirect=True)
def test_a_request_arriving_while_a_wsgi_stream_waits_is_answered_after_it(make_server, engine):
    """A pipelined request that arrives while a WSGI stream waits for the client to read is
    parsed only once the stream has ended (the epoll backend stops reading meanwhile): its
    app is not called beside the stream's, and the two answers come whole and in order."""
    block, n = b"s" * 65536, 256  # 16 MiB: more than loopback buffers while the client waits
    calls = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        calls.append(path)
        if path == "/api/health":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if path == "/second":
            return [b"second"]
        time.sleep(0.2)  # the next request reaches the server meanwhile

        def stream():
            try:
                for _ in range(n):
                    yield block
            finally:
                calls.append("stream closed")
        return stream()

    srv = make_server(Routes(wsgi=app, builtin_prefix=None))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the stream fills it at once
        s.settimeout(10)
        s.connect(srv.address)
        s.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"GET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # the stream waits for room
        data = _read_until_close(s)
    assert calls == ["/first", "stream closed", "/second"]
    bodies = []
    while data:  # each response framed by h11, in order
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")
        body = bytearray()
        while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
            if isinstance(ev, h11.Data):
                body += ev.data
        bodies.append(bytes(body))
        data = conn.trailing_data[0]
    assert [len(b) for b in bodies] == [len(block) * n, 6] and bodies[1] == b"second"


@pytest.mark.parametrize("engine", ["c", "c-uring"], indirect=True)
def test_a_client_that_half_closes_gets_the_whole_wsgi_stream(make_server, engine):
    """A client may shut its side once it has sent its request (nc -N, HTTP/1.0 tools): a
    stream still waiting for room when that FIN arrives is sent whole, then closed."""
    block, n = b"s" * 65536, 256

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/api/health":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        time.sleep(0.2)  # the FIN reaches the server meanwhile
        return (block for _ in range(n))

    srv = make_server(Routes(wsgi=app, builtin_prefix=None))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(srv.address)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # the stream waits for room
        data = _read_until_close(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body.endswith(b"0\r\n\r\n"), (head, len(body))


@pytest.mark.parametrize("engine", ["c", "c-uring"], indirect=True)
def test_connections_accepted_as_the_worker_stops_are_closed_not_kept(engine):
    """A hard stop that meets a burst of new connections (the kernel accepted them; on
    io_uring their completions wait behind the stop's): every one is closed or refused when
    the server is gone, none kept open in the process with its client left hanging."""
    import resource
    import select

    from conftest import TEST_DEFAULTS, engine_and_backend
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"needs 4096 fds (3,000 sockets), the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))  # before the server sizes its table
    name, backend = engine_and_backend(engine)
    clients: list[socket.socket] = []
    box = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/burst" and not clients:
            box[0].stop(False)  # the stop's wake-up is queued first, the burst behind it
            for _ in range(1500):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(box[0].address)
                clients.append(s)
            time.sleep(0.2)  # every handshake done: the kernel holds them for the listener
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    try:
        with fastc1k.running_server(ServerConfig(**{**TEST_DEFAULTS, "backend": backend}), engine=name,
                                    wsgi=app) as srv:
            box.append(srv)
            with socket.create_connection(srv.address, timeout=5) as a:
                a.sendall(b"GET /burst HTTP/1.1\r\nHost: t\r\n\r\n")
                a.shutdown(socket.SHUT_WR)  # closed at once after its answer: no request left in flight
                a.recv(100)
        assert len(clients) == 1500
        poller, deadline = select.poll(), time.monotonic() + 3
        for s in clients:
            poller.register(s, select.POLLIN)
        hanging = {s.fileno() for s in clients}
        while hanging and time.monotonic() < deadline:  # EOF or reset makes each readable
            for fd, _ in poller.poll(200):
                poller.unregister(fd)
                hanging.discard(fd)
        assert not hanging, f"{len(hanging)} of 1500 connections kept open by a stopped server"
    finally:
        for s in clients:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("engine", ["c", "c-uring"], indirect=True)
@pytest.mark.parametrize("head_size", [2000, 2048, 4096])
def test_a_100_continue_body_sent_with_its_head_reaches_the_wsgi_app(make_server, engine, head_size):
    """A client may send its body right behind an `Expect: 100-continue` head. On io_uring
    the kernel may already have taken that body from the socket (a head ending on a 2 KiB
    receive buffer's edge), where wsgi.input would wait for it: the app gets it at once."""
    def app(environ, start_response):
        body = environ["wsgi.input"].read() if environ["PATH_INFO"] != "/api/health" else b"ok"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    srv = make_server(Routes(wsgi=app, builtin_prefix=None), header_timeout=1.0)
    head = b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\nX-Pad: "
    head += b"p" * (head_size - len(head) - 4) + b"\r\n\r\n"
    with socket.create_connection(srv.address, timeout=5) as s:
        s.sendall(head + b"hello")
        data = b""
        while not data.endswith(b"hello") and (chunk := s.recv(4096)):
            data += chunk
    assert b" 200 OK\r\n" in data and data.endswith(b"\r\n\r\nhello"), data
