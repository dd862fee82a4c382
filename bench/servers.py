"""The servers under test: how each is started, pinned, quota'd and stopped.

Every server runs as its own process tree on core 0 (`taskset -c 0`), alone in a cpu
cgroup of its own (measure.Quota; the quota is switched on and off per workload), on a
free port of 127.0.0.1. A server that cannot run here is skipped with the reason
(`ServerSpec.unavailable()`), never silently dropped.

- floor    bench/floor/floor.c, compiled at run time: one recv + one send per request,
           the kernel's floor (not a server for users)
- nginx    Debian's nginx, worker_processes 1, `return 200` the same JSON body
- c        fastc1k's C engine (fastc1k._core) via bench/serve_fastc1k.py
- c-uring  the same with `--backend io_uring` (not in the default set; bench.ceiling has it)
- python   fastc1k's pure-Python engine, same script
- uvloop   a raw asyncio.Protocol on uvloop (bench/raw_protocol.py)
- asyncio  the same Protocol on the stdlib loop (not in the default set)
- uvicorn  uvicorn + uvloop + httptools with a tiny ASGI app (bench/asgi_app.py)

Every server that can listens with deferred accept (DEFER_ACCEPT: TCP_DEFER_ACCEPT, nginx's
`listen ... deferred`, fastc1k's `defer_accept`): the kernel hands a connection over with its
request, so a new connection wakes a server once, not twice (on a VM a sleep and wake-up can
cost a server more CPU than serving the request: it would dominate the new-connection
figures). uvicorn has no such option; the floor never closes (no new-connection workload).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastc1k.capacity.nginx import nginx_conf
from fastc1k.config import ServerConfig

from . import measure

__all__ = ["ServerSpec", "RunningServer", "SERVERS", "DEFAULT_SERVERS", "selected", "free_port",
           "HEALTH", "DATA", "HANDLER"]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HEALTH, DATA, HANDLER = "/api/health", "/api/data", "/bench/handler"
DEFAULT_SERVERS = ("floor", "nginx", "c", "python", "uvloop", "uvicorn")
DEFER_ACCEPT = 1  # seconds (see above)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    """The servers import the same fastc1k as this process (the tree's src/ in development,
    the installed package in CI), and bench/ from the repository root."""
    import fastc1k
    pkg_parent = str(Path(fastc1k.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("FASTC1K_ENGINE", None)  # the script is told its engine explicitly
    return env


def _c_engine_missing() -> str | None:
    # In a subprocess: the tree's C engine may be rebuilt while the bench runs.
    probe = "import fastc1k._compat as c; print(c.c_available())"
    r = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=30)
    if r.stdout.strip() == "True":
        return None
    return "C engine not built (fastc1k._compat.c_available() is False: " \
           "FASTC1K_ONLY=fastc1k._core python setup.py build_ext --inplace)"


def _uring_missing() -> str | None:
    why = _c_engine_missing()
    if why:
        return why
    probe = "from fastc1k import _core; print(_core.uring_unavailable() or 'ok')"
    r = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=30)
    out = r.stdout.strip()
    return None if out == "ok" else f"io_uring unavailable: {out or r.stderr.strip()[-200:]}"


def _module_missing(*names: str) -> str | None:
    for n in names:
        if importlib.util.find_spec(n) is None:
            return f"{n} not installed (pip install '.[bench]')"
    return None


def _floor_binary() -> Path:
    """Compile floor.c once per source version (gcc -O2) into the temp dir."""
    src = BENCH / "floor" / "floor.c"
    digest = hashlib.sha1(src.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"fastc1k-floor-{digest}"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True, capture_output=True)
        tmp.replace(out)
    return out




@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    paths: frozenset[str]       # the routes it answers
    closes: bool = True         # honours `Connection: close` (the new-connection workload)

    def unavailable(self) -> str | None:
        """None when this server can run here, else the reason it is skipped."""
        n = self.name
        if n == "floor":
            return None if shutil.which("gcc") else "gcc not installed (the floor responder is compiled at run time)"
        if n == "nginx":
            return None if shutil.which("nginx") else "nginx not installed (apt-get install -y nginx-light)"
        if n == "c":
            return _c_engine_missing()
        if n == "c-uring":
            return _uring_missing()
        if n == "uvloop":
            return _module_missing("uvloop")
        if n == "uvicorn":
            return _module_missing("uvicorn", "uvloop", "httptools")
        return None

    def command(self, port: int, workdir: Path) -> list[str]:
        py = sys.executable
        if self.name == "floor":
            return [str(_floor_binary()), str(port)]
        if self.name == "nginx":   # the capacity suite's config, with the bench's sizes
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_conf(str(workdir), port, workers=1, connections=20000, nofile=20000,
                                       config=ServerConfig(backlog=16384, defer_accept=DEFER_ACCEPT), idle_timeout=300))
            return ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
        defer = ["--defer-accept", str(DEFER_ACCEPT)]
        if self.name in ("c", "python"):
            return [py, str(BENCH / "serve_fastc1k.py"), "--engine", self.name, "--port", str(port), *defer]
        if self.name == "c-uring":
            return [py, str(BENCH / "serve_fastc1k.py"), "--engine", "c", "--backend", "io_uring", "--port", str(port),
                    *defer]
        if self.name in ("uvloop", "asyncio"):
            return [py, str(BENCH / "raw_protocol.py"), "--loop", self.name, "--port", str(port), *defer]
        if self.name == "uvicorn":
            return [py, "-m", "uvicorn", "bench.asgi_app:app", "--host", "127.0.0.1", "--port", str(port),
                    "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
                    "--backlog", "16384", "--timeout-keep-alive", "300"]
        raise ValueError(self.name)

    def conn_struct_bytes(self) -> int | None:
        """The C engine's per-connection struct: what an idle connection should cost it
        (it holds no buffer). None for the other servers."""
        if self.name not in ("c", "c-uring"):
            return None
        from fastc1k._core import CONN_STRUCT_SIZE, UCONN_STRUCT_SIZE
        return CONN_STRUCT_SIZE + (UCONN_STRUCT_SIZE if self.name == "c-uring" else 0)


_ALL = frozenset({HEALTH, DATA, HANDLER})
SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec("floor", "floor (C, recv+send)", frozenset({HEALTH}), closes=False),
    ServerSpec("nginx", "nginx", frozenset({HEALTH, DATA})),
    ServerSpec("c", "fastc1k C engine", _ALL),
    ServerSpec("c-uring", "fastc1k C engine, io_uring", _ALL),
    ServerSpec("python", "fastc1k pure Python", _ALL),
    ServerSpec("uvloop", "uvloop Protocol", frozenset({HEALTH})),
    ServerSpec("asyncio", "asyncio Protocol", frozenset({HEALTH})),
    ServerSpec("uvicorn", "uvicorn+uvloop+httptools", _ALL),
)}


def selected(default: tuple[str, ...] = DEFAULT_SERVERS) -> list[str]:
    """FASTC1K_BENCH_SERVERS=floor,nginx,... or the default set."""
    raw = os.environ.get("FASTC1K_BENCH_SERVERS")
    names = [n.strip() for n in raw.split(",") if n.strip()] if raw else list(default)
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    return names


class RunningServer:
    """A started server: `.url(path)`, `.pids()`, `.set_quota(on)`, `.stop()`."""

    def __init__(self, spec: ServerSpec, quota: bool = True, cpu: int = 0, start_timeout: float = 15.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"fastc1k-bench-{spec.name}-"))
        self.quota = measure.Quota(f"fastc1k-bench-{spec.name}-{os.getpid()}", enabled=quota)
        cmd = self.quota.wrap(["taskset", "-c", str(cpu), *spec.command(self.port, self.workdir)])
        self._log = open(self.workdir / "server.log", "w+b")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, path: str = HEALTH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        req = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(req)
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-600:].decode(errors="replace")

    def pids(self) -> list[int]:
        return measure.server_pids(self.proc.pid)

    def set_quota(self, on: bool) -> None:
        """Switch the CPU quota on (0.5 CPU) or off without restarting the server."""
        self.quota.set(on)

    def stop(self) -> None:
        pids = self.pids() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids:  # whatever is left of the tree (e.g. an nginx worker)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self.quota.close()
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
