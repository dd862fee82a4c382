"""The three tests of the plan, run against one target: the staged ramp to the breaking
point (bisected between the last good and the first broken stage), the resource ramp
(first bottleneck), and the overload blast with recovery timed on 100 ms rows.

Strategy: each phase runs one fastc1k.load farm and steers it with set_connections.
Stage boundaries sit on the farm's whole seconds (its timeline rows are seconds since
its start, on CLOCK_MONOTONIC like time.monotonic), so a stage is exactly the rows
[start, end) and its latency is histogram_between(start, end): no second is shared
by two stages. Everything is timed against one run clock (`t` = seconds since the run
started), shared by the timeline, the monitor samples and the phase windows.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..host import sysctl
from ..host.net import parse_source_ips
from . import analysis as A
from .monitor import Monitor

__all__ = ["RunConfig", "ServerProcess", "Runner", "host_client_limit", "DEFAULT_STAGES", "load_api",
           "server_env"]

DEFAULT_STAGES = (100, 250, 500, 750, 1000)
AUTO_SOURCES = "127.0.0.1-127.0.0.8"
PROBE_PATH = "/api/health"


def load_api():
    """(LoadSpec, LoadFarm) of fastc1k.load."""
    try:
        from ..load import LoadFarm, LoadSpec
    except ImportError:
        from ..load.farm import LoadFarm, LoadSpec
    return LoadSpec, LoadFarm


@dataclass
class RunConfig:
    """Durations default to a scaled-down plan so a full report takes < 5 min; `plan()`
    gives the plan's own (10 s stages, 30 s at 1000, a 2 min ramp, a 30 s blast)."""
    stages: tuple[int, ...] = DEFAULT_STAGES
    stage_s: int = 5
    final_stage_s: int = 10          # the last listed stage (the plan's "last 30 s")
    growth: float = 1.5              # past the listed stages: x1.5 until broken or max_clients
    max_clients: int = 20000
    ramp_clients: int | None = None  # None: the largest stage the staged phase reached
    ramp_steps: int = 20
    ramp_s: float = 30.0
    # The resource ramp is open loop: a rate rising with the clients, so per-connection
    # limits (fds, memory, listen queue) can show before CPU. "auto": at the top of the ramp,
    # half the peak throughput the stages measured; a number: that many requests/s at the
    # top; "closed": closed loop (every client as fast as the server answers).
    ramp_rate: float | str = "auto"
    blast_factor: float = 2.0
    blast_s: int = 10
    recovery_clients: int | None = None  # None: 10 % of the breaking point, at least 100
    probe_s: int = 3                 # each bisection probe: 1 s to settle, then this long
    recovery_window_s: int = 15
    phases: tuple[str, ...] = ("stages", "ramp", "recovery")
    processes: int | None = None
    cluster: str | None = None       # a Dask scheduler: the load runs on its workers (fastc1k.load.cluster)
    # "auto": against a loopback target, 8 source addresses (8 x the ephemeral ports):
    # each phase leaves its closed connections' ports in TIME_WAIT for 60 s, and a blast
    # of 20,000 connects on one source address then crawls through an exhausted range.
    source_ips: str | None = "auto"
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    path: str = PROBE_PATH
    thresholds: A.Thresholds = field(default_factory=A.Thresholds)

    @classmethod
    def plan(cls, **kw: Any) -> "RunConfig":
        return cls(**{**dict(stage_s=10, final_stage_s=30, ramp_s=120.0, blast_s=30, recovery_window_s=30,
                             probe_s=5), **kw})

    @classmethod
    def quick(cls, **kw: Any) -> "RunConfig":
        return cls(**{**dict(stage_s=2, final_stage_s=3, ramp_s=8.0, blast_s=3, recovery_window_s=6,
                             probe_s=2), **kw})

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = asdict(self.thresholds)
        return d


RECOVERY_SHARE, RECOVERY_MIN = 0.10, 100   # the recovery load: 10 % of the breaking point, >= 100
AUTO_RAMP_SHARE = 0.5                       # "auto" ramp rate: this share of the stages' peak at the top
AUTO_RAMP_PER_CLIENT = 10.0                 # ... or, with no stages run, requests/s per client


def recovery_clients(cfg: "RunConfig", breaking_clients: int | None) -> int:
    if cfg.recovery_clients:
        return cfg.recovery_clients
    return max(RECOVERY_MIN, round(RECOVERY_SHARE * (breaking_clients or 0)))


def host_client_limit(source_ips: int = 1) -> tuple[int, str]:
    """Connections this host can open to one address:port: the ephemeral ports per
    source address (fds are not the limit: the farm adds a process per 15,000)."""
    lo, hi = sysctl.port_range() or sysctl.DEFAULT_PORT_RANGE
    ports = (hi - lo + 1) * max(1, source_ips)
    return ports - 1000, f"{hi - lo + 1} ephemeral ports x {max(1, source_ips)} source address(es), 1000 kept spare"


# --------------------------------------------------------------------------- the server

def stop_group(proc: subprocess.Popen | None, sig: int, timeout: float = 10.0) -> int | None:
    """Send `sig` to a server the run started (in a session of its own), then SIGKILL its
    process group if it has not exited after `timeout`; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode


def server_env() -> dict[str, str]:
    """This environment, with PYTHONPATH first naming the tree this fastc1k was imported from
    (so a server child runs the same code)."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerProcess:
    """`python -m fastc1k.serve` in a child process (inside the container, if any)."""

    def __init__(self, engine: str | None = None, workers: int = 1, extra: list[str] | None = None,
                 preexec: Callable[[], None] | None = None, startup_timeout: float = 20.0) -> None:
        self.argv = [sys.executable, "-m", "fastc1k.serve", "--host", "127.0.0.1", "--port", "0",
                     "--workers", str(workers), "--log-level", "warning"]
        if engine:
            self.argv += ["--engine", engine]
        self.argv += list(extra or [])
        self.preexec = preexec
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.startup_line = ""
        self.max_connections: int | None = None   # per worker, as the server resolved it
        self.fd_limit: int | None = None          # per worker
        self.workers = workers
        self._out = tempfile.TemporaryFile(mode="w+")
        self._err = tempfile.TemporaryFile(mode="w+")

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env=server_env(), preexec_fn=self.preexec, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._out.seek(0)
            text = self._out.read()
            m = re.search(r"serving (http://\S+)", text)
            if m:
                self.startup_line = text.splitlines()[0]
                self.url = m.group(1)
                mc = re.search(r"max_connections/worker=(\d+)", self.startup_line)
                self.max_connections = int(mc.group(1)) if mc else None
                fd = re.search(r"fd_limit/worker=(\d+)", self.startup_line)
                self.fd_limit = int(fd.group(1)) if fd else None
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        err = self.stderr()
        self.stop()
        raise RuntimeError(f"the server did not start ({shlex.join(self.argv)}): {err.strip()[-500:] or 'no output'}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str:
        return f"code {self.proc.returncode if self.proc else None}: {self.stderr().strip()[-400:]}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGQUIT (fastc1k's immediate stop: the run is over), then SIGKILL of its group."""
        return stop_group(self.proc, signal.SIGQUIT, timeout)


# --------------------------------------------------------------------------- the runner

def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def latency_block(h) -> dict[str, Any]:
    """avg/p50/p95/p99/p99.9/max in ms of an hdrh histogram (None when empty)."""
    n = h.get_total_count()
    if not n:
        return {"count": 0, "avg": None, "p50": None, "p95": None, "p99": None, "p999": None, "max": None}
    # A percentile is its bucket's highest equivalent value; the farm keeps the exact max.
    top = h.max_value
    p = {q: min(v, top) for q, v in h.get_percentile_to_value_dict([50.0, 95.0, 99.0, 99.9]).items()}
    return {"count": n, "avg": _ms(h.get_mean_value()), "p50": _ms(p[50.0]), "p95": _ms(p[95.0]),
            "p99": _ms(p[99.0]), "p999": _ms(p[99.9]), "max": _ms(top)}


def _encode(h) -> str:
    return h.encode().decode() if h.get_total_count() else ""


class Runner:
    """Runs the phases against `url` (the server root, e.g. http://127.0.0.1:8080)."""

    def __init__(self, url: str, cfg: RunConfig, server: ServerProcess | None = None, container: Any = None,
                 progress: Callable[[dict[str, Any]], None] | None = None, server_pid: int | None = None,
                 metrics: bool = True, own_netns: bool = False) -> None:
        self.url = url.rstrip("/")
        self.cfg = cfg
        self.server = server
        self.container = container
        self.progress = progress or (lambda st: None)
        self.t0 = time.monotonic()
        self.clients = 0
        self.phase = ""
        self.timeline: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.windows: list[dict[str, Any]] = []   # phase and stage boundaries, run clock
        pid = server.pid if server else server_pid
        self.monitor = Monitor(pid, (self.url + "/metrics") if metrics else None, container=container,
                               clients=lambda: self.clients)
        self.monitor.own_netns = own_netns
        if cfg.source_ips == "auto" and cfg.cluster:
            cfg.source_ips = None            # each load machine declares its own
        if cfg.source_ips == "auto":
            from urllib.parse import urlsplit
            host = urlsplit(self.url).hostname or ""
            cfg.source_ips = AUTO_SOURCES if host.startswith("127.") else None
        n_src = 1
        if cfg.source_ips:
            n_src = len(parse_source_ips(cfg.source_ips))
        self.host_limit, self.host_limit_why = host_client_limit(n_src)
        if cfg.cluster:    # the cluster's machines hold the clients (a plan too big is refused)
            self.host_limit, self.host_limit_why = cfg.max_clients, f"the Dask cluster at {cfg.cluster}"
        self.max_clients = min(cfg.max_clients, self.host_limit)
        self.planned_s = self._plan_seconds()
        self.LoadSpec, self.LoadFarm = load_api()

    # -- helpers ----------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def _plan_seconds(self) -> float:
        c = self.cfg
        s = 0.0
        if "stages" in c.phases:
            n = len(c.stages)
            s += (n - 1) * c.stage_s + c.final_stage_s
            x = c.stages[-1]
            while x < self.max_clients:
                x = min(self.max_clients, math.ceil(x * c.growth))
                s += c.stage_s
        if "ramp" in c.phases:
            s += c.ramp_s
        if "recovery" in c.phases:
            s += c.blast_s + c.recovery_window_s
        return s

    def _farm(self, connections: int, most: int, rate: float | None = None):
        c = self.cfg
        spec = self.LoadSpec(url=self.url + c.path, connections=connections, rate=rate, processes=c.processes,
                             source_ips=c.source_ips, connect_timeout=c.connect_timeout,
                             request_timeout=c.request_timeout, max_connections=most)
        executor = None
        if c.cluster:
            from ..load.cluster import DaskExecutor
            executor = DaskExecutor(c.cluster, processes=c.processes)
        farm = self.LoadFarm(spec, executor=executor).start()
        base = farm.started_ns / 1e9 - self.t0   # farm second k starts at run time base + k
        return farm, base

    def _wait_farm_second(self, base: float, k: int, farm: Any, phase: str, extra: dict[str, Any]) -> None:
        """Sleep until farm second k begins."""
        self._sleep_until(base + k, farm, phase, extra)

    def _sleep_until(self, t: float, farm: Any, phase: str, extra: dict[str, Any]) -> None:
        """Sleep until run time t, watching the farm and the server, reporting progress once a second."""
        last_report = -1.0
        while True:
            left = t - self.now()
            if left <= 0:
                return
            if farm.errors:
                raise RuntimeError("a load worker failed:\n" + farm.errors[0])
            if self.server is not None and not self.server.alive():
                raise RuntimeError(f"the server exited ({self.server.exit_reason()})")
            if self.now() - last_report >= 1.0:
                last_report = self.now()
                rows = farm.timeline()
                row = rows[-1] if rows else {}
                ok = row.get("ok", 0)
                err = sum((row.get("errors") or {}).values())
                self.progress({"phase": phase, "clients": self.clients, "rps": ok + err,
                               "p99_ms": _ms(row.get("p99_us")), "errors": err,
                               "error_rate": err / (ok + err) if ok + err else 0.0,
                               "elapsed": self.now(), "remaining": max(0.0, self.planned_s - self.now()),
                               **extra})
            time.sleep(min(left, 0.05))

    def _rows(self, farm: Any, base: float, k0: int, k1: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Rows k0 <= t < k1, waiting (briefly) for the last one to be complete."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in farm.timeline() if k0 <= r["t"] < k1]
            if len(rows) >= k1 - k0 or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def _keep(self, rows: list[dict[str, Any]], base: float, phase: str, clients_at: Callable[[int], int]) -> None:
        for r in rows:
            if r.get("duration", 1.0) < 0.999:
                continue  # the partial second cut by stop(): its rates would read low
            self.timeline.append({**r, "t": round(base + r["t"], 3), "farm_t": r["t"], "phase": phase,
                                  "clients": clients_at(r["t"])})

    # -- run ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        self.monitor.t0 = self.t0
        self.monitor.start()
        out: dict[str, Any] = {}
        try:
            if "stages" in self.cfg.phases:
                out["stages"] = self.run_stages()
            if "ramp" in self.cfg.phases:
                out["ramp"] = self.run_ramp(out.get("stages"))
            if "recovery" in self.cfg.phases:
                out["recovery"] = self.run_recovery(out.get("stages"))
        except KeyboardInterrupt:
            self.notes.append("interrupted (^C): the report holds what was measured until then")
        except RuntimeError as exc:   # the server died or a load worker failed: report what was measured
            out["aborted"] = str(exc)
            self.notes.append(f"run aborted: {exc}")
        finally:
            self.clients = 0
            samples = self.monitor.stop()
            self.notes += self.monitor.notes
        out["elapsed_s"] = round(self.now(), 2)
        out["samples"] = samples
        out["timeline"] = self.timeline
        out["windows"] = self.windows
        out["notes"] = self.notes
        out["host_limit"] = {"clients": self.host_limit, "why": self.host_limit_why, "max_clients": self.max_clients}
        return out

    def _stage_list(self) -> list[int]:
        return [c for c in self.cfg.stages if c <= self.max_clients] or [self.max_clients]

    def run_stages(self) -> dict[str, Any]:
        c, th = self.cfg, self.cfg.thresholds
        listed = self._stage_list()
        self.phase = "stages"
        self.clients = listed[0]
        farm, base = self._farm(listed[0], max(self.max_clients, listed[-1]))
        stages: list[dict[str, Any]] = []
        bounds: list[tuple[int, int, int]] = []  # (clients, k0, k1)
        stop_reason = None
        k, i, clients = 0, 0, listed[0]
        try:
            while True:
                dur = c.final_stage_s if i == len(listed) - 1 else c.stage_s
                k0, k1 = k, k + dur
                bounds.append((clients, k0, k1))
                self.windows.append({"phase": "stages", "label": f"{clients}", "t0": base + k0, "t1": base + k1})
                self._wait_farm_second(base, k1, farm, "stages", {"stage": f"{i + 1}"})
                # Move on at once (the boundary is exact); whether this stage ends the
                # phase is known only once its last row is in, a few ms later.
                nxt = self._next_clients(listed, i, clients)
                if nxt is not None:
                    farm.set_connections(nxt)
                    self.clients = nxt
                stages.append(self._measure(farm, base, k0, k1, clients))
                st = stages[-1]
                if st["error_rate"] > th.stop_error_rate:
                    stop_reason = f"error rate {st['error_rate']:.0%} > {th.stop_error_rate:.0%} at {clients} clients"
                    break
                if i + 1 >= len(listed) and A.breaking_point(stages, th):
                    stop_reason = "broken"
                    break
                if nxt is None:
                    stop_reason = f"reached the client limit {self.max_clients} ({self._limit_why()})"
                    break
                k, i, clients = k1, i + 1, nxt
            bp = A.breaking_point(stages, th)
            probes, probe_bounds = self._bisect(farm, base, k1, bp) if bp else ([], [])
        finally:
            self.clients = 0
            farm.stop()
        # cascades: errors of a stage that spill into the first seconds of the next
        all_rows = farm.timeline(partial=True)
        for j, (cl, k0, k1) in enumerate(bounds):
            self._keep([r for r in all_rows if k0 <= r["t"] < k1], base, "stages", lambda t, cl=cl: cl)
            if j + 1 < len(bounds):
                nxt = [r for r in all_rows if bounds[j + 1][1] <= r["t"] < bounds[j + 1][2]]
                stages[j]["cascade_s"] = A.cascade_seconds(nxt)
        for cl, k0, k1 in probe_bounds:
            self._keep([r for r in all_rows if k0 <= r["t"] < k1], base, "probe", lambda t, cl=cl: cl)
        if bp:
            bp = self._bracket(bp, stages, probes)
        clients_l = [s["clients"] for s in stages]
        tput = [s["throughput"] for s in stages]
        return {
            "stages": stages,
            "probes": probes,
            "stop_reason": stop_reason or "all stages run",
            "breaking_point": bp,
            "latency_explosion": A.latency_explosion(stages, th),
            "degradation": A.degradation(stages, th),
            "usl": A.usl_fit(clients_l, tput),
            "peak_throughput": max(tput) if tput else None,
            "peak_clients": clients_l[tput.index(max(tput))] if tput else None,
            "load_summary": farm.stop().summary,
        }

    def _measure(self, farm: Any, base: float, k0: int, k1: int, clients: int) -> dict[str, Any]:
        """A stage's (or a probe's) summary from farm seconds k0 <= t < k1."""
        th = self.cfg.thresholds
        st = A.summarize_rows(self._rows(farm, base, k0, k1), clients)
        h = farm.histogram_between(k0, k1)
        st.update(start_s=round(base + k0, 3), duration_s=k1 - k0, latency_ms=latency_block(h),
                  histogram=_encode(h))
        st.update(A.server_cpu(self.monitor.between(base + k0, base + k1), st["throughput"]))
        st["broken"] = A.is_broken(st, th)
        if st["broken"]:
            srv = [s.get("server") or {} for s in self.monitor.between(base + k0, base + k1 + 0.5)]
            rej = [m["fastc1k_rejected_max_connections_total"] for m in srv
                   if "fastc1k_rejected_max_connections_total" in m]
            st["configured_limit"] = A.configured_limit(
                st, getattr(self.server, "max_connections", None), getattr(self.server, "workers", 1),
                rejected=(rej[-1] - rej[0]) if len(rej) > 1 else None, fd_limit=getattr(self.server, "fd_limit", None))
        return st

    def _bisect(self, farm: Any, base: float, k: int, bp: dict[str, Any]) -> tuple[list, list]:
        """Probe between the last good and the first broken stage until the bracket is
        within the precision: each probe 1 s to settle, then probe_s measured."""
        c, th = self.cfg, self.cfg.thresholds
        good, broken = bp["last_good_clients"], bp["clients"]
        probes: list[dict[str, Any]] = []
        bounds: list[tuple[int, int, int]] = []
        if good is None:
            return probes, bounds
        while (mid := A.bisect_next(good, broken, th.precision)) is not None:
            farm.set_connections(mid)
            self.clients = mid
            k0, k1 = k + 1, k + 1 + c.probe_s
            self.windows.append({"phase": "probe", "label": f"probe {mid}", "t0": base + k0, "t1": base + k1})
            self._wait_farm_second(base, k1, farm, "probe", {"stage": f"{good}-{broken}"})
            st = self._measure(farm, base, k0, k1, mid)
            probes.append(st)
            bounds.append((mid, k, k1))
            good, broken = (good, mid) if st["broken"] else (mid, broken)
            k = k1
        return probes, bounds

    def _bracket(self, bp: dict[str, Any], stages: list, probes: list) -> dict[str, Any]:
        """The breaking point with its bracket: the highest count that held and the lowest
        that broke, over the stages and the probes; what broke it at the lowest."""
        th = self.cfg.thresholds
        runs = stages + probes
        good = max((s["clients"] for s in runs if not s["broken"] and s["clients"] < bp["clients"]), default=None)
        first = min((s for s in runs if s["broken"] and (good is None or s["clients"] > good)),
                    key=lambda s: s["clients"])
        out = {**bp, "stage_clients": bp["clients"], "clients": first["clients"], "last_good_clients": good,
               "reasons": first["broken"], "precision": th.precision, "probes": len(probes),
               "text": A.bracket_text(good, first["clients"])}
        out["configured_limit"] = first.get("configured_limit")
        return out

    def _next_clients(self, listed: list[int], i: int, clients: int) -> int | None:
        """The listed stages, then x growth up to max_clients (None: at the limit)."""
        if i + 1 < len(listed):
            return listed[i + 1]
        if clients >= self.max_clients:
            return None
        return min(self.max_clients, math.ceil(clients * self.cfg.growth))

    def _limit_why(self) -> str:
        if self.max_clients == self.host_limit:
            return self.host_limit_why
        return "--max-clients"

    def run_ramp(self, staged: dict[str, Any] | None) -> dict[str, Any]:
        c = self.cfg
        n = c.ramp_clients
        if n is None:
            n = staged["stages"][-1]["clients"] if staged and staged["stages"] else c.stages[-1]
        n = min(n, self.max_clients)
        steps = max(1, c.ramp_steps)
        step_s = c.ramp_s / steps
        levels = [max(1, round(n * (j + 1) / steps)) for j in range(steps)]
        per_client, how = self._ramp_rate(staged, n)
        self.phase = "ramp"
        self.clients = levels[0]
        farm, base = self._farm(levels[0], n, rate=None if per_client is None else per_client * levels[0])
        t_start = base
        t_levels: list[tuple[float, int]] = [(base, levels[0])]
        try:
            for j in range(1, steps):
                self._sleep_until(base + j * step_s, farm, "ramp", {"step": f"{j}/{steps}"})
                farm.set_connections(levels[j])
                if per_client is not None:
                    farm.set_rate(per_client * levels[j])
                self.clients = levels[j]
                t_levels.append((self.now(), levels[j]))
            self._sleep_until(base + c.ramp_s, farm, "ramp", {"step": f"{steps}/{steps}"})
        finally:
            self.clients = 0
            res = farm.stop()
        t_end = base + c.ramp_s
        self.windows.append({"phase": "ramp", "label": f"ramp 0-{n}", "t0": t_start, "t1": t_end})

        def clients_at(k: int) -> int:
            t = base + k + 1
            return max((cl for tt, cl in t_levels if tt <= t), default=levels[0])
        self._keep(res.timeline, base, "ramp", clients_at)
        samples = self.monitor.between(t_start, t_end + 0.5)
        return {"clients": n, "steps": steps, "step_s": step_s,
                "loop": "closed" if per_client is None else "open",
                "rate_per_client": per_client, "rate_top": None if per_client is None else round(per_client * n, 1),
                "rate_how": how, "bottleneck": A.first_bottleneck(samples, c.thresholds), "t0": t_start,
                "t1": t_end, "load_summary": res.summary}

    def _ramp_rate(self, staged: dict[str, Any] | None, n: int) -> tuple[float | None, str]:
        """Requests/s per client for the open-loop ramp (None: closed loop), and why."""
        r = self.cfg.ramp_rate
        if r == "closed":
            return None, "closed loop (--ramp-rate closed)"
        if r != "auto":
            return float(r) / n, f"{float(r):,.0f} req/s at {n:,} clients (--ramp-rate)"
        peak = staged and staged.get("peak_throughput")
        if peak:
            return AUTO_RAMP_SHARE * peak / n, (f"open loop rising to {AUTO_RAMP_SHARE:.0%} of the stages' peak "
                                                f"({peak:,.0f} req/s) at {n:,} clients")
        return AUTO_RAMP_PER_CLIENT, f"open loop, {AUTO_RAMP_PER_CLIENT:g} req/s per client (no stages were run)"

    def run_recovery(self, staged: dict[str, Any] | None) -> dict[str, Any]:
        c, th = self.cfg, self.cfg.thresholds
        bp = staged and staged.get("breaking_point")
        note = None
        if bp:
            ref = bp["clients"]
        else:
            ref = staged["stages"][-1]["clients"] if staged and staged["stages"] else c.stages[-1]
            note = f"no breaking point found: blasting at {c.blast_factor:g}x the largest stage ({ref})"
        blast = math.ceil(ref * c.blast_factor)
        if blast > self.max_clients:
            note = (note + "; " if note else "") + f"blast capped at {self.max_clients} ({self._limit_why()})"
            blast = self.max_clients
        calm = min(recovery_clients(c, bp["clients"] if bp else None), blast)
        self.phase = "blast"
        self.clients = blast
        farm, base = self._farm(blast, blast)
        try:
            self._wait_farm_second(base, c.blast_s, farm, "blast", {})
            farm.set_connections(calm)
            self.clients = calm
            self.phase = "recovery"
            self._wait_farm_second(base, c.blast_s + c.recovery_window_s, farm, "recovery", {})
            rows = self._rows(farm, base, 0, c.blast_s + c.recovery_window_s)
        finally:
            self.clients = 0
            res = farm.stop()
        drop = c.blast_s
        self._keep(res.timeline, base, "recovery",
                   lambda k: blast if k < drop else calm)
        self.windows.append({"phase": "blast", "label": f"blast {blast}", "t0": base, "t1": base + drop})
        self.windows.append({"phase": "recovery", "label": f"recovery {calm}", "t0": base + drop,
                             "t1": base + drop + c.recovery_window_s})
        after = [r for r in rows if r["t"] >= drop]
        blast_rows = [r for r in rows if r["t"] < drop]
        # recovery is timed on the farm's 100 ms rows (t relative to the drop)
        fine = [{**r, "t": round(r["t"] - drop, 1)} for r in res.fine_timeline
                if drop <= r["t"] < drop + c.recovery_window_s and r.get("duration", 0.1) >= 0.099]
        rec = A.recovery_time(fine, th, resolution=0.1)
        h = farm.histogram_between(0, drop)
        b = A.summarize_rows(blast_rows, blast)
        b["latency_ms"] = latency_block(h)
        return {"reference_clients": ref, "blast_clients": blast, "blast_s": drop,
                "recovery_clients": calm, "drop_t": base + drop, "blast": b,
                "after": [{"s": r["t"] - drop, "ok": r["ok"], "errors": sum(r["errors"].values()),
                           "p99_ms": _ms(r["p99_us"])} for r in after],
                # the 100 ms rows of the blast and the recovery (s: seconds from the drop)
                "fine": [{"s": round(r["t"] - drop, 1), "ok": r["ok"], "errors": r["error_count"],
                          "p99_ms": _ms(r["p99_us"])} for r in res.fine_timeline],
                "recovery": rec, "note": note, "load_summary": res.summary}
