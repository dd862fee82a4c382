"""The resource monitor: the server's processes, its limits and the kernel, every 100 ms.

One thread samples psutil (CPU, RSS, fds, context switches of the server's process
tree), the cores the kernel's ksoftirqd threads use outside the container (host-wide),
the kernel's TCP counters (/proc/net/netstat, /proc/net/sockstat) and the
cgroup's throttling; a second thread scrapes the server's own /metrics (loop lag, events
per wait, buffer pool) when it is fastc1k, because a scrape can take long on a saturated
server and must not stall the 100 ms samples. Samples carry the client count the
runner set, so analysis.first_bottleneck can say "at N clients".
"""
from __future__ import annotations

import http.client
import os
import re
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import psutil

from ..host import conntrack, proc
from ..metrics import parse_prometheus_text

__all__ = ["Monitor", "parse_prometheus"]

GAP_S = 1.0   # samples further apart than this: a gap the report names


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled series as-is; labelled per-worker series folded: *_p99_us and *_max_*
    take the max over workers, everything else is left to its unlabelled total."""
    out: dict[str, float] = {}
    for name, labels, v in parse_prometheus_text(text):
        if not labels:
            out[name] = v
        elif set(labels) == {"worker"} and ("lag" in name or "max" in name):
            out[name] = max(out.get(name, 0.0), v)
    return out


class Monitor:
    """Samples the server every `interval` s until stop().

    `pid`: the server's root process (its children are followed as they come and go);
    None for an external target (then only the kernel and /metrics). `container` gives
    the CPU allowance, memory limit and cgroup throttling; `cpu_allowed` overrides it.
    """

    def __init__(self, pid: int | None, metrics_url: str | None = None, interval: float = 0.1,
                 metrics_interval: float = 0.5, container: Any = None, cpu_allowed: float | None = None,
                 clients: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self.metrics_url = metrics_url
        self.interval = interval
        self.metrics_interval = metrics_interval
        self.container = container
        self._cpu_allowed = cpu_allowed
        self.clients = clients or (lambda: 0)
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._procs: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, float] = {}
        self._last_wait: dict[int, int] = {}
        self._latest_metrics: dict[str, float] = {}
        self._metrics_errors = 0
        self._threads: list[threading.Thread] = []
        self.base_netstat = proc.netstat()
        self.notes: list[str] = []
        self._base_ooms = 0
        self.own_netns = False    # set by the runner: the kernel counters are then the run's alone
        self.overflow_baseline: float | None = None
        self.base_conntrack: dict[str, int] = {}
        self.port = urlsplit(metrics_url).port if metrics_url else None
        self.netns_pid: int | None = None   # read the kernel counters of this process's namespace (a container's)
        self._ksoftirqd = proc.ksoftirqd_pids()
        self._last_ksoftirqd: float | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Monitor":
        if not self.own_netns:
            # the host-wide ListenOverflows rate before the run: what other listeners cause
            a = proc.netstat().get("ListenOverflows", 0)
            time.sleep(0.5)
            self.overflow_baseline = (proc.netstat().get("ListenOverflows", 0) - a) / 0.5
        self.t0 = time.monotonic()
        self.base_netstat = proc.netstat(pid=self.netns_pid)
        ooms = getattr(self.container, "oom_kills", None)
        self._base_ooms = (ooms() if ooms else None) or 0
        self.base_conntrack = conntrack.read() or {}
        self._threads = [threading.Thread(target=self._loop, name="capacity-monitor", daemon=True)]
        if self.metrics_url:
            self._threads.append(threading.Thread(target=self._metrics_loop, name="capacity-metrics", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        return self.samples

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if t0 <= s["t"] < t1]

    # -- sampling -------------------------------------------------------------------------
    def _tree(self) -> list[psutil.Process]:
        if self.pid is None:
            return []
        try:
            root = self._procs.get(self.pid) or psutil.Process(self.pid)
            self._procs[self.pid] = root
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for p in procs:
            out.append(self._procs.setdefault(p.pid, p))
        return out

    def cpu_allowed(self, n_procs: int) -> float:
        """Cores the server may use: the override, else the cgroup quota, the CPUs it may
        run on, and (for a pre-fork server) its worker count, whichever is least."""
        if self._cpu_allowed:
            return self._cpu_allowed
        cores = float(len(os.sched_getaffinity(self.pid or 0)) if self.pid else os.cpu_count() or 1)
        quota = getattr(self.container, "cpu_quota", None)
        if quota:
            cores = min(cores, quota)
        workers = max(1, n_procs - 1) if n_procs > 1 else 1   # master + workers; the master idles
        return min(cores, float(workers))

    def sample_once(self, dt: float | None) -> dict[str, Any]:
        now = time.monotonic()
        s: dict[str, Any] = {"t": now - self.t0, "clients": self.clients()}
        procs = self._tree()
        cpu_used = cpu_wait = 0.0
        per_proc = []
        rss = 0
        fds_max, fd_limit = None, None
        vol = invol = 0
        alive = set()
        for p in procs:
            try:
                with p.oneshot():
                    ct = p.cpu_times()
                    cpu = ct.user + ct.system
                    mem = p.memory_info().rss
                    nfd = p.num_fds()
                    cs = p.num_ctx_switches()
                lim = proc.nofile_limits(pid=p.pid)[0]
            except (psutil.Error, OSError):
                continue
            if lim is None:   # gone meanwhile
                continue
            alive.add(p.pid)
            prev = self._last_cpu.get(p.pid)
            self._last_cpu[p.pid] = cpu
            used = (cpu - prev) / dt if (prev is not None and dt) else 0.0
            cpu_used += used
            ss = proc.schedstat(p.pid)
            if ss is not None:
                pw = self._last_wait.get(p.pid)
                self._last_wait[p.pid] = ss[1]
                if pw is not None and dt:
                    # The kernel credits a wait when the task finally runs, all at once:
                    # a thread cannot be runnable longer than the interval.
                    try:
                        threads = p.num_threads()
                    except psutil.Error:
                        threads = 1
                    cpu_wait += min((ss[1] - pw) / 1e9 / dt, max(0.0, threads - used))
            per_proc.append({"pid": p.pid, "cpu": round(used, 3), "rss": mem, "fds": nfd, "fd_limit": lim})
            rss += mem
            vol += cs.voluntary
            invol += cs.involuntary
            # The fullest process against its own limit is the one that runs out first.
            if lim > 0 and (fds_max is None or nfd / lim > fds_max / fd_limit):
                fds_max, fd_limit = nfd, lim
        for pid in list(self._procs):
            if pid not in alive:
                self._procs.pop(pid, None)
                self._last_cpu.pop(pid, None)
                self._last_wait.pop(pid, None)
        if procs:
            s.update(cpu_used=round(cpu_used, 3), cpu_wait=round(cpu_wait, 3), cpu_allowed=self.cpu_allowed(len(alive)), rss=rss,
                     fds=fds_max, fd_limit=fd_limit if fd_limit and fd_limit < (1 << 40) else None,
                     ctx_voluntary=vol, ctx_involuntary=invol, procs=per_proc)
            lim = getattr(self.container, "memory_limit", None)
            s["mem_limit"] = lim or psutil.virtual_memory().total
            outside = getattr(self.container, "outside", None)
            escaped = outside(sorted(alive)) if outside and alive else []
            if escaped:   # its CPU and memory are not under the container's limits
                s["outside_container"] = escaped
                note = (f"server process(es) {', '.join(map(str, escaped))} outside the container's cgroup: "
                        "the figures are not the container's")
                if note not in self.notes:
                    self.notes.append(note)
        if self._ksoftirqd:   # host-wide: packet work outside any container's cgroup and quota
            k = proc.cpu_seconds(self._ksoftirqd)
            if self._last_ksoftirqd is not None and dt:
                s["ksoftirqd"] = round((k - self._last_ksoftirqd) / dt, 3)
            self._last_ksoftirqd = k
        ns = proc.netstat(pid=self.netns_pid)
        for k, v in ns.items():
            s[_snake(k)] = v - self.base_netstat.get(k, 0)
        s["sockstat"] = proc.sockstat(self.netns_pid)
        if self.own_netns:
            s["own_netns"] = True
        else:
            s["listen_overflows_baseline"] = self.overflow_baseline
            q = proc.listen_queue(self.port) if self.port else None
            if q:
                s["listen_queue"] = q
        ct = conntrack.read()
        if ct:
            s.update(conntrack_count=ct["count"], conntrack_max=ct["max"])
            for k in ("drop", "insert_failed"):
                if k in ct:
                    s[f"conntrack_{k}"] = ct[k] - self.base_conntrack.get(k, 0)
        used = getattr(self.container, "memory_used", None)
        if used is not None and procs:
            m = used()
            if m is not None:
                s["cgroup_memory"] = m
        thr = getattr(self.container, "throttled", None)
        if thr is not None:
            t = thr()
            if t is not None:
                s["cpu_throttled"] = t
        ooms = getattr(self.container, "oom_kills", None)
        if ooms is not None:
            n = ooms()
            if n is not None:   # processes the memory limit's OOM killer took since the start
                s["oom_kills"] = n - self._base_ooms
        if self._latest_metrics:
            s["server"] = dict(self._latest_metrics)
        return s

    def _loop(self) -> None:
        last = None
        while not self._stop.is_set():
            now = time.monotonic()
            if last is not None and now - last > GAP_S:
                # a starved or blocked sampler: its window has no figures; say so, not just "-"
                self.notes.append(f"monitor: no sample for {now - last:.1f} s (t={last - self.t0:.1f} to "
                                  f"{now - self.t0:.1f} s): the figures of that window are missing")
            try:
                self.samples.append(self.sample_once(now - last if last else None))
            except Exception as exc:  # a sampler error is a note in the report, not a crash
                self.notes.append(f"monitor: {exc!r}")
            last = now
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - now)))

    def _metrics_loop(self) -> None:
        u = urlsplit(self.metrics_url)
        prev: dict[str, float] = {}
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=2)
                conn.request("GET", u.path or "/metrics")
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                conn.close()
                m = parse_prometheus(body) if resp.status == 200 else {}
            except (OSError, http.client.HTTPException):
                self._metrics_errors += 1
                m = {}
            if m:
                ev, wa = m.get("fastc1k_loop_events_total"), m.get("fastc1k_loop_waits_total")
                if ev is not None and wa is not None and prev.get("wa") is not None and wa > prev["wa"]:
                    m["events_per_wait"] = (ev - prev["ev"]) / (wa - prev["wa"])
                prev = {"ev": ev, "wa": wa}
                keep = ("fastc1k_loop_lag_p99_us", "fastc1k_loop_lag_max_us", "fastc1k_pool_in_use",
                        "fastc1k_pool_size", "fastc1k_active", "fastc1k_rejected_max_connections_total",
                        "fastc1k_accept_paused_total", "fastc1k_pool_exhausted_total", "events_per_wait")
                self._latest_metrics = {k: m[k] for k in keep if k in m}
            self._stop.wait(max(0.0, self.metrics_interval - (time.monotonic() - t)))


def _snake(name: str) -> str:
    """ListenOverflows -> listen_overflows, TCPAbortOnMemory -> tcp_abort_on_memory."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
