"""The load balancer in front of the replicas: its config, its process, its counters.

HAProxy (Debian's package) by default, nginx as an option. The suite writes the config
into a temporary directory, starts the balancer in the foreground (`haproxy -db`,
`nginx -g 'daemon off;'`) as its child, pinned to a core of its own when there is one
to spare, and stops it by pid. HAProxy's stats socket answers `show stat` (each server's
health state and request count), which the fault phase polls to time when the health
check routes around a dead replica; nginx (open source) has no active health checks
and no such socket, so with nginx those figures are reported as not measurable.

The balancer's CPU (user + system time of its processes) over the requests it
passed is its cost per request: the figure that keeps the scaling result honest.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ...host import net, proc
from ..stages import stop_group

__all__ = ["Backend", "BalancerSpec", "Balancer", "BalancerError", "haproxy_config", "nginx_config",
           "free_port"]

BALANCERS = ("haproxy", "nginx")
ALGORITHMS = ("roundrobin", "leastconn")
# One client connection and one server connection each: HAProxy sizes its fd limit as
# about 2 x maxconn, and the hard limit here is 20,000 fds per process.
DEFAULT_MAXCONN = 9000


class BalancerError(RuntimeError):
    """The balancer is missing, or did not start (its own message attached)."""


@dataclass(frozen=True)
class Backend:
    name: str
    host: str
    port: int


@dataclass
class BalancerSpec:
    kind: str = "haproxy"
    # http: L7, balances requests (the default). tcp: L4, balances connections and relays
    # their bytes without parsing them: cheaper per request, but a kill fails the requests
    # in flight on the victim's connections (nothing to retry them with).
    mode: str = "http"
    # leastconn: a hung (frozen) replica holds its requests, so its count grows and new
    # requests avoid it at once; roundrobin keeps sending it 1/N of them until the health
    # check marks it down, and every client ends up stuck there (a stall of timeout server).
    algorithm: str = "leastconn"
    maxconn: int = DEFAULT_MAXCONN
    check_inter_ms: int = 1000     # health check every second ...
    fall: int = 2                  # ... two failures mark a server down ...
    rise: int = 1                  # ... one success brings it back
    timeout_connect_ms: int = 1000
    timeout_server_ms: int = 5000
    timeout_client_ms: int = 30000
    retries: int = 3
    # Failures HAProxy retries on another server (idempotent requests only); "" retries nothing.
    retry_on: str = "conn-failure empty-response response-timeout"
    health_path: str = "/api/health"
    cpu: int | None = None         # pin to this core (None: no pinning)
    netns: str | None = None       # run inside this named network namespace (kservice's node)

    def validate(self) -> "BalancerSpec":
        if self.kind not in BALANCERS:
            raise ValueError(f"balancer must be one of {', '.join(BALANCERS)}, not {self.kind!r}")
        if self.mode not in ("http", "tcp"):
            raise ValueError(f"mode must be http or tcp, not {self.mode!r}")
        if self.mode == "tcp" and self.kind != "haproxy":
            raise ValueError("tcp mode is HAProxy's only here")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"balance algorithm must be one of {', '.join(ALGORITHMS)}, not {self.algorithm!r}")
        for k in ("maxconn", "check_inter_ms", "fall", "rise", "timeout_connect_ms", "timeout_server_ms",
                  "timeout_client_ms"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"{k} must be a positive integer")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError("retries must be >= 0")
        if any(c in self.retry_on for c in "\r\n#"):
            raise ValueError(f"bad retry-on {self.retry_on!r}")
        if not self.health_path.startswith("/") or any(c in self.health_path for c in " \r\n"):
            raise ValueError(f"bad health check path {self.health_path!r}")
        return self


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the balancer binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def haproxy_config(backends: list[Backend], listen: tuple[str, int], spec: BalancerSpec,
                   stats_socket: str | None = None) -> str:
    """An HAProxy config: http mode, keep-alive on both sides, server connections shared
    between clients (`http-reuse always`), health checks on the health path, and
    idempotent requests retried (up to `retries` times) on another server when a
    connection fails or a server closes without answering (`retry-on` + `option
    redispatch`): what lets a killed replica cost almost no requests. tcp mode: the same
    checks, connections relayed as they are."""
    g = [
        "global",
        f"    maxconn {spec.maxconn}",
        "    nbthread 1",
        "    log stdout format raw local0 err",
    ]
    if stats_socket:
        g.append(f"    stats socket {stats_socket} mode 600 level admin")
    if spec.mode == "tcp":
        # Connections, not requests: an idle keep-alive client must outlive timeout server.
        d = ["defaults", "    mode tcp", f"    retries {spec.retries}"]
        if spec.retries:
            d.append("    option redispatch 1")
        d += [f"    timeout connect {spec.timeout_connect_ms}ms", f"    timeout client {spec.timeout_client_ms}ms",
              f"    timeout server {spec.timeout_client_ms}ms", f"    timeout check {spec.check_inter_ms}ms",
              "    timeout queue 5s"]
    else:
        d = [
            "defaults",
            "    mode http",
            "    option http-keep-alive",
            f"    retries {spec.retries}",
            "    http-reuse always",
        ]
        if spec.retries and spec.retry_on:
            d += ["    option redispatch 1", f"    retry-on {spec.retry_on}"]
        d += [
            f"    timeout connect {spec.timeout_connect_ms}ms",
            f"    timeout client {spec.timeout_client_ms}ms",
            f"    timeout server {spec.timeout_server_ms}ms",
            f"    timeout check {spec.check_inter_ms}ms",
            "    timeout http-keep-alive 60s",
            "    timeout queue 5s",
        ]
    f = [
        "frontend fastc1k_in",
        f"    bind {listen[0]}:{listen[1]}",
        f"    maxconn {spec.maxconn}",
        "    default_backend fastc1k_replicas",
    ]
    b = [
        "backend fastc1k_replicas",
        f"    balance {spec.algorithm}",
        f"    option httpchk GET {spec.health_path}",
        "    http-check expect status 200",
        f"    default-server check inter {spec.check_inter_ms}ms fall {spec.fall} rise {spec.rise}",
    ]
    for be in backends:
        b.append(f"    server {be.name} {be.host}:{be.port}")
    return "\n".join(g + [""] + d + [""] + f + [""] + b) + "\n"


def nginx_config(backends: list[Backend], listen: tuple[str, int], spec: BalancerSpec, prefix: str) -> str:
    """An nginx config: one worker, upstream keep-alive, passive health only (open-source
    nginx marks a server failed after max_fails errors within fail_timeout; it does not
    probe the health path)."""
    servers = "\n".join(f"        server {be.host}:{be.port} max_fails={spec.fall} "
                        f"fail_timeout={max(1, spec.check_inter_ms // 1000)}s;" for be in backends)
    algo = "least_conn;" if spec.algorithm == "leastconn" else ""
    return f"""worker_processes 1;
worker_rlimit_nofile {2 * spec.maxconn + 64};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections {2 * spec.maxconn}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    keepalive_requests 1000000;
    upstream fastc1k_replicas {{
        {algo}
{servers}
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen[0]}:{listen[1]} backlog=4096;
        location / {{
            proxy_pass http://fastc1k_replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout {spec.timeout_connect_ms}ms;
            proxy_read_timeout {spec.timeout_server_ms}ms;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {spec.retries};
        }}
    }}
}}
"""


class Balancer:
    """One balancer process in front of `backends`, listening on `listen`."""

    def __init__(self, backends: list[Backend], spec: BalancerSpec | None = None,
                 listen: tuple[str, int] | None = None) -> None:
        self.spec = (spec or BalancerSpec()).validate()
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = list(backends)
        self.listen = listen or ("127.0.0.1", free_port())
        self.dir = tempfile.mkdtemp(prefix="fastc1k-lb-")
        self.stats_socket = os.path.join(self.dir, "stats.sock") if self.spec.kind == "haproxy" else None
        self.proc: subprocess.Popen | None = None
        self.config_path = ""
        self.notes: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        """The balancer's processes (nginx: master and worker)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return proc.tree(self.proc.pid)

    def cpu_seconds(self) -> float:
        return proc.cpu_seconds(self.pids())

    def argv(self) -> list[str]:
        exe = shutil.which(self.spec.kind) or shutil.which(self.spec.kind, path="/usr/sbin:/sbin:/usr/local/sbin")
        if not exe:
            pkg = "haproxy" if self.spec.kind == "haproxy" else "nginx-light (or nginx)"
            raise BalancerError(f"{self.spec.kind} is not installed: apt-get install -y {pkg}")
        if self.spec.kind == "haproxy":
            return [exe, "-f", self.config_path, "-db"]
        return [exe, "-p", self.dir, "-c", self.config_path, "-g", "daemon off;"]

    def start(self, timeout: float = 10.0) -> "Balancer":
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.config_path = os.path.join(self.dir, f"{self.spec.kind}.cfg")
        text = (haproxy_config(self.backends, self.listen, self.spec, self.stats_socket)
                if self.spec.kind == "haproxy" else nginx_config(self.backends, self.listen, self.spec, self.dir))
        with open(self.config_path, "w") as f:
            f.write(text)
        argv = self.argv()
        cpu, netns = self.spec.cpu, self.spec.netns

        def pin() -> None:
            if netns:
                net.enter(netns)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
        self._log = open(os.path.join(self.dir, "output.log"), "w+")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=pin, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BalancerError(f"{self.spec.kind} exited with code {self.proc.returncode}: "
                                    f"{self.output()[-800:].strip() or 'no output'}")
            try:
                with socket.create_connection(self.listen, timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BalancerError(f"{self.spec.kind} did not listen on {self.url} within {timeout:g} s: "
                            f"{self.output()[-800:].strip()}")

    def output(self) -> str:
        try:
            self._log.seek(0)
            return self._log.read()
        except (AttributeError, ValueError, OSError):
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HAProxy's view of its servers ---------------------------------------------------------
    def command(self, cmd: str, timeout: float = 1.0) -> str:
        if not self.stats_socket:
            raise BalancerError(f"{self.spec.kind} has no stats socket")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.stats_socket)
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, Any]]:
        """{server name: {status, requests (stot), current (scur), down_s (downtime)}}
        from `show stat`; empty for nginx or when the socket does not answer."""
        if not self.stats_socket or not self.alive():
            return {}
        try:
            text = self.command("show stat")
        except OSError:
            return {}
        out = {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        for r in rows:
            if r.get("svname") in (None, "FRONTEND", "BACKEND") or r.get("pxname") != "fastc1k_replicas":
                continue
            out[r["svname"]] = {"status": r.get("status", ""), "requests": int(r.get("stot") or 0),
                                "current": int(r.get("scur") or 0), "check": r.get("check_status", "")}
        return out

    def wait_healthy(self, timeout: float = 10.0) -> bool:
        """True once every server is UP (nginx: once a request through it succeeds)."""
        deadline = time.monotonic() + timeout
        names = {be.name for be in self.backends}
        while time.monotonic() < deadline:
            if self.spec.kind == "haproxy":
                sv = self.servers()
                if names and all(sv.get(n, {}).get("status") == "UP" for n in names):
                    return True
            else:
                try:
                    with socket.create_connection(self.listen, timeout=1) as s:
                        s.sendall(f"GET {self.spec.health_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                  .encode())
                        if s.recv(64).startswith(b"HTTP/1.1 200"):
                            return True
                except OSError:
                    pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        # HAProxy: SIGUSR1 is its soft stop; SIGTERM its hard stop: the run is over.
        stop_group(self.proc, signal.SIGTERM, 5)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
