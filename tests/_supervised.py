"""Helpers for tests on real server processes: start `python -m fastc1k.serve`, load it.

ServerProc starts the CLI on 127.0.0.1 with port 0 (several SO_REUSEPORT sockets cannot
each pick port 0, so the master binds the first one and prints the port it got in its
start-up line), reads that line, and at exit kills by pid every process it has seen.

Load is a closed-loop keep-alive client (one thread, selectors): each connection sends
its next GET when the previous answer is complete. It requests /api/data by default, so
every answer names the worker pid that served it and each failure can be attributed to
the worker its connection was on. A keep-alive connection that the server closes before
any byte of the next response (EOF or reset) is reconnected and the request retried,
as HTTP clients do for idempotent requests on reused connections (RFC 9112 9.3.1); those
are counted apart (`retried`), every other failure is an error.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from _env import SRC  # noqa: E402  (the package this process imported)
TESTS = os.path.dirname(os.path.abspath(__file__))
_PORT_RE = re.compile(r"serving http://127\.0\.0\.1:(\d+) ")


def serve_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTC1K_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 20.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastc1k.serve", *args], env=serve_env(env),
                          capture_output=True, text=True, timeout=timeout, **kw)


class ServerProc:
    def __init__(self, *args: str, engine: str = "python", workers: int = 2, env: dict | None = None,
                 graceful_timeout: float = 3.0, cwd: str | None = None, startup_timeout: float = 15.0) -> None:
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        argv = [sys.executable, "-m", "fastc1k.serve", "--host", "127.0.0.1", "--port", "0",
                "--engine", engine, "--graceful-timeout", str(graceful_timeout), *args]
        if workers:
            argv += ["--workers", str(workers)]
        self.seen: set[int] = set()
        self.proc = subprocess.Popen(argv, env=serve_env(env), stdout=subprocess.PIPE,
                                     stderr=self.stderr_file, text=True, cwd=cwd)
        self.pid = self.proc.pid
        self.seen.add(self.pid)
        try:
            self.line = self._read_line(startup_timeout)
            m = _PORT_RE.search(self.line)
            assert m, f"no address in the start-up line: {self.line!r}; stderr: {self.stderr()}"
            self.port = int(m.group(1))
            if workers:
                self.wait_workers(workers)
        except BaseException:
            self.kill_all()
            raise

    def _read_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"no start-up line within {timeout} s; stderr: {self.stderr()}")
        line = self.proc.stdout.readline()
        assert line, f"server exited before its start-up line (rc={self.proc.poll()}); stderr: {self.stderr()}"
        return line

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    def workers(self) -> list[int]:
        """Pids of the master's live (non-zombie) children, remembered for the final kill."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = []
        for k in kids:
            try:
                if k.status() != psutil.STATUS_ZOMBIE:
                    pids.append(k.pid)
            except psutil.NoSuchProcess:
                pass
        self.seen.update(pids)
        return sorted(pids)

    def metrics_workers(self) -> set[int]:
        text = http_get(self.address, "/metrics")[1].decode()
        return {int(p) for p in re.findall(r'^fastc1k_requests_total\{worker="(\d+)"\}', text, re.M)}

    def wait_workers(self, n: int, timeout: float = 10.0, exclude: set[int] = frozenset()) -> list[int]:
        """Wait until exactly n workers run (none of them in `exclude`) and each has started its loop."""
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            pids = self.workers()
            if len(pids) == n and not set(pids) & set(exclude):
                try:
                    if set(pids) <= self.metrics_workers():
                        return pids
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"expected {n} workers, have {pids}; stderr: {self.stderr()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL, by pid, every process of this server still alive."""
        self.workers()
        for pid in self.seen:
            try:
                p = psutil.Process(pid)
                if p.ppid() in self.seen or pid == self.pid:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self.stderr_file.close()

    def alive(self) -> list[int]:
        out = []
        for pid in self.seen:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def __enter__(self) -> "ServerProc":
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def http_get(address: tuple[str, int], path: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    """One request on a fresh connection: (status, body, lower-cased headers)."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError(f"GET {path}: connection closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    return status, body, headers


class _Conn:
    __slots__ = ("sock", "buf", "worker", "reused", "got_bytes", "sent_at", "connecting")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.worker: int | None = None
        self.reused = False
        self.got_bytes = False
        self.sent_at = 0.0
        self.connecting = False


class Load:
    """Closed-loop keep-alive GET load over n connections, run in a thread until stop()."""

    def __init__(self, address: tuple[str, int], n: int, path: str = "/api/data", timeout: float = 5.0) -> None:
        self.address, self.n, self.path, self.timeout = address, n, path, timeout
        self.request = f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        self.ok = 0
        self.retried = 0
        self.connects = 0
        self.errors: list[tuple[str, int | None]] = []    # (what, worker pid the connection was on)
        self.retries: list[int | None] = []
        self.by_worker: collections.Counter = collections.Counter()
        self._sending = True
        self._stop = False
        self._lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.conns = [_Conn() for _ in range(n)]
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    # --- control ---
    def start(self, warm: float = 10.0) -> "Load":
        """Start, and return once every connection has had one answer (or fail)."""
        self.thread.start()
        deadline = time.monotonic() + warm
        while time.monotonic() < deadline:
            if all(c.reused for c in self.conns) or self.errors:
                break
            time.sleep(0.02)
        assert all(c.reused for c in self.conns), f"load did not warm up: errors {self.errors[:5]}"
        return self

    def stop(self, drain: float = 10.0) -> "Load":
        """Stop sending; wait for answers in flight (up to `drain` s); close everything."""
        self._sending = False
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and any(c.sock is not None and c.sent_at for c in self.conns):
            time.sleep(0.02)
        self._stop = True
        self.thread.join(5)
        return self

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.ok, len(self.errors), self.retried

    # --- the loop ---
    def _connect(self, c: _Conn) -> None:
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.sock.setblocking(False)
        c.buf, c.worker, c.reused, c.got_bytes, c.connecting = b"", None, False, False, True
        c.sent_at = time.monotonic()
        self.connects += 1
        err = c.sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            self._fail(c, f"connect: {errno.errorcode.get(err, err)}")
            return
        self.sel.register(c.sock, selectors.EVENT_WRITE, c)

    def _close(self, c: _Conn) -> None:
        if c.sock is not None:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        c.sent_at = 0.0

    def _fail(self, c: _Conn, what: str) -> None:
        with self._lock:
            self.errors.append((what, c.worker))
        self._close(c)
        if self._sending:
            self._connect(c)

    def _send(self, c: _Conn) -> None:
        c.got_bytes = False
        c.sent_at = time.monotonic()
        try:
            c.sock.send(self.request)  # small: fits the socket buffer at once
        except OSError as exc:
            self._lost(c, f"send: {exc.strerror}")

    def _lost(self, c: _Conn, what: str) -> None:
        """The connection ended: a retry if nothing of the answer came on a reused connection."""
        if not c.sent_at:  # no request outstanding: an idle connection closed by the server
            self._close(c)
            if self._sending:
                self._connect(c)
        elif c.reused and not c.got_bytes and self._sending:
            with self._lock:
                self.retried += 1
                self.retries.append(c.worker)
            self._close(c)
            self._connect(c)
        else:
            self._fail(c, what)

    def _on_writable(self, c: _Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, f"connect: {errno.errorcode.get(err, err)}")
            return
        c.connecting = False
        self.sel.modify(c.sock, selectors.EVENT_READ, c)
        self._send(c)

    def _on_readable(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            self._lost(c, "reset")
            return
        except OSError as exc:
            self._fail(c, f"recv: {exc.strerror}")
            return
        if not data:
            self._lost(c, "eof")
            return
        c.got_bytes = True
        c.buf += data
        while True:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = c.buf[:end].decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if not head.startswith("HTTP/1.1 ") or not m:
                self._fail(c, f"bad response: {c.buf[:100]!r}")
                return
            total = end + 4 + int(m.group(1))
            if len(c.buf) < total:
                return
            status = int(head[9:12])
            body = c.buf[end + 4:total]
            c.buf = c.buf[total:]
            if status != 200:
                self._fail(c, f"status {status}")
                return
            if self.path == "/api/data":
                c.worker = json.loads(body)["worker"]
            with self._lock:
                self.ok += 1
                self.by_worker[c.worker] += 1
            c.reused = True
            c.sent_at = 0.0
            if re.search(r"(?im)^connection:\s*close", head):
                self._close(c)
                if self._sending:
                    self._connect(c)
                return
            if self._sending:
                self._send(c)
            return

    def _run(self) -> None:
        for c in self.conns:
            self._connect(c)
        while not self._stop:
            for key, mask in self.sel.select(0.05):
                c = key.data
                if c.sock is None or key.fileobj is not c.sock:
                    continue
                if c.connecting:
                    self._on_writable(c)
                else:
                    self._on_readable(c)
            now = time.monotonic()
            for c in self.conns:
                if c.sock is not None and c.sent_at and now - c.sent_at > self.timeout:
                    self._fail(c, "timeout")
        for c in self.conns:
            self._close(c)
        self.sel.close()


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
