"""nginx (Debian's package) as the server under test: `--versus nginx` runs the same plan
against it, under the same container limits, in the same run.

The suite writes its config: fastc1k's routes (`/api/health` the same 15-byte JSON,
`/api/data` the same fields) and fastc1k's limits in nginx's words (the same worker
count, per-worker connections sized from the fd limit as `max_connections auto` does,
the same listen backlog and deferred accept, header and body limits, timeouts), so that what differs is the
server, not its configuration. The bench's nginx (bench/servers.py) is written here too.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable

from ..config import FD_RESERVE, ServerConfig, fd_sized_connections
from .stages import stop_group

__all__ = ["nginx_conf", "NginxProcess", "nginx_missing"]

_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    keepalive_requests 10000000;
    keepalive_timeout {idle_timeout};
    client_header_timeout {header_timeout};
    client_body_timeout {header_timeout};
    send_timeout {send_timeout};
    client_header_buffer_size 1k;
    large_client_header_buffers 4 {header_bytes};
    client_max_body_size {max_body};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} backlog={backlog}{reuseport}{deferred};
        location = /api/health {{ return 200 '{{"status":"ok"}}'; }}
        location = /api/data {{ return 200 '{{"id":$connection_requests,"timestamp":$msec,"worker":$pid}}'; }}
        location / {{ return 404; }}
    }}
}}
"""


def nginx_conf(workdir: str, port: int, workers: int = 1, connections: int | None = None, nofile: int | None = None,
               host: str = "127.0.0.1", config: ServerConfig | None = None, idle_timeout: float | None = None) -> str:
    """An nginx config with fastc1k's routes and `config`'s limits (its defaults when None).
    `connections` per worker default to the fd limit less FD_RESERVE (max_connections auto)."""
    c = config or ServerConfig()
    conns = connections or fd_sized_connections()
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    return _CONF.format(dir=workdir, host=host, port=port, workers=workers, connections=conns,
                        nofile=nofile or conns + FD_RESERVE, backlog=c.backlog,
                        reuseport=" reuseport" if workers > 1 else "", deferred=" deferred" if c.defer_accept else "",
                        idle_timeout=f"{idle_timeout or c.idle_timeout:g}s", header_timeout=f"{c.header_timeout:g}s",
                        send_timeout=f"{c.send_timeout:g}s", header_bytes=f"{c.max_header_bytes // 1024}k",
                        max_body=f"{c.max_body // 1024}k")


def nginx_missing() -> str | None:
    return None if shutil.which("nginx") else "nginx is not installed (apt-get install nginx-light)"


class NginxProcess:
    """nginx in a child process (inside the container, if any), with the interface of
    stages.ServerProcess: start(), url, pid, alive(), stderr(), stop(), startup_line,
    workers, max_connections (worker_connections) and fd_limit."""

    def __init__(self, workers: int = 1, preexec: Callable[[], None] | None = None,
                 config: ServerConfig | None = None, startup_timeout: float = 15.0) -> None:
        why = nginx_missing()
        if why:
            raise RuntimeError(why)
        self.workers = workers
        self.preexec = preexec
        self.config = config
        self.startup_timeout = startup_timeout
        self.dir = tempfile.mkdtemp(prefix="fastc1k-capacity-nginx-")
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.startup_line = ""
        self.max_connections: int | None = None
        self.fd_limit: int | None = None
        self.argv: list[str] = []

    def start(self) -> "NginxProcess":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # the fd limit nginx will run under: the container's (its preexec sets it), read in a child
        probe = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True, preexec_fn=self.preexec)
        hard = probe.stdout.strip()
        self.fd_limit = int(hard) if hard.isdigit() else None
        conns = max(1, self.fd_limit - FD_RESERVE) if self.fd_limit else fd_sized_connections()
        self.max_connections = conns
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(self.dir, port, self.workers, conns, self.fd_limit, config=self.config))
        self.argv = ["nginx", "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=self.preexec, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        self.url = f"http://127.0.0.1:{port}"
                        self.startup_line = (f"nginx: serving {self.url} workers={self.workers} "
                                             f"fd_limit/worker={self.fd_limit} worker_connections={conns} "
                                             f"(config {conf})")
                        return self
            except OSError:
                time.sleep(0.05)
        err = self.stderr()
        self.stop()
        raise RuntimeError(f"nginx did not start: {err.strip()[-400:] or 'no output'}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (nginx's fast stop), then SIGKILL of its process group."""
        code = stop_group(self.proc, signal.SIGTERM, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code
