"""The scale-out proof: the same staged ramp against 1, 2, 4 ... fastc1k replicas behind
a real load balancer, each replica a "container" of its own.

    python -m fastc1k.capacity.scaleout --replicas 1,2,4 --container cpus=0.25,memory=256M

Strategy. A replica is `python -m fastc1k.serve --workers 1` in cgroups of its own (CPU
quota, memory limit, freezer) and, where root permits, a network namespace of its own
joined to the host by a veth pair on a /30 of 10.231.B.0/24 (B: a block no
interface uses), with the host's TCP sysctls copied in. Without root the replicas listen
on 127.0.0.2, .3, ... of the host, unconfined, and the report says so. HAProxy (or nginx)
listens on 127.0.0.1 and is pinned to the last core; the replicas to the others.

For each replica count the capacity suite's own Runner drives the balancer's address
(stages, then blast and recovery), while a sampler here reads every 250 ms the
balancer's, the replicas' and the host's CPU: per stage the balancer's CPU per request,
and at the peak stage what bound the throughput (balancer core, replica quotas, host
CPUs, load generator). Then a fault phase: steady load on the largest fleet, one replica
killed (SIGKILL) or frozen (cgroup freezer), HAProxy's stats socket polled every 100 ms
to time when its health check marks it down, and the failed requests counted.

Every namespace, veth and cgroup made here is removed on exit, also on failure (atexit).
"""
from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import html
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import __version__
from .._cli import ArgumentParser, UsageError
from . import analysis as A
from ..host import cgroup, proc
from ..host.cgroup import Cgroup
from ..host.proc import host_info
from ..host.net import NetNs, Veth, free_block, ip_available
from .balancer import ALGORITHMS, BALANCERS, Backend, Balancer, BalancerError, BalancerSpec
from .container import ContainerError, ContainerSpec
from .stages import RunConfig, Runner, ServerProcess

__all__ = ["ReplicaSpec", "Replica", "Fleet", "ScaleoutConfig", "run_scaling", "run_fault", "analyse",
           "summary_text", "write_reports", "main", "privileges"]

PROG = "fastc1k.capacity.scaleout"
NET_PREFIX = "10.231"
REPLICA_PORT = 8080
DEFAULT_BREAK_P99_MS = 100.0   # see ScaleoutConfig.thresholds

_live: list["Fleet"] = []       # cleaned up at exit, whatever happened


def _cleanup_all() -> None:
    for f in list(_live):
        f.stop()


atexit.register(_cleanup_all)


def privileges() -> dict[str, Any]:
    """What this host lets the suite build, and for what is missing, why."""
    root = os.geteuid() == 0
    v2 = cgroup.version() == "v2"
    cgroups = root and os.access(cgroup.ROOT if v2 else f"{cgroup.ROOT}/cpu", os.W_OK)
    netns = root and ip_available()
    freezer = root and (v2 or os.path.isdir(f"{cgroup.ROOT}/freezer"))
    missing = []
    if not cgroups:
        missing.append("cgroups (CPU quota, memory limit) need root and a writable /sys/fs/cgroup: replicas "
                       "run unconfined, so the scaling figures are bound by the host's CPUs, not by the quota")
    if not netns:
        missing.append("own network namespaces need root and iproute2 (`ip`): replicas listen on 127.0.0.x "
                       "of the host and share its sysctls")
    if not freezer:
        missing.append("the freezer (for --fault freeze) needs root and the freezer controller")
    return {"root": root, "cgroup": ("v2" if v2 else "v1") if cgroups else None, "netns": netns,
            "freezer": freezer, "missing": missing}


# --------------------------------------------------------------------------- one replica

class ReplicaNet:
    """A network namespace joined to the host by a veth pair on one /30."""

    def __init__(self, name: str, host_if: str, ns_if: str, host_ip: str, ns_ip: str) -> None:
        self.name, self.ns_ip = name, ns_ip
        self.ns = NetNs(name)
        self.veth = Veth(host_if, ns_if, host_ip, ns_ip)

    def setup(self, sysctls: dict[str, str]) -> list[str]:
        """Returns notes (sysctls that did not apply)."""
        self.ns.add()
        self.veth.add(self.ns)
        return self.ns.set_sysctls(sysctls)

    def cleanup(self) -> None:
        self.veth.delete()
        self.ns.delete()


@dataclass
class ReplicaSpec:
    container: ContainerSpec = field(default_factory=ContainerSpec)
    engine: str | None = None
    server_args: list[str] = field(default_factory=list)
    cpus_pin: set[int] | None = None   # cores the replicas may run on
    use_netns: bool = True


class Replica:
    def __init__(self, index: int, run_id: str, spec: ReplicaSpec, net: ReplicaNet | None, host: str,
                 use_cgroup: bool = True) -> None:
        self.index = index
        self.name = f"r{index}"
        self.spec = spec
        self.net = net
        self.host = net.ns_ip if net else host
        c = spec.container
        self.cgroup_name = f"fastc1k-{run_id}-{self.name}" \
            if use_cgroup and (c.cpus is not None or c.memory is not None) else None
        self.cgroup: Cgroup | None = None
        self.server: ServerProcess | None = None
        self.killed_at: float | None = None

    def start(self) -> "Replica":
        if self.cgroup_name:
            c = self.spec.container
            self.cgroup = Cgroup.create(self.cgroup_name, cpus=c.cpus, memory=c.memory, freezer=True)
        join = self.cgroup.preexec() if self.cgroup else None
        nofile = self.spec.container.nofile
        if nofile and os.geteuid() != 0:   # only root may raise the hard limit
            nofile = min(nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        setns = self.net.ns.setns_preexec() if self.net else None
        pin = self.spec.cpus_pin

        def enter() -> None:
            if setns:
                setns()
            if join:
                join()
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if pin:
                os.sched_setaffinity(0, pin)
        port = str(REPLICA_PORT) if self.net else "0"
        self.server = ServerProcess(self.spec.engine, 1, ["--host", self.host, "--port", port,
                                                          *self.spec.server_args], preexec=enter).start()
        return self

    @property
    def backend(self) -> Backend:
        assert self.server and self.server.url
        return Backend(self.name, self.host, int(self.server.url.rsplit(":", 1)[1]))

    def pids(self) -> list[int]:
        if not self.server or not self.server.alive():
            return []
        return proc.tree(self.server.pid)

    def kill(self) -> None:
        """The whole replica at once (master and worker): a crashed container."""
        assert self.server and self.server.proc
        self.killed_at = time.monotonic()
        os.killpg(self.server.pid, signal.SIGKILL)

    def freeze(self) -> None:
        """A hung container: its processes stop running, its sockets stay open."""
        assert self.cgroup
        self.killed_at = time.monotonic()
        self.cgroup.freeze(True)

    def stop(self) -> None:
        if self.cgroup and self.cgroup.can_freeze:
            try:
                self.cgroup.freeze(False)
            except OSError:
                pass
        if self.server:
            if self.server.alive():
                try:
                    os.killpg(self.server.pid, signal.SIGKILL)   # the run is over: no grace needed
                except ProcessLookupError:
                    pass
            if self.server.proc:
                try:
                    self.server.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if self.cgroup:
            self.cgroup.remove(tries=100)


class Fleet:
    """N replicas: their namespaces, veths, cgroups and servers; stop() undoes all of it."""

    def __init__(self, n: int, spec: ReplicaSpec, priv: dict[str, Any] | None = None) -> None:
        self.n = n
        self.spec = spec
        self.priv = priv or privileges()
        self.run_id = f"{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.replicas: list[Replica] = []
        self.nets: list[ReplicaNet] = []
        self.notes: list[str] = []

    def start(self) -> "Fleet":
        _live.append(self)
        try:
            use_ns = self.spec.use_netns and self.priv["netns"]
            if self.n > 63:
                raise ValueError("at most 63 replicas")
            block = free_block(NET_PREFIX, os.getpid() // 7) if use_ns else 0
            tag = self.run_id.replace("-", "")[-6:]
            for i in range(self.n):
                net = None
                if use_ns:
                    net = ReplicaNet(f"fastc1k-{self.run_id}-r{i}", f"fk{tag}h{i}", f"fk{tag}n{i}",
                                     f"{NET_PREFIX}.{block}.{4 * i + 1}", f"{NET_PREFIX}.{block}.{4 * i + 2}")
                    self.nets.append(net)
                    self.notes += net.setup(self.spec.container.sysctls)
                r = Replica(i, self.run_id, self.spec, net, f"127.0.0.{2 + i}", bool(self.priv.get("cgroup")))
                self.replicas.append(r)
                r.start()
        except BaseException:
            self.stop()
            raise
        return self

    def backends(self) -> list[Backend]:
        return [r.backend for r in self.replicas]

    def pids(self) -> list[int]:
        return [p for r in self.replicas for p in r.pids()]

    def throttled(self) -> int:
        return sum(r.cgroup.throttled() or 0 for r in self.replicas if r.cgroup)

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        for net in self.nets:
            net.cleanup()
        self.replicas.clear()
        self.nets.clear()
        if self in _live:
            _live.remove(self)


# --------------------------------------------------------------------------- sampling

class Sampler:
    """Cumulative CPU seconds of the balancer, the replicas, the host and this process
    (the coordinator: load farm merging, monitor) every `interval`."""

    def __init__(self, lb: Balancer, fleet: Fleet, interval: float = 0.25) -> None:
        self.lb, self.fleet, self.interval = lb, fleet, interval
        self.rows: list[tuple[float, float, float, float, int, float, float]] = []
        self._stop = threading.Event()
        self._pids: list[int] = []
        self._t = threading.Thread(target=self._loop, name="scaleout-sampler", daemon=True)

    def start(self) -> "Sampler":
        self._pids = self.fleet.pids()
        self._t.start()
        return self

    def sample(self) -> None:
        busy, irq = proc.host_busy_seconds()
        self.rows.append((time.monotonic(), self.lb.cpu_seconds(), proc.cpu_seconds(self._pids),
                          busy, self.fleet.throttled(), time.process_time(), irq))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)

    def window(self, t0: float, t1: float) -> dict[str, float] | None:
        """Cores used in [t0, t1] (monotonic) by balancer, replicas, host; throttled periods."""
        inside = [r for r in self.rows if t0 - 0.13 <= r[0] <= t1 + 0.13]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        dt = b[0] - a[0]
        if dt <= 0:
            return None
        return {"seconds": dt, "balancer_cpu_s": b[1] - a[1], "balancer_cores": (b[1] - a[1]) / dt,
                "replicas_cores": (b[2] - a[2]) / dt, "host_busy_cores": (b[3] - a[3]) / dt,
                "throttled_periods": b[4] - a[4], "coordinator_cores": (b[5] - a[5]) / dt,
                "softirq_cores": (b[6] - a[6]) / dt}


# --------------------------------------------------------------------------- the run

@dataclass
class ScaleoutConfig:
    replicas: tuple[int, ...] = (1, 2, 4)
    container: ContainerSpec = field(default_factory=lambda: ContainerSpec(cpus=0.25, memory=256 << 20))
    engine: str | None = None
    balancer: BalancerSpec = field(default_factory=BalancerSpec)
    # Closed-loop clients on a saturated fleet: p99 ~ clients / capacity, so a p99 bound
    # turns into a breaking point proportional to the fleet's capacity (the plan's 1 s
    # would need ~40,000 clients per 0.25-CPU replica, past this host's ports and fds).
    run: RunConfig = field(default_factory=lambda: RunConfig(
        phases=("stages", "recovery"), stages=(100, 250, 500, 750, 1000), stage_s=3, final_stage_s=3,
        blast_s=5, recovery_window_s=8, max_clients=8000,
        thresholds=A.Thresholds(break_p99_ms=DEFAULT_BREAK_P99_MS)))
    fault: str = "kill"                   # kill | freeze | none
    fault_replicas: int | None = None     # default: the largest count
    fault_clients: int | None = None      # default: the last good stage of 1 replica
    fault_before_s: int = 4
    fault_after_s: int = 10
    use_netns: bool = True
    pin: bool = True
    server_args: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        d = {k: v for k, v in self.__dict__.items() if k not in ("container", "balancer", "run")}
        d["container"] = self.container.describe()
        d["balancer"] = asdict(self.balancer)
        d["run"] = self.run.as_dict()
        return d


def _pinning(cfg: ScaleoutConfig) -> tuple[int | None, set[int] | None]:
    """The balancer on the last core, the replicas on the others (when there are two+)."""
    cores = sorted(os.sched_getaffinity(0))
    if not cfg.pin or len(cores) < 2:
        return None, None
    return cores[-1], set(cores[:-1])


class Deployment:
    """A fleet and its balancer, up and healthy, as a context manager."""

    def __init__(self, n: int, cfg: ScaleoutConfig, priv: dict[str, Any]) -> None:
        lb_cpu, rep_cpus = _pinning(cfg)
        self.spec = ReplicaSpec(cfg.container, cfg.engine, cfg.server_args, rep_cpus, cfg.use_netns)
        self.fleet = Fleet(n, self.spec, priv)
        bs = BalancerSpec(**{**cfg.balancer.__dict__, "cpu": lb_cpu if cfg.balancer.cpu is None else cfg.balancer.cpu})
        self.bspec = bs
        self.lb: Balancer | None = None

    def __enter__(self) -> "Deployment":
        try:
            self.fleet.start()
            self.lb = Balancer(self.fleet.backends(), self.bspec).start()
            if not self.lb.wait_healthy(15):
                raise BalancerError(f"the balancer did not see every replica healthy: {self.lb.servers()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.lb:
            self.lb.stop()
        self.fleet.stop()


def _stage_costs(stages: list[dict[str, Any]], timeline: list[dict[str, Any]], sampler: Sampler, t0: float) -> None:
    """Adds to each stage: the CPU of balancer, replicas, host and load generator, and
    the balancer's CPU per request."""
    for st in stages:
        a, b = st["start_s"], st["start_s"] + st["duration_s"]
        w = sampler.window(t0 + a, t0 + b)
        rows = [r for r in timeline if a - 0.01 <= r["t"] < b - 0.01 and r.get("phase") == "stages"]
        gen = [r.get("client_cpu") for r in rows if r.get("client_cpu") is not None]
        reqs = st["ok"] + st["error_count"]
        cost = {"loadgen_cores": round(sum(gen) / len(gen), 3) if gen else None}
        if w:
            per_s = reqs / st["duration_s"] if st["duration_s"] else 0
            cost.update({k: round(v, 3) for k, v in w.items() if k != "seconds"})
            cost["balancer_us_per_request"] = round(w["balancer_cores"] / per_s * 1e6, 2) if per_s else None
            cost["replicas_us_per_request"] = round(w["replicas_cores"] / per_s * 1e6, 2) if per_s else None
            # the kernel's packet work (loopback, veth), mostly inside the figures above
            cost["softirq_us_per_request"] = round(w["softirq_cores"] / per_s * 1e6, 2) if per_s else None
        st["cost"] = cost


def bound_of(stage: dict[str, Any], n: int, quota: float | None, lb_cores: float, ncpu: int,
             loadgen_procs: int) -> dict[str, Any]:
    """What bounded the throughput of this (peak) stage: the resource closest to (or
    past) its ceiling, with every utilisation as evidence."""
    c = stage.get("cost") or {}
    util = {}
    if c.get("balancer_cores") is not None:
        util["balancer"] = (c["balancer_cores"] / lb_cores, f"balancer {c['balancer_cores']:.2f} of {lb_cores:g} core")
    if c.get("replicas_cores") is not None:
        cap = n * quota if quota else n * 1.0
        util["replicas"] = (c["replicas_cores"] / cap, f"replicas {c['replicas_cores']:.2f} of {cap:g} cores "
                            + ("(quota)" if quota else "(1 worker each, no quota)"))
    others = None
    if c.get("host_busy_cores") is not None:
        ours = sum(c.get(k) or 0 for k in ("balancer_cores", "replicas_cores", "loadgen_cores", "coordinator_cores"))
        others = max(0.0, c["host_busy_cores"] - ours)
        irq = c.get("softirq_cores") or 0
        util["host"] = (c["host_busy_cores"] / ncpu,
                        f"host {c['host_busy_cores']:.2f} of {ncpu} CPUs busy, {others:.2f} by other processes; "
                        f"softirqs {irq:.2f} (packets, veth: charged to the process they interrupted)")
    if c.get("loadgen_cores") is not None:
        util["loadgen"] = (c["loadgen_cores"] / max(1, loadgen_procs),
                           f"load generator {c['loadgen_cores']:.2f} of {loadgen_procs} core(s)")
    if not util:
        return {"resource": None, "evidence": "no CPU samples"}
    # A part at its own ceiling (a replica at its quota, the balancer or the load generator
    # at a full core) is the bound even when the host is full too: a full host is then the
    # consequence. Only when no part is at its ceiling is the host's saturation the cause.
    own = [k for k in ("replicas", "balancer", "loadgen") if k in util and util[k][0] >= 0.9]
    name = max(own, key=lambda k: util[k][0]) if own else max(util, key=lambda k: util[k][0])
    ratio = util[name][0]
    what = {"balancer": "the balancer's single core", "replicas": "the replicas' CPU quota",
            "host": "the host's CPUs (balancer, replicas and load generator share them)",
            "loadgen": "the load generator"}[name]
    if name == "host" and others is not None and others >= 0.25 * ncpu:
        what = f"the host's CPUs, {others:.2f} of {ncpu} taken by other processes (a busy machine)"
    return {"resource": name if ratio >= 0.85 else None,
            "label": what if ratio >= 0.85 else "nothing saturated (latency bound: queueing at the p99 threshold)",
            "utilisation": {k: round(v[0], 3) for k, v in util.items()},
            "evidence": "; ".join(v[1] for v in util.values())}


def run_scaling(cfg: ScaleoutConfig, priv: dict[str, Any], progress: Callable[[dict[str, Any]], None]
                ) -> list[dict[str, Any]]:
    results = []
    ncpu = len(os.sched_getaffinity(0))
    for n in cfg.replicas:
        with Deployment(n, cfg, priv) as dep:
            lb = dep.lb
            assert lb is not None
            sampler = Sampler(lb, dep.fleet).start()
            stats0 = lb.servers()
            cpu0 = lb.cpu_seconds()
            runner = Runner(lb.url, cfg.run, server=None, progress=lambda st, n=n: progress({**st, "replicas": n}),
                            server_pid=lb.pid, metrics=False)
            out = runner.run()
            cpu1 = lb.cpu_seconds()
            stats1 = lb.servers()
            sampler.sample()
            sampler.stop()
            lb_alive = lb.alive()
            lb_log = lb.output()[-600:]
            backends = [b.__dict__ for b in dep.fleet.backends()]
        st = out.get("stages") or {"stages": []}
        # HAProxy counts requests in http mode, connections in tcp mode (and nginx nothing):
        # then the load generator's count of the requests it sent through the balancer.
        tcp = cfg.balancer.mode == "tcp"
        if stats1 and not tcp:
            passed = sum(v["requests"] for v in stats1.values()) - sum(v["requests"] for v in stats0.values())
        else:
            passed = sum(r["ok"] + sum((r.get("errors") or {}).values()) for r in out.get("timeline") or [])
        quota = cfg.container.cpus if priv.get("cgroup") else None
        _stage_costs(st["stages"], out.get("timeline", []), sampler, runner.t0)
        ss = st["stages"]
        peak = max(ss, key=lambda s: s["throughput"]) if ss else None
        lb_cores = 1.0   # HAProxy nbthread 1, nginx worker_processes 1
        procs = cfg.run.processes or math.ceil(max([s["clients"] for s in ss] or [1]) / 15000)
        results.append({
            "replicas": n,
            "backends": backends,
            "stages": st,
            "recovery": out.get("recovery"),
            "timeline": out.get("timeline"),
            "windows": out.get("windows"),
            "notes": out.get("notes", []) + ([] if lb_alive else [f"the balancer died: {lb_log}"]),
            "aborted": out.get("aborted"),
            "elapsed_s": out.get("elapsed_s"),
            "balancer": {"cpu_s": round(cpu1 - cpu0, 3), "requests": passed,
                         "us_per_request": round((cpu1 - cpu0) / passed * 1e6, 2) if passed else None,
                         "per_server_requests": {k: v["requests"] - stats0.get(k, {}).get("requests", 0)
                                                 for k, v in stats1.items()},
                         "per_server_unit": "connections" if tcp else "requests"},
            "peak_stage": peak and {"clients": peak["clients"], "throughput": peak["throughput"],
                                    "cost": peak.get("cost")},
            "bound": bound_of(peak, n, quota, lb_cores, ncpu, procs) if peak else None,
        })
    return results


class StatsPoller:
    """HAProxy's view of each server every 100 ms: status and cumulative requests."""

    def __init__(self, lb: Balancer, interval: float = 0.1) -> None:
        self.lb, self.interval = lb, interval
        self.rows: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="scaleout-stats", daemon=True)

    def start(self) -> "StatsPoller":
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            sv = self.lb.servers()
            if sv:
                self.rows.append((time.monotonic(), sv))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)


def run_fault(cfg: ScaleoutConfig, priv: dict[str, Any], n: int, clients: int,
              progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Steady load on n replicas; replica r0 killed (or frozen) after fault_before_s."""
    from .stages import load_api
    LoadSpec, LoadFarm = load_api()
    if cfg.fault == "freeze" and not priv.get("freezer"):
        raise RuntimeError("--fault freeze needs the cgroup freezer (root): " + "; ".join(priv["missing"]))
    with Deployment(n, cfg, priv) as dep:
        lb = dep.lb
        assert lb is not None
        victim = dep.fleet.replicas[0]
        poll = StatsPoller(lb).start()
        spec = LoadSpec(url=lb.url + cfg.run.path, connections=clients, connect_timeout=cfg.run.connect_timeout,
                        request_timeout=cfg.run.request_timeout)
        farm = LoadFarm(spec).start()
        base = farm.started_ns / 1e9
        total = cfg.fault_before_s + cfg.fault_after_s
        try:
            while time.monotonic() < base + cfg.fault_before_s:
                time.sleep(0.02)
            (victim.freeze if cfg.fault == "freeze" else victim.kill)()
            t_fault = victim.killed_at - base
            last = 0.0
            while time.monotonic() < base + total:
                if farm.errors:
                    raise RuntimeError("a load worker failed:\n" + farm.errors[0])
                if time.monotonic() - last >= 1:
                    last = time.monotonic()
                    rows = farm.timeline()
                    r = rows[-1] if rows else {}
                    err = sum((r.get("errors") or {}).values())
                    progress({"phase": f"fault ({cfg.fault} r0)", "clients": clients, "replicas": n,
                              "rps": r.get("ok", 0) + err, "p99_ms": (r.get("p99_us") or 0) / 1000,
                              "errors": err, "error_rate": err / max(1, r.get("ok", 0) + err),
                              "elapsed": time.monotonic() - base, "remaining": base + total - time.monotonic()})
                time.sleep(0.05)
        finally:
            res = farm.stop()
            poll.stop()
    rows = [r for r in res.timeline if r["t"] < total and r.get("duration", 1) > 0.999]
    return analyse_fault(rows, [(t - base, sv) for t, sv in poll.rows], t_fault, victim.name, n, clients,
                         cfg, res.histogram)


def analyse_fault(rows: list[dict[str, Any]], polls: list[tuple[float, dict[str, dict[str, Any]]]],
                  t_fault: float, victim: str, n: int, clients: int, cfg: ScaleoutConfig, hist: Any = None
                  ) -> dict[str, Any]:
    """The fault's figures from the per-second rows (t: farm seconds) and the balancer's
    polled view (t: seconds since the farm started)."""
    k_fault = int(t_fault)

    def errs(r: dict[str, Any]) -> int:
        return sum((r.get("errors") or {}).values())
    stage_req = sum(r["ok"] + errs(r) for r in rows)
    stage_err = sum(errs(r) for r in rows)
    after = [r for r in rows if r["t"] >= k_fault]
    before = [r for r in rows if r["t"] < k_fault]
    failed_after = sum(errs(r) for r in after)
    by_class: dict[str, int] = {}
    for r in after:
        for k, v in (r.get("errors") or {}).items():
            by_class[k] = by_class.get(k, 0) + v
    first_fail = marked_down = None
    for t, sv in polls:
        if t < t_fault:
            continue
        st = sv.get(victim, {}).get("status", "")
        if first_fail is None and st != "UP":
            first_fail = t
        if marked_down is None and (st.startswith("DOWN") or st == "MAINT"):
            marked_down = t
            break
    # When did the remaining replicas take the victim's share: their request rate over
    # the balancer's 100 ms view, before the fault and after it was marked down.
    others_down = sorted({name for t, sv in polls if t > t_fault for name, v in sv.items()
                          if name != victim and v.get("status", "").startswith("DOWN")})

    def rate(name: str, t0: float, t1: float) -> float | None:
        pts = [(t, sv[name]["requests"]) for t, sv in polls if t0 <= t <= t1 and name in sv]
        if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
            return None
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    names = sorted({k for _, sv in polls for k in sv})
    # Requests the balancer still sent to the victim after the fault (retries included):
    # how soon it stopped choosing it, whatever the health check said.
    vic = [sv[victim]["requests"] for t, sv in polls if t >= t_fault and victim in sv]
    sent_to_victim = vic[-1] - vic[0] if vic else None
    absorb = {}
    settle = (marked_down or t_fault) + 0.5
    for name in names:
        absorb[name] = {"before": rate(name, max(0.0, t_fault - 3), t_fault),
                        "after": rate(name, settle, settle + 4)}
    err_secs = [r["t"] for r in after if errs(r)]
    # An outage costs time as well as errors: a hung replica can hold every client's
    # request without failing any (until timeout server): seconds under a quarter of the
    # rate before (a stall is near zero; a busy host's dips stay above a quarter).
    tput_before = sum(r["ok"] for r in before[1:]) / max(1, len(before[1:])) if len(before) > 1 else None
    # Settled: past the health check and past the requests the victim held (released
    # after timeout server), so what remains is how the others carry the load.
    settled_from = max((marked_down or t_fault) + 1, t_fault + cfg.balancer.timeout_server_ms / 1000 + 1)
    late = [r for r in after if r["t"] >= settled_from] or after[-2:]
    tput_after = sum(r["ok"] for r in late) / len(late) if late else None
    p99_before = max((r.get("p99_us") or 0) for r in before[1:]) / 1000 if len(before) > 1 else None
    p99_after = max((r.get("p99_us") or 0) for r in late) / 1000 if late else None
    stall_s = sum(1 for r in after if tput_before and r["ok"] < 0.25 * tput_before)
    rec = A.recovery_time(after, cfg.run.thresholds)
    th = cfg.run.thresholds
    # A cascade: the survivors fail too (marked down, or errors once the victim is out);
    # a p99 over the threshold while they carry the load is degradation, not a cascade.
    cascade = bool(others_down) or any(errs(r) for r in late)
    degraded = p99_after is not None and th.break_p99_ms is not None and p99_after > th.break_p99_ms
    return {
        "mode": cfg.fault, "replicas": n, "clients": clients, "victim": victim, "t_fault": round(t_fault, 3),
        "stage_requests": stage_req, "stage_failed": stage_err,
        "failed_after_fault": failed_after, "failed_by_class": by_class,
        "failed_share_of_stage": stage_err / stage_req if stage_req else None,
        "check_failed_s": None if first_fail is None else round(first_fail - t_fault, 3),
        "marked_down_s": None if marked_down is None else round(marked_down - t_fault, 3),
        "last_error_s": None if not err_secs else max(err_secs) + 1 - t_fault,
        "health_check": {"inter_ms": cfg.balancer.check_inter_ms, "fall": cfg.balancer.fall,
                         "rise": cfg.balancer.rise},
        "throughput_before": tput_before, "throughput_after": tput_after, "stall_s": stall_s,
        "p99_before_ms": p99_before, "p99_after_ms": p99_after,
        "per_server_rate": absorb, "sent_to_victim_after_fault": sent_to_victim,
        "others_marked_down": others_down, "cascade": cascade, "degraded": degraded,
        "recovery": rec,
        "rows": [{"t": r["t"], "ok": r["ok"], "errors": errs(r), "p99_ms": (r.get("p99_us") or 0) / 1000}
                 for r in rows],
        "polls": [{"t": round(t, 3), **{k: [v["status"], v["requests"]] for k, v in sv.items()}}
                  for t, sv in polls],
        "measurable": bool(polls) or cfg.balancer.kind == "haproxy",
    }


# --------------------------------------------------------------------------- analysis

def analyse(results: list[dict[str, Any]], cfg: ScaleoutConfig) -> dict[str, Any]:
    """Breaking points, throughput, efficiency, p99 at the 1-replica breaking load, the
    USL fit across N, and whether 4 replicas hold >= 3x one (and if not, what bounds it)."""
    by_n = {r["replicas"]: r for r in results}
    base = by_n.get(min(by_n)) if by_n else None
    rows = []
    ref_clients = None
    if base:
        bp = base["stages"].get("breaking_point")
        ss = base["stages"]["stages"]
        ref_clients = bp["clients"] if bp else (ss[-1]["clients"] if ss else None)
    x1 = base["peak_stage"]["throughput"] if base and base.get("peak_stage") else None
    n1 = min(by_n) if by_n else 1
    for n, r in sorted(by_n.items()):
        st = r["stages"]
        bp = st.get("breaking_point")
        ss = st["stages"]
        at_ref = next((s for s in ss if s["clients"] == ref_clients), None)
        tput = r["peak_stage"]["throughput"] if r.get("peak_stage") else None
        rec = (r.get("recovery") or {}).get("recovery") or {}
        rows.append({
            "replicas": n,
            "breaking_point": bp["clients"] if bp else None,
            "breaking_reasons": bp["reasons"] if bp else None,
            "last_good_clients": bp["last_good_clients"] if bp else (ss[-1]["clients"] if ss else None),
            "unbroken_up_to": None if bp else (ss[-1]["clients"] if ss else None),
            "max_throughput": tput,
            "p99_at_reference_ms": (at_ref or {}).get("latency_ms", {}).get("p99") if at_ref else None,
            "recovery_s": rec.get("seconds"), "recovery_label": rec.get("label"),
            "efficiency": (tput / ((n / n1) * x1)) if tput and x1 else None,
            "balancer_us_per_request": r["balancer"]["us_per_request"],
            "bound": r.get("bound"),
        })
    usl = None
    pts = [(row["replicas"], row["max_throughput"]) for row in rows if row["max_throughput"]]
    if len(pts) >= 3:
        import warnings
        with warnings.catch_warnings():   # 3 points, 3 parameters: no covariance to estimate
            warnings.simplefilter("ignore")
            usl = A.usl_fit([p[0] for p in pts], [p[1] for p in pts], min_points=3)
    verdict = None
    if rows and len(rows) > 1:
        b1 = rows[0]["breaking_point"] or rows[0]["unbroken_up_to"]
        top = rows[-1]
        bn = top["breaking_point"] or top["unbroken_up_to"]
        if not rows[0]["breaking_point"]:
            verdict = {"factor": None, "want": 0.75 * top["replicas"] / rows[0]["replicas"], "held": None,
                       "why_not": f"{rows[0]['replicas']} replica(s) did not break up to {b1} clients: no factor "
                                  f"(raise --max-clients or lower --break-p99-ms)", "unbroken_note": None}
        elif b1 and bn:
            factor = bn / b1
            want = 0.75 * top["replicas"] / rows[0]["replicas"]
            held = factor >= want
            why = None
            if not held:
                b = top.get("bound") or {}
                why = (f"bounded by {b.get('label') or 'unknown'} at the peak stage ({b.get('evidence', '')})")
            # What one balancer core can pass at the cost measured with one replica:
            # when N x X(1) is above it, no replica count can reach the ideal.
            cost = ((base.get("peak_stage") or {}).get("cost") or {}).get("balancer_us_per_request") \
                or base["balancer"]["us_per_request"]
            ceiling = 1e6 / cost if cost else None
            ideal = x1 * top["replicas"] / n1 if x1 else None
            if ceiling and ideal and ideal > ceiling:
                why = (why + "; " if why else "") + (
                    f"and one balancer core passes at most ~{ceiling:.0f} req/s at the {cost:.1f} us/request it "
                    f"cost, less than {top['replicas']} x {x1:.0f} = {ideal:.0f} req/s: beyond that, more "
                    f"balancer cores (nbthread) or more balancers")
            verdict = {"factor": round(factor, 3), "want": want, "held": held, "why_not": why,
                       "balancer_ceiling_rps": ceiling, "ideal_top_rps": ideal,
                       "unbroken_note": (None if top["breaking_point"] else
                                         f"{top['replicas']} replicas did not break up to {bn} clients "
                                         f"(the client limit): the factor is a lower bound")}
    return {"reference_clients": ref_clients, "rows": rows, "usl": usl, "verdict": verdict}


# --------------------------------------------------------------------------- report

def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary_text(rep: dict[str, Any]) -> str:
    a = rep["analysis"]
    c = rep["config"]
    out = [f"fastc1k scale-out report: {', '.join(map(str, c['replicas']))} replica(s) of "
           f"{rep['replica_desc']} behind {c['balancer']['kind']} ({c['balancer'].get('mode', 'http')} mode, "
           f"{c['balancer']['algorithm']})"]
    for n in rep.get("notes", []):
        out.append(f"note: {n}")
    out.append("")
    out.append(f"{'replicas':>8} {'break at':>9} {'max req/s':>10} {'efficiency':>10} "
               f"{'p99@' + str(a['reference_clients']) + ' ms':>12} {'recovery':>10} {'LB us/req':>9}  bound at peak")
    for r in a["rows"]:
        brk = str(r["breaking_point"]) if r["breaking_point"] else f">{r['unbroken_up_to']}"
        b = r.get("bound") or {}
        out.append(f"{r['replicas']:>8} {brk:>9} {_f(r['max_throughput'], '{:.0f}'):>10} "
                   f"{_f(r['efficiency'], '{:.2f}'):>10} {_f(r['p99_at_reference_ms']):>12} "
                   f"{(r['recovery_label'] or '-'):>10} {_f(r['balancer_us_per_request'], '{:.1f}'):>9}  "
                   f"{b.get('label') or '-'}")
        if b.get("evidence"):
            out.append(f"{'':>9}({b['evidence']})")
    u = a.get("usl")
    if u:
        top = max(r["replicas"] for r in a["rows"])
        # kappa ~ 0: no retrograde region within any fleet this fit could speak for
        peak = u.get("peak_clients")
        if u["sigma"] >= 0.999 or u.get("saturated_from_first_stage") or (peak is not None and peak < 1):
            tail = ", no gain from more replicas: saturated from the first count (the bound is shared)"
        elif peak and peak < 100 * top:
            tail = f", predicted peak {u['peak_throughput']:.0f} req/s at {peak:.1f} replicas"
        elif u["sigma"] > 0 and u["kappa"] < 1e-9:
            tail = f", no peak predicted (contention only: at most {u['lambda'] / u['sigma']:.0f} req/s)"
        else:
            tail = ""
        out.append(f"USL across replicas: sigma={u['sigma']:.3g} kappa={u['kappa']:.3g} lambda={u['lambda']:.0f} "
                   f"req/s per replica" + tail
                   + (" (3 points: indicative)" if u["points"] == 3 else ""))
    v = a.get("verdict")
    if v and v["factor"] is None:
        out.append(f"breaking point factor: none: {v['why_not']}")
    elif v:
        out.append(f"breaking point x{v['factor']:.2f} from {a['rows'][0]['replicas']} to {a['rows'][-1]['replicas']} "
                   f"replicas (goal >= x{v['want']:g}): " + ("HELD" if v["held"] else f"NOT HELD: {v['why_not']}"))
        if v.get("unbroken_note"):
            out.append(f"  {v['unbroken_note']}")
    f = rep.get("fault")
    if f:
        out.append("")
        if f.get("error"):
            out.append(f"fault injection: not run: {f['error']}")
        else:
            share = f["failed_share_of_stage"]
            out.append(f"fault: {f['mode']} {f['victim']} of {f['replicas']} replicas at {f['clients']} clients, "
                       f"t={f['t_fault']:.1f} s: {f['failed_after_fault']} failed requests "
                       f"({', '.join(f'{k} {v}' for k, v in f['failed_by_class'].items()) or 'none'}) = "
                       f"{_f(share * 100 if share is not None else None, '{:.3f}')}% of the stage's "
                       f"{f['stage_requests']} (goal < 1%)")
            if not f.get("polls"):
                out.append(f"  {c['balancer']['kind']} has no active health check or stats socket: routing around "
                           f"the victim is passive (proxy_next_upstream), its timing is not measured")
            out.append(f"  health check (inter {f['health_check']['inter_ms']} ms, fall {f['health_check']['fall']}):"
                       f" first failed check after {_f(f['check_failed_s'], '{:.2f}')} s, marked DOWN after "
                       f"{_f(f['marked_down_s'], '{:.2f}')} s; last second with errors ends "
                       f"{_f(f['last_error_s'], '{:.1f}')} s after the fault")
            out.append(f"  throughput {_f(f['throughput_before'], '{:.0f}')} -> {_f(f['throughput_after'], '{:.0f}')}"
                       f" req/s ({f.get('stall_s', 0)} s under a quarter of it), p99 {_f(f['p99_before_ms'])} -> "
                       f"{_f(f['p99_after_ms'])} ms; "
                       + _absorbed(f)
                       + f"; recovery {f['recovery']['label']}")
    out.append("")
    out.append(f"elapsed {rep['elapsed_s']:.0f} s")
    return "\n".join(out)


def _absorbed(f: dict[str, Any]) -> str:
    if f["cascade"]:
        return "CASCADE: " + (", ".join(f["others_marked_down"]) + " marked down too" if f["others_marked_down"]
                              else "requests still failing after the victim was out")
    if f.get("stall_s"):
        return f"no cascade, but the service stalled {f['stall_s']} s before the others took the load"
    if f.get("degraded"):
        return (f"no cascade, degraded: the others carried the load with p99 {f['p99_after_ms']:.0f} ms, over the "
                f"break threshold")
    return "no cascade: the others absorbed the load"


def chart_scaling(rep: dict[str, Any]) -> bytes | None:
    from .report import _plt, _png
    rows = [r for r in rep["analysis"]["rows"] if r["max_throughput"]]
    if not rows:
        return None
    plt = _plt()
    n = [r["replicas"] for r in rows]
    n1 = n[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [r["max_throughput"] for r in rows]
    axes[0].plot(n, x, "o-", label="measured max throughput")
    axes[0].plot(n, [x[0] * k / n1 for k in n], "k--", lw=1, label="ideal (N x one replica)")
    u = rep["analysis"].get("usl")
    if u:
        xs = [n[0] + (n[-1] - n[0]) * i / 50 for i in range(51)]
        axes[0].plot(xs, [A.usl_throughput(k, u["lambda"], u["sigma"], u["kappa"]) for k in xs], ":",
                     label=f"USL (sigma={u['sigma']:.2g}, kappa={u['kappa']:.2g})")
    axes[0].set_ylabel("req/s")
    bp = [r["breaking_point"] or r["unbroken_up_to"] for r in rows]
    axes[1].plot(n, bp, "o-", color="C3", label="breaking point (clients)")
    for k, b, r in zip(n, bp, rows):
        if not r["breaking_point"]:
            axes[1].annotate("not broken", (k, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[1].plot(n, [bp[0] * k / n1 for k in n], "k--", lw=1, label="ideal")
    axes[1].set_ylabel("clients")
    for ax in axes:
        ax.set_xlabel("replicas")
        ax.set_xticks(n)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Throughput against replicas")
    axes[1].set_title("Breaking point against replicas")
    return _png(fig)


def chart_fault(rep: dict[str, Any]) -> bytes | None:
    from .report import _plt, _png
    f = rep.get("fault")
    if not f or not f.get("rows"):
        return None
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    t = [r["t"] + 0.5 for r in f["rows"]]
    axes[0].plot(t, [r["ok"] for r in f["rows"]], "o-", label="ok req/s (all)")
    polls = f.get("polls") or []
    names = sorted({k for p in polls for k in p if k != "t"})
    for name in names:
        pts = [(p["t"], p[name][1]) for p in polls if name in p]
        # per-server req/s over 0.5 s windows of the balancer's counters
        xs, ys = [], []
        for i in range(5, len(pts), 5):
            (ta, a), (tb, b) = pts[i - 5], pts[i]
            if tb > ta:
                xs.append((ta + tb) / 2)
                ys.append((b - a) / (tb - ta))
        axes[0].plot(xs, ys, lw=0.8, label=f"{name} (sent by the balancer, retries included)")
    axes[0].set_ylabel("req/s")
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].bar(t, [r["errors"] for r in f["rows"]], width=0.8, color="#c44e52", label="failed requests")
    axes[1].set_ylabel("failed / s")
    axes[2].plot(t, [r["p99_ms"] for r in f["rows"]], "o-", label="p99")
    axes[2].set_ylim(bottom=0)
    axes[2].set_ylabel("p99, ms")
    axes[2].set_xlabel("seconds since the load started")
    for ax in axes:
        ax.axvline(f["t_fault"], color="k", lw=1.2)
        if f.get("check_failed_s") is not None:
            ax.axvline(f["t_fault"] + f["check_failed_s"], color="#dd8452", lw=1, ls="--")
        if f.get("marked_down_s") is not None:
            ax.axvline(f["t_fault"] + f["marked_down_s"], color="#55a868", lw=1.2, ls="--")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Fault: {f['mode']} {f['victim']} at t={f['t_fault']:.1f} s (black); first failed check "
                      f"(orange), marked DOWN (green)")
    return _png(fig)


def write_reports(rep: dict[str, Any], out_dir: str, charts: bool = True, prefix: str = "scaleout-report"
                  ) -> dict[str, str]:
    from .report import chart_stages, html_opening, stage_table, write_json
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, prefix + ".json"), "html": os.path.join(out_dir, prefix + ".html")}
    write_json(rep, paths["json"])
    drawn: dict[str, bytes] = {}
    why = None
    if charts:
        try:
            from .report import _plt
            _plt()
            for name, fn in (("scaling", chart_scaling), ("fault", chart_fault)):
                png = fn(rep)
                if png:
                    drawn[name] = png
            for r in rep["results"]:
                png = chart_stages({"phases": {"stages": r["stages"]}})
                if png:
                    drawn[f"stages-{r['replicas']}"] = png
        except ImportError:
            why = "matplotlib is not installed (pip install 'fastc1k[report]'): no charts"
    else:
        why = "charts not drawn (--no-charts)"
    e = html.escape

    def img(name: str, title: str) -> str:
        if name not in drawn:
            return ""
        b64 = base64.b64encode(drawn[name]).decode()
        return f"<h2>{e(title)}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>"
    parts = html_opening("fastc1k scale-out report", [rep["started"], rep["host"]["summary"]],
                         rep.get("notes", []), summary_text(rep), why)
    parts.append(img("scaling", "Scaling: replicas against throughput and breaking point (dashed: ideal)"))
    parts.append(img("fault", "Fault timeline"))
    for r in rep["results"]:
        parts.append(f"<h2>{r['replicas']} replica(s)</h2><pre>"
                     + e("\n".join(stage_table(r["stages"]["stages"]))) + "</pre>")
        costs = "\n".join(f"{s['clients']:>8} clients: "
                          + ", ".join(f"{k} {v}" for k, v in (s.get("cost") or {}).items())
                          for s in r["stages"]["stages"])
        parts.append(f"<pre>{e(costs)}</pre>")
        parts.append(img(f"stages-{r['replicas']}", f"{r['replicas']} replica(s): clients against p99, "
                                                    f"throughput, errors"))
    parts.append("<h2>Configuration</h2><pre>" + e(json.dumps({k: rep.get(k) for k in ("config", "privileges", "host")},
                                                            indent=1, default=str)) + "</pre></body></html>")
    with open(paths["html"], "w") as f:
        f.write("\n".join(p for p in parts if p))
    for name, png in drawn.items():
        if name in ("scaling", "fault"):
            p = os.path.join(out_dir, f"{prefix}-{name}.png")
            with open(p, "wb") as fh:
                fh.write(png)
            paths[name] = p
    return paths


# --------------------------------------------------------------------------- CLI

def _replicas(text: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not v or any(x < 1 or x > 63 for x in v) or list(v) != sorted(set(v)):
        raise argparse.ArgumentTypeError(f"replica counts must be increasing, 1..63, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .__main__ import _ints, _p99
    p = ArgumentParser(prog=f"python -m {PROG}", description="The scale-out proof: the capacity suite's staged ramp "
                "against 1, 2, 4 ... fastc1k replicas (each its own cgroup and network namespace) behind HAProxy, "
                "with a replica killed under load.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=_replicas, default=(1, 2, 4), help="replica counts [default 1,2,4]")
    p.add_argument("--container", default="cpus=0.25,memory=256M",
                   help="each replica's limits, as the capacity suite's --container [default cpus=0.25,memory=256M]")
    p.add_argument("--engine", choices=("c", "python"), help="default: c when built")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="passed to fastc1k.serve")
    p.add_argument("--balancer", choices=BALANCERS, default="haproxy")
    p.add_argument("--balance", choices=ALGORITHMS, default="leastconn",
                   help="[leastconn: routes around a hung replica before its health check does]")
    p.add_argument("--mode", choices=("http", "tcp"), default="http",
                   help="balance requests (L7, http) or connections (L4, tcp: cheaper, no retries) [http]")
    p.add_argument("--check-interval", type=int, default=1000, metavar="MS", help="health check every MS [1000]")
    p.add_argument("--retries", type=int, default=3,
                   help="balancer retries of a failed idempotent request on another server [3; 0: none, so a "
                        "killed replica's in-flight requests fail]")
    p.add_argument("--maxconn", type=int, default=9000, help="balancer maxconn [9000: ~2 fds each, 20,000 max]")
    p.add_argument("--no-pin", action="store_true", help="do not pin the balancer to its own core")
    p.add_argument("--host-net", action="store_true", help="replicas on 127.0.0.x even when namespaces are permitted")
    r = p.add_argument_group("the ramp (per replica count)")
    r.add_argument("--quick", action="store_true", help="short stages (CI)")
    r.add_argument("--stages", type=_ints, help="client counts [default 100,250,500,750,1000, then x1.5]")
    r.add_argument("--stage-duration", type=int, metavar="S", help="[default 3]")
    r.add_argument("--max-clients", type=int, help="[default 8000: the balancer's maxconn bounds the rest]")
    r.add_argument("--break-p99-ms", type=_p99, default=str(DEFAULT_BREAK_P99_MS),
                   help=f"a stage is broken with p99 over this [default {DEFAULT_BREAK_P99_MS:g}]")
    r.add_argument("--no-recovery", action="store_true", help="skip the blast and recovery per replica count")
    f = p.add_argument_group("fault injection")
    f.add_argument("--fault", choices=("kill", "freeze", "none"), default="kill")
    f.add_argument("--fault-replicas", type=int, help="[default: the largest count]")
    f.add_argument("--fault-clients", type=int, help="[default: what one replica held]")
    f.add_argument("--fault-duration", type=int, default=10, metavar="S", help="seconds after the fault [10]")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=".", metavar="DIR")
    o.add_argument("--no-charts", action="store_true")
    o.add_argument("--quiet", action="store_true")
    p.add_argument("--version", action="version", version=f"fastc1k {__version__}")
    return p


def config_from(args: argparse.Namespace) -> ScaleoutConfig:
    spec = ContainerSpec.parse(args.container)
    th = A.Thresholds(break_p99_ms=args.break_p99_ms)
    kw: dict[str, Any] = dict(phases=("stages",) if args.no_recovery else ("stages", "recovery"),
                              stages=(100, 250, 500, 750, 1000), stage_s=3, final_stage_s=3, blast_s=5,
                              recovery_window_s=8, max_clients=8000, thresholds=th)
    if args.quick:
        kw.update(stage_s=2, final_stage_s=2, blast_s=3, recovery_window_s=5)
    if args.stages:
        kw["stages"] = args.stages
    if args.stage_duration:
        kw["stage_s"] = kw["final_stage_s"] = args.stage_duration
    if args.max_clients:
        kw["max_clients"] = args.max_clients
    if args.maxconn < 100 or args.maxconn > 9900:
        raise UsageError("--maxconn must be 100..9900 (two fds per connection, 20,000 fds per process)")
    if args.fault_replicas is not None and args.fault_replicas < 2:
        raise UsageError("--fault-replicas must be >= 2 (one is killed, the others must take the load)")
    bs = BalancerSpec(kind=args.balancer, mode=args.mode, algorithm=args.balance, maxconn=args.maxconn,
                      check_inter_ms=args.check_interval, retries=args.retries).validate()
    return ScaleoutConfig(replicas=args.replicas, container=spec, engine=args.engine, balancer=bs,
                          run=RunConfig(**kw), fault=args.fault, fault_replicas=args.fault_replicas,
                          fault_clients=args.fault_clients, fault_after_s=args.fault_duration,
                          use_netns=not args.host_net, pin=not args.no_pin, server_args=list(args.server_arg))


def describe_replica(cfg: ScaleoutConfig, priv: dict[str, Any]) -> str:
    c = cfg.container
    bits = []
    if priv.get("cgroup"):
        if c.cpus:
            bits.append(f"{c.cpus:g} CPU")
        if c.memory:
            bits.append(f"{c.memory / 2**20:.0f} MiB")
    else:
        bits.append("unconfined (no cgroup)")
    bits.append("own netns" if priv.get("netns") and cfg.use_netns else "host loopback")
    return "fastc1k 1 worker (" + ", ".join(bits) + ")"


def run(cfg: ScaleoutConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    progress = progress or (lambda st: None)
    priv = privileges()
    notes = list(priv["missing"])
    load = os.getloadavg()[0]
    ncpu = len(os.sched_getaffinity(0))
    if load > 0.5 * ncpu:
        notes.append(f"the machine was busy at the start (load average {load:.2f} on {ncpu} CPUs): absolute "
                     f"figures are noisy")
    lb_cpu, rep_cpus = _pinning(cfg)
    if lb_cpu is not None:
        notes.append(f"balancer pinned to CPU {lb_cpu}, replicas to CPU(s) {sorted(rep_cpus or [])}; the load "
                     f"generator floats")
    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = run_scaling(cfg, priv, progress)
    an = analyse(results, cfg)
    fault: dict[str, Any] | None = None
    if cfg.fault != "none":
        n = cfg.fault_replicas or max(cfg.replicas)
        if n < 2:
            fault = {"error": "needs >= 2 replicas (one is killed, the others must take the load)"}
        else:
            row1 = an["rows"][0] if an["rows"] else {}
            clients = cfg.fault_clients or row1.get("last_good_clients") or cfg.run.stages[0]
            try:
                fault = run_fault(cfg, priv, n, clients, progress)
            except (RuntimeError, OSError, BalancerError) as exc:
                fault = {"error": str(exc)}
    for r in results:
        notes += [f"{r['replicas']} replica(s): {x}" for x in r["notes"]]
    return {"tool": PROG, "version": __version__, "started": started, "host": host_info(), "privileges": priv,
            "config": cfg.as_dict(), "replica_desc": describe_replica(cfg, priv), "notes": notes,
            "results": results, "analysis": an, "fault": fault, "elapsed_s": round(time.monotonic() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = config_from(args)
    except (UsageError, ContainerError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM: unwind through the finally below (atexit alone does not run on a signal)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    priv = privileges()
    if priv["missing"]:   # even with --quiet: the figures mean something else without them
        print(f"{PROG}: running without: " + "; ".join(priv["missing"]), file=sys.stderr)
    from .__main__ import Progress
    prog = Progress(stream=sys.stderr, quiet=args.quiet)   # now: its default was bound at import

    def progress(st: dict[str, Any]) -> None:
        prog({**st, "phase": f"N={st.get('replicas')} {st['phase']}"})
    try:
        rep = run(cfg, progress)
    except (RuntimeError, OSError, ValueError) as exc:
        prog.done()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        _cleanup_all()
    prog.done()
    paths = write_reports(rep, args.out, charts=not args.no_charts)
    print(summary_text(rep))
    print(f"\nreports: {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
