"""The workloads, and one measured run of one workload against one server.

A run = switch the server's quota on/off, read its CPU (/proc), drive it, read again:
server CPU per request (user/sys) does not depend on how strong the load generator is
(bench/METHOD.md §1); under the quota the server is the bottleneck and
req/s is its capacity (§2).
"""
from __future__ import annotations

import dataclasses
import os
import time

from . import drivers, measure
from .servers import DATA, HANDLER, HEALTH, RunningServer

__all__ = ["Workload", "WORKLOADS", "measure_run", "idle_memory", "scale"]


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    path: str = HEALTH
    connections: int = 1000
    pipeline: int = 1
    close: bool = False          # `Connection: close`: a new connection per request
    quota: bool = True           # the server in its 0.5-CPU quota (rule 4)
    requests: int = 400_000      # a round stops after about this many requests...
    duration: float = 3.0        # ...or after this long, whichever comes first
    min_duration: float = 1.0    # floor of a scaled-down round (wrk needs ~2.5 s to open 10,000)

    def round_duration(self) -> float:
        return max(self.min_duration, self.duration * scale())


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("keepalive-c100", "keep-alive, c=100, no quota", connections=100, quota=False),
    Workload("keepalive-c1000", "keep-alive, c=1000, no quota", connections=1000, quota=False),
    Workload("keepalive-c10000", "keep-alive, c=10000, no quota", connections=10000, quota=False,
             duration=6.0, min_duration=6.0, requests=2_000_000),
    Workload("quota-c1000", "keep-alive, c=1000, 0.5-CPU quota", connections=1000),
    Workload("pipelined16-c100", "pipelined x16, c=100, 0.5-CPU quota", connections=100, pipeline=16,
             requests=2_000_000),
    Workload("data-c1000", "/api/data, c=1000, 0.5-CPU quota", path=DATA, connections=1000),
    Workload("newconn-c50", "a new connection per request, c=50, 0.5-CPU quota", connections=50, close=True,
             requests=100_000),
    Workload("handler-c100", "Python handler route, c=100, 0.5-CPU quota", path=HANDLER, connections=100),
)}


def scale() -> float:
    """FASTC1K_BENCH_SCALE multiplies every round's length (0.25 for a smoke run)."""
    return float(os.environ.get("FASTC1K_BENCH_SCALE", "1"))


def measure_run(server: RunningServer, w: Workload, duration: float | None = None,
                max_requests: int | None = None) -> dict:
    """One bounded run of w against server; the figures as a flat dict."""
    server.set_quota(w.quota)
    pids = server.pids()
    thr0 = server.quota.throttled()
    before = measure.cpu_sample(pids)
    res = drivers.run_load(server.url(w.path), w.connections,
                           duration if duration is not None else w.round_duration(), w.pipeline,
                           max_requests if max_requests is not None else int(w.requests * scale()), w.close)
    d = measure.cpu_sample(pids) - before
    n = max(res.requests, 1)
    return {
        "requests": res.requests,
        "elapsed_s": round(res.elapsed, 3),
        "rps": round(res.rps),
        "cpu_us": (d.user + d.sys) / n * 1e6,
        "user_us": d.user / n * 1e6,
        "sys_us": d.sys / n * 1e6,
        "errors": res.errors,
        "p50_us": res.p50_us,
        "p99_us": res.p99_us,
        "throttled_periods": server.quota.throttled() - thr0,
        "quota": server.quota.label if w.quota else "none",
        "driver": res.driver,
    }


def idle_memory(server: RunningServer, n: int) -> dict:
    """METHOD.md §6: n idle keep-alive connections, one request each; RSS delta / n over the
    server's processes, kernel slab and TCP memory deltas / n beside it, and the C engine's
    connection struct size. Meant for a fresh server (no workload before it): pages an
    earlier run touched would not be counted."""
    server.set_quota(False)
    pids = server.pids()
    rss0, k0 = measure.rss_bytes(pids), measure.kernel_memory()
    with drivers.hold_idle_connections(server.host, server.port, n) as answered:
        time.sleep(0.5)  # let lazily-freed buffers settle
        rss1, k1 = measure.rss_bytes(server.pids()), measure.kernel_memory()
    per = max(answered, 1)
    return {
        "connections": n,
        "answered": answered,
        "rss_per_conn": (rss1 - rss0) / per,
        "slab_per_conn": (k1.get("slab", 0) - k0.get("slab", 0)) / per,
        "tcp_mem_per_conn": (k1.get("tcp_mem", 0) - k0.get("tcp_mem", 0)) / per,
        "struct_bytes": server.spec.conn_struct_bytes(),
    }
