"""Load drivers for the bench: wrk (pinned to core 1) and, once it lands, fastc1k's own
load generator; plus the idle-connection holder for the memory workload.

`run_load(url, connections, ...)` is bounded twice: by `duration` (wrk -d) and, when
`max_requests` is given, by a request count (bench/wrk/bench.lua stops wrk after about
that many requests, and wrk reports the real elapsed time). FASTC1K_BENCH_DRIVER=wrk|fastc1k
chooses the driver (default wrk: the anchors in bench/METHOD.md were taken with
it; fastc1k.load runs for the duration only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

__all__ = ["LoadResult", "run_load", "wrk", "fastc1k_load", "driver_missing", "hold_idle_connections",
           "LOAD_CPU"]

WRK_LUA = Path(__file__).resolve().parent / "wrk" / "bench.lua"
LOAD_CPU = 1  # the load generator's core; the server is on core 0


@dataclasses.dataclass
class LoadResult:
    driver: str
    requests: int               # responses completed
    elapsed: float              # seconds, as the driver measured
    errors: dict[str, int]      # connect/read/write/timeout/non2xx (wrk's classes)
    p50_us: float | None = None
    p99_us: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def driver_missing(name: str | None = None) -> str | None:
    name = name or os.environ.get("FASTC1K_BENCH_DRIVER", "wrk")
    if name == "wrk":
        return None if shutil.which("wrk") else "wrk not installed (apt-get install -y wrk)"
    if name == "fastc1k":
        try:
            found = importlib.util.find_spec("fastc1k.load.__main__") is not None
        except ImportError as exc:
            return f"fastc1k.load not available ({exc})"
        return None if found else "fastc1k.load has no CLI (python -m fastc1k.load)"
    return f"unknown driver {name!r} (FASTC1K_BENCH_DRIVER=wrk|fastc1k)"


def run_load(url: str, connections: int, duration: float, pipeline: int = 1, max_requests: int = 0,
             close: bool = False, driver: str | None = None) -> LoadResult:
    name = driver or os.environ.get("FASTC1K_BENCH_DRIVER", "wrk")
    if name == "fastc1k":
        return fastc1k_load(url, connections, duration, pipeline, close)
    return wrk(url, connections, duration, pipeline, max_requests, close)


_UNIT = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def wrk(url: str, connections: int, duration: float, pipeline: int = 1, max_requests: int = 0,
        close: bool = False) -> LoadResult:
    """`taskset -c 1 wrk -t1`, parsed. `close` sends `Connection: close` (a new connection per request)."""
    secs = max(1, int(round(duration)))
    cmd = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency",
           "--timeout", "10s", "-s", str(WRK_LUA)]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd += [url, "--", str(pipeline), str(max_requests)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    out = r.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-300:] or out[-300:]}")
    errors = {}
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), e.groups()) if int(v)}
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n2:
        errors["non2xx"] = int(n2.group(1))
    if close:  # with Connection: close every close is expected; wrk counts a few as read errors
        errors.pop("read", None)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return LoadResult("wrk", int(m.group(1)), _us(m.group(2) + m.group(3)) / 1e6, errors,
                      _us(p50.group(1)) if p50 else None, _us(p99.group(1)) if p99 else None)


def fastc1k_load(url: str, connections: int, duration: float, pipeline: int = 1,
                 close: bool = False) -> LoadResult:
    """fastc1k's load generator as a subprocess on core 1 (`python -m fastc1k.load ... --json`)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "load.json"
        cmd = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "fastc1k.load", url, "-c", str(connections),
               "-d", f"{duration:g}s", "--pipeline", str(pipeline), "--processes", "1", "-q", "--json", str(out)]
        if close:
            cmd += ["-H", "Connection: close"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if r.returncode != 0 or not out.exists():
            raise RuntimeError(f"fastc1k.load failed ({r.returncode}): {r.stderr.strip()[-300:]}")
        s = json.loads(out.read_text())["summary"]
    errors = {k: int(v) for k, v in (s.get("errors") or {}).items() if v}
    lat = s.get("latency") or {}
    return LoadResult("fastc1k", int(s["requests"]), float(s["duration_s"]), errors,
                      lat.get("p50_us"), lat.get("p99_us"))


@contextlib.contextmanager
def hold_idle_connections(host: str, port: int, n: int, path: str = "/api/health",
                          timeout: float = 60.0) -> Iterator[int]:
    """Open n keep-alive connections, one request each, wait for every answer, then hold
    them idle while the caller measures; yields how many were answered. Closes them all."""
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        pending = 0
        opened = 0
        while (opened < n or pending) and time.monotonic() < deadline:
            # open in batches so the listen backlog is never the limit
            while opened < n and pending < 512:
                s = socket.socket()
                s.setblocking(False)
                socks.append(s)
                opened += 1
                try:
                    s.connect((host, port))
                except BlockingIOError:
                    pass
                sel.register(s, selectors.EVENT_WRITE, "connect")
                pending += 1
            for key, _ in sel.select(0.5):
                s = key.fileobj
                if key.data == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        sel.unregister(s)
                        pending -= 1
                        continue
                    s.send(req)
                    sel.modify(s, selectors.EVENT_READ, "read")
                else:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    sel.unregister(s)
                    pending -= 1
                    if data.startswith(b"HTTP/1.1 200"):
                        answered += 1
        yield answered
    finally:
        sel.close()
        for s in socks:
            s.close()
