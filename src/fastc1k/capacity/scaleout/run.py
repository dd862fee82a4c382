"""A scale-out run: for each replica count a fleet behind its balancer (a `Deployment`),
the capacity suite's own Runner driving the balancer's address (stages, then blast and
recovery) while a `Sampler` reads every 250 ms the balancer's, the replicas' and the
host's CPU; then the fault phase: steady load on the largest fleet, one replica killed
(SIGKILL) or frozen (cgroup freezer), HAProxy's stats socket polled every 100 ms to time
when its health check marks it down.
"""
from __future__ import annotations

import datetime
import math
import os
import threading
import time
from typing import Any, Callable

from ... import __version__
from ...host import proc
from ...host.proc import host_info
from ..console import busy_note
from ..stages import Runner, load_api
from .analysis import analyse, analyse_fault, bound_of
from .balancer import Balancer, BalancerError, BalancerSpec
from .config import PROG, ScaleoutConfig, describe_replica
from .fleet import Fleet, ReplicaSpec, privileges

__all__ = ["Sampler", "Deployment", "run_scaling", "run_count", "StatsPoller", "run_fault", "runtime_of", "run"]


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


def pinning(cfg: ScaleoutConfig) -> tuple[int | None, set[int] | None]:
    """The balancer on the last core, the replicas on the others (when there are two+)."""
    cores = sorted(os.sched_getaffinity(0))
    if not cfg.pin or len(cores) < 2:
        return None, None
    return cores[-1], set(cores[:-1])


class Deployment:
    """A fleet and its balancer, up and healthy, as a context manager."""

    def __init__(self, n: int, cfg: ScaleoutConfig, priv: dict[str, Any]) -> None:
        lb_cpu, rep_cpus = pinning(cfg)
        self.spec = ReplicaSpec(cfg.container, cfg.engine, cfg.server_args, rep_cpus, cfg.use_netns, cfg.runtime,
                                cfg.image)
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


def run_scaling(cfg: ScaleoutConfig, priv: dict[str, Any], progress: Callable[[dict[str, Any]], None]
                ) -> list[dict[str, Any]]:
    results = []
    for n in cfg.replicas:
        with Deployment(n, cfg, priv) as dep:
            results.append(run_count(n, dep, cfg, priv, progress))
    return results


def run_count(n: int, dep: Any, cfg: ScaleoutConfig, priv: dict[str, Any],
              progress: Callable[[dict[str, Any]], None], unit: str | None = None, lb_cores: float = 1.0,
              lb_name: str = "balancer",
              before: Callable[[], None] | None = None,
              after: Callable[[Runner, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The ramp against one deployment of n replicas. `unit`: what the balancer's
    per-server counters count ("requests", or "connections" for an L4 balancer: then
    the load generator's count is the requests passed); `lb_cores`: the balancer's CPU
    ceiling; `before`/`after` let a balancer add its own measurements (kservice)."""
    ncpu = len(os.sched_getaffinity(0))
    lb = dep.lb
    assert lb is not None
    if unit is None:
        unit = "connections" if cfg.balancer.mode == "tcp" else "requests"
    sampler = Sampler(lb, dep.fleet).start()
    if before:
        before()
    stats0 = lb.servers()
    cpu0 = lb.cpu_seconds()
    runner = Runner(lb.url, cfg.run, server=None, progress=lambda st: progress({**st, "replicas": n}),
                    server_pid=lb.pid, metrics=False)
    out = runner.run()
    cpu1 = lb.cpu_seconds()
    stats1 = lb.servers()
    sampler.sample()
    sampler.stop()
    lb_alive = lb.alive()
    lb_log = lb.output()[-600:]
    backends = [b.__dict__ for b in dep.fleet.backends()]
    fleet = dep.fleet.describe()
    st = out.get("stages") or {"stages": []}
    # HAProxy counts requests in http mode, connections in tcp mode (and nginx nothing):
    # then the load generator's count of the requests it sent through the balancer.
    if stats1 and unit == "requests":
        passed = sum(v["requests"] for v in stats1.values()) - sum(v["requests"] for v in stats0.values())
    else:
        passed = sum(r["ok"] + sum((r.get("errors") or {}).values()) for r in out.get("timeline") or [])
    quota = cfg.container.cpus if priv.get("cgroup") else None
    _stage_costs(st["stages"], out.get("timeline", []), sampler, runner.t0)
    res = {
        "replicas": n,
        "backends": backends,
        "fleet": fleet,
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
                     "per_server_unit": unit},
    }
    if after:
        after(runner, res)
    ss = st["stages"]
    peak = max(ss, key=lambda s: s["throughput"]) if ss else None
    procs = cfg.run.processes or math.ceil(max([s["clients"] for s in ss] or [1]) / 15000)
    res["peak_stage"] = peak and {"clients": peak["clients"], "throughput": peak["throughput"], "cost": peak.get("cost")}
    res["bound"] = bound_of(peak, n, quota, lb_cores, ncpu, procs, lb_name) if peak else None
    return res


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
              progress: Callable[[dict[str, Any]], None], deploy: Callable[[int], Any] | None = None
              ) -> dict[str, Any]:
    """Steady load on n replicas; replica r0 killed (or frozen) after fault_before_s.
    `deploy(n)`: the deployment to use (default: the fleet behind cfg's balancer)."""
    LoadSpec, LoadFarm = load_api()
    if cfg.fault == "freeze" and not priv.get("freezer"):
        raise RuntimeError("--fault freeze needs the cgroup freezer (root): " + "; ".join(priv["missing"]))
    with (deploy(n) if deploy else Deployment(n, cfg, priv)) as dep:
        lb = dep.lb
        assert lb is not None
        victim = dep.fleet.replicas[0]
        poll = StatsPoller(lb).start()
        spec = LoadSpec(url=lb.url + cfg.run.path, connections=clients, connect_timeout=cfg.run.connect_timeout,
                        request_timeout=cfg.run.request_timeout)
        fleet = dep.fleet.describe()
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
    return {**analyse_fault(rows, [(t - base, sv) for t, sv in poll.rows], t_fault, victim.name, n, clients,
                            cfg, res.histogram), "fleet": fleet}


def runtime_of(cfg: ScaleoutConfig, results: list[dict[str, Any]], faults: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's runtime: kernel parts, or podman with the image id and every container
    the run made (by fleet: each replica count's, each fault's)."""
    if cfg.runtime != "podman":
        return {"name": "kernel"}
    fleets = [r["fleet"] for r in results + faults if r.get("fleet")]
    return {"name": "podman", "image": cfg.image, "image_id": next((f["image_id"] for f in fleets if f.get("image_id")), None),
            "applied": fleets[0].get("applied") if fleets else {}, "refused": fleets[0].get("refused") if fleets else [],
            "run_ids": [f["run_id"] for f in fleets], "containers": [c for f in fleets for c in f["containers"]]}


def run(cfg: ScaleoutConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    progress = progress or (lambda st: None)
    priv = privileges()
    notes = list(priv["missing"])
    if busy := busy_note():
        notes.append(busy)
    lb_cpu, rep_cpus = pinning(cfg)
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
    rt = runtime_of(cfg, results, [fault] if fault else [])
    notes += [f"podman refused: {x}" for x in rt.get("refused", [])]
    return {"tool": PROG, "version": __version__, "started": started, "host": host_info(), "privileges": priv,
            "config": cfg.as_dict(), "replica_desc": describe_replica(cfg, priv), "runtime": rt, "notes": notes,
            "results": results, "analysis": an, "fault": fault, "elapsed_s": round(time.monotonic() - t0, 1)}
