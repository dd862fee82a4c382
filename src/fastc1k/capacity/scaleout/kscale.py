"""The scale-out proof with balancers side by side in one run: the kernel (a Service as
kube-proxy's nftables mode programs it: kernel_lb, health, kservice), HAProxy in http
mode and HAProxy in tcp mode, each in front of the same kind of fleet.

    python -m fastc1k.capacity scaleout --replicas 1,2,4 --balancer kernel,haproxy-http,haproxy-tcp

Every balancer gets the same topology: the replicas sit behind a node namespace, the load
generator on the host drives the node's service address (port 80), so the path (host ->
node -> replica) is the same and only the balancing differs. The kernel balancer is nft
rules in the node; HAProxy runs inside the node, pinned to its own core as before.

Per (balancer, N): the ramp (scaleout.run_count), each replica's own counters (accepted
connections, requests, from its /metrics), the host's load average before and after,
and for the kernel its CPU (kcpu: perf samples of netfilter code in the run's own
tasks) and its conntrack table (count, max, drops
per stage; the bound when it fills). Then the faults: replica r0 of the largest fleet
killed, then frozen, under steady load, behind each balancer.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ... import __version__
from ..._readme import markers, write_block
from ...host.net import in_netns
from ...host.proc import host_info
from .analysis import analyse
from .balancer import Balancer, BalancerError, BalancerSpec
from .config import ScaleoutConfig, describe_replica
from ..report import fmt_num
from .fleet import Fleet, ReplicaSpec, privileges
from .health import ProbeSpec
from .kcpu import NetfilterProfile, PidTracker
from .kernel_lb import Conntrack, Endpoint, NeedsRoot, ServiceNet, require_root, sweep
from .kservice import KernelService, NodeSlot
from ..stages import load_api
from .run import pinning, run_count, run_fault, runtime_of

__all__ = ["KINDS", "parse_balancers", "KernelOptions", "NodeDeployment", "run_compare", "summary_text",
           "readme_block", "write_outputs", "side_by_side", "NeedsRoot", "require_root"]

KINDS = ("kernel", "haproxy-http", "haproxy-tcp", "nginx")


def parse_balancers(text: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in KINDS + ("haproxy",)]
    if not items or bad or len(set(items)) != len(items):
        raise ValueError(f"--balancer: a comma-separated list of {', '.join(KINDS)} (each once), got {text!r}")
    return items


@dataclass
class KernelOptions:
    pick: str = "random"                       # numgen random (kube-proxy) or inc (round robin)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    conntrack_max: int | None = None           # None: Conntrack.needed(max clients), never lowered
    profile_hz: int = 999

    def describe(self) -> dict[str, Any]:
        return {"pick": self.pick, "probe": self.probe.describe(), "conntrack_max": self.conntrack_max,
                "profile_hz": self.profile_hz}


class NodeDeployment:
    """A node namespace, n replicas behind it, and one balancer in it (the kernel's rules
    or HAProxy), up and healthy, as a context manager; everything goes on exit."""

    def __init__(self, n: int, cfg: ScaleoutConfig, priv: dict[str, Any], balancer: str,
                 kopts: KernelOptions) -> None:
        require_root()
        self.n, self.cfg, self.balancer, self.kopts = n, cfg, balancer, kopts
        self.net = ServiceNet()
        lb_cpu, rep_cpus = pinning(cfg)
        self.lb_cpu = lb_cpu
        # HAProxy keeps its core and the replicas the others; the kernel balancer has no
        # process to keep a core for, so its replicas float
        spec = ReplicaSpec(cfg.container, cfg.engine, cfg.server_args,
                           None if balancer == "kernel" else rep_cpus, True, cfg.runtime, cfg.image)
        self.fleet = Fleet(n, spec, priv, slot=lambda i: NodeSlot(self.net, i))
        self.lb: Any = None
        self.victim_killed_at: float | None = None
        self.events: list[Any] = []
        self.notes: list[str] = []

    @property
    def unit(self) -> str:
        return "requests" if self.balancer in ("haproxy-http", "nginx") else "connections"

    def __enter__(self) -> "NodeDeployment":
        try:
            self.net.setup()
            self.fleet.start()
            if self.balancer == "kernel":
                eps = [Endpoint(b.name, b.host, b.port) for b in self.fleet.backends()]
                want = self.kopts.conntrack_max or Conntrack.needed(self.cfg.run.max_clients)
                self.lb = KernelService(self.net, eps, self.kopts.pick, self.kopts.probe, want,
                                        conntrack_exact=self.kopts.conntrack_max is not None)
            else:
                kind, _, mode = self.balancer.partition("-")
                bs = BalancerSpec(**{**self.cfg.balancer.__dict__, "kind": kind, "mode": mode or "http",
                                     "cpu": self.lb_cpu, "netns": self.net.node})
                self.lb = Balancer(self.fleet.backends(), bs.validate(), listen=(self.net.vip, self.net.port))
            self.lb.start()   # ours before it starts: a start that fails part-way is stopped below
            if not self.lb.wait_healthy(15):
                raise BalancerError(f"the {self.balancer} balancer did not see every replica healthy: "
                                    f"{self.lb.servers()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def replica_counters(self) -> dict[str, dict[str, float]]:
        """Each replica's own count of accepted connections and requests (its /metrics)."""
        import urllib.request

        from ...serve import parse_metrics

        def scrape() -> dict[str, dict[str, float]]:
            out = {}
            for b in self.fleet.backends():
                try:
                    with urllib.request.urlopen(f"http://{b.host}:{b.port}/metrics", timeout=3) as r:
                        tot = parse_metrics(r.read().decode()).get("total", {})
                    out[b.name] = {"accepted": tot.get("fastc1k_accepted_total"),
                                   "requests": tot.get("fastc1k_requests_total")}
                except OSError as exc:
                    out[b.name] = {"error": str(exc)}
            return out
        return in_netns(self.net.node, scrape)

    def __exit__(self, *exc: Any) -> None:
        if self.fleet.replicas:
            self.victim_killed_at = self.fleet.replicas[0].killed_at
        try:
            if self.lb is not None:
                self.lb.stop()
                if isinstance(self.lb, KernelService):
                    self.events = list(self.lb.checker.events)
                    self.notes += self.lb.notes
        finally:   # the replicas and the namespaces go whatever the balancer's stop did
            try:
                self.fleet.stop()
            finally:
                left = self.net.teardown()
                if left:
                    self.notes.append("not removed: " + "; ".join(left))


# --------------------------------------------------------------------------- the kernel's figures

CALIBRATION_S, CALIBRATION_CLIENTS = 3.0, 100


class _KernelMeasures:
    """perf and conntrack around one kernel-balancer ramp (scaleout.run_count's hooks).

    Netfilter samples in the run's tasks also hold the host's own hooks on the client's
    packets (its raw notrack chains, its conntrack and NAT hooks passing them by): so
    first a calibration, the same kind of load sent to replica r0 straight through the
    node (routed, no service rules: no DNAT, no conntrack there), whose netfilter CPU per
    request is that part. The balancer's CPU per request is what the ramp's stages spend
    above it."""

    def __init__(self, dep: NodeDeployment, hz: int) -> None:
        self.dep, self.prof = dep, NetfilterProfile(hz)
        self.pids = PidTracker(extra=dep.fleet.pids)
        self.t0: float | None = None
        self.calibration: tuple[float, float, int] | None = None

    def before(self) -> None:
        self.pids.start()
        self.prof.start()
        time.sleep(0.3)                        # perf is up
        LoadSpec, LoadFarm = load_api()
        b = self.dep.fleet.backends()[0]
        farm = LoadFarm(LoadSpec(url=f"http://{b.host}:{b.port}{self.dep.cfg.run.path}",
                                 connections=CALIBRATION_CLIENTS)).start()
        t0 = farm.started_ns / 1e9
        time.sleep(max(0.0, t0 + CALIBRATION_S - time.monotonic()))
        t1 = time.monotonic()
        done = farm.stop().summary.get("requests") or 0
        self.calibration = (t0, t1, done)

    def abandon(self) -> None:
        """The ramp raised: perf stopped and its data gone (after() does that otherwise)."""
        self.pids.stop()
        self.prof.cleanup()

    def after(self, runner: Any, res: dict[str, Any]) -> None:
        self.t0 = runner.t0
        self.prof.stop()
        mine = self.pids.stop()
        stages = res["stages"]["stages"]
        wins = {f"s{i}": (runner.t0 + s["start_s"], runner.t0 + s["start_s"] + s["duration_s"])
                for i, s in enumerate(stages)}
        if self.calibration:
            wins["routed"] = self.calibration[:2]
        got = self.prof.windows(wins, mine)
        self.prof.cleanup()
        cal = got.get("routed")
        done = self.calibration[2] if self.calibration else 0
        hooks = cal["balancer_cpu_s"] / done if cal and done else 0.0   # CPU s per request
        sampler = self.dep.lb.sampler
        total_raw = total_req = 0.0
        for i, s in enumerate(stages):
            c = s.setdefault("cost", {})
            w = got.get(f"s{i}")
            reqs = s["ok"] + s["error_count"]
            if w and reqs:
                total_raw += w["balancer_cpu_s"]
                mine_s = max(0.0, w["balancer_cpu_s"] - hooks * reqs)
                c["netfilter_us_per_request"] = round(w["balancer_cpu_s"] / reqs * 1e6, 3)
                c["balancer_cpu_s"] = round(mine_s, 4)
                c["balancer_cores"] = round(mine_s / s["duration_s"], 4)
                c["balancer_us_per_request"] = round(mine_s / reqs * 1e6, 3)
                c["balancer_error_us"] = round(w["error_cpu_s"] / reqs * 1e6, 3)
                c["others_netfilter_cores"] = round(w["others_cpu_s"] / s["duration_s"], 4)
                total_req += reqs
            ct = sampler.window(*wins[f"s{i}"])
            if ct:
                c.update({"conntrack_peak": ct["peak"], "conntrack_max": ct["max"], "conntrack_drops": ct["drops"]})
        b = res["balancer"]
        net_cpu = max(0.0, total_raw - hooks * total_req)   # the stages' own floors aside
        b["cpu_s"] = round(net_cpu, 4)
        b["us_per_request"] = round(net_cpu / total_req * 1e6, 3) if total_req else None
        b["netfilter_us_per_request"] = round(total_raw / total_req * 1e6, 3) if total_req else None
        b["host_hooks_us_per_request"] = round(hooks * 1e6, 3) if cal and done else None
        b["calibration"] = {"seconds": CALIBRATION_S, "clients": CALIBRATION_CLIENTS, "requests": done,
                            "netfilter": cal}
        less = (f"less the netfilter CPU per request of a routed load without the service "
                f"({b['host_hooks_us_per_request']} µs)" if b["host_hooks_us_per_request"] is not None else
                "with nothing taken off (the routed load without the service passed no request)")
        b["cpu_method"] = (f"perf cpu-clock samples at {self.prof.freq} Hz on every CPU in netfilter code, in the "
                           f"run's own tasks (plus their share of ksoftirqd's), {less}: see "
                           f"capacity/scaleout/kcpu.py and kscale.py"
                           if not self.prof.why_not else f"not measured: {self.prof.why_not}")
        b["conntrack"] = self.dep.lb.conntrack_sizing


def _conntrack_bound(res: dict[str, Any]) -> None:
    """The kernel row's bound: the conntrack table when it filled (drops, or >= 90 % of
    its max) at the peak; its occupancy is evidence either way."""
    peak = res.get("peak_stage") or {}
    c = peak.get("cost") or {}
    if c.get("conntrack_max") is None:
        return
    b = res.get("bound") or {}
    occ = c["conntrack_peak"] / c["conntrack_max"] if c["conntrack_max"] else 0
    ev = f"conntrack {c['conntrack_peak']} of {c['conntrack_max']} entries, {c['conntrack_drops']} drops"
    if c["conntrack_drops"] or occ >= 0.9:
        b.update({"resource": "conntrack", "label": "the node's conntrack table (nf_conntrack_max)"})
    b["evidence"] = (b.get("evidence", "") + "; " + ev).lstrip("; ")
    b.setdefault("utilisation", {})["conntrack"] = round(occ, 3)
    res["bound"] = b


# --------------------------------------------------------------------------- the run

def _count(n: int, balancer: str, cfg: ScaleoutConfig, priv: dict[str, Any], kopts: KernelOptions,
           progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    load0 = os.getloadavg()
    with NodeDeployment(n, cfg, priv, balancer, kopts) as dep:
        ncpu = len(os.sched_getaffinity(0))
        hooks: dict[str, Any] = {}
        km = None
        if balancer == "kernel":
            km = _KernelMeasures(dep, kopts.profile_hz)
            hooks = {"before": km.before, "after": km.after}
        try:
            res = run_count(n, dep, cfg, priv, lambda st: progress({**st, "balancer": balancer}), unit=dep.unit,
                            lb_cores=float(ncpu) if balancer == "kernel" else 1.0,
                            lb_name="kernel balancer (netfilter, sampled)" if balancer == "kernel" else "balancer",
                            **hooks)
        except BaseException:
            if km:
                km.abandon()
            raise
        res["replica_counters"] = dep.replica_counters()
        if balancer == "kernel":
            _conntrack_bound(res)
            res["health"] = dep.lb.checker.summary()
    res["balancer_kind"] = balancer
    res["removals_during_ramp"] = _removals(dep.events, res, km.t0 if km else None)
    res["host_load"] = {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]}
    res["notes"] += dep.notes
    return res


def _removals(events: list[Any], res: dict[str, Any], t0: float | None) -> list[dict[str, Any]]:
    """The prober's removals and returns during the ramp, each with the phase it fell in
    (a replica whose p99 passes the probe's time-out is taken for dead: the readiness
    probe's own failure mode under overload)."""
    out = []
    for e in events:
        t = None if t0 is None else e.t - t0
        w = next((w for w in res.get("windows") or [] if t is not None and w["t0"] <= t < w["t1"]), None)
        st = next((s for s in res["stages"]["stages"] if w and w["phase"] == "stages" and s["start_s"] <= t
                   < s["start_s"] + s["duration_s"]), None)
        out.append({"replica": e.name, "ready": e.ready, "reason": e.reason, "t": None if t is None else round(t, 2),
                    "phase": (w["label"] if w["label"].startswith(w["phase"]) else f"{w['phase']} {w['label']}")
                    if w else "between phases",
                    "stage_p99_ms": (st.get("latency_ms") or {}).get("p99") if st else None})
    return out


def _fault(mode: str, balancer: str, n: int, clients: int, cfg: ScaleoutConfig, priv: dict[str, Any],
           kopts: KernelOptions, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    fcfg = dataclasses.replace(cfg, fault=mode)
    made: list[NodeDeployment] = []

    def deploy(k: int) -> NodeDeployment:
        made.append(NodeDeployment(k, fcfg, priv, balancer, kopts))
        return made[-1]
    try:
        f = run_fault(fcfg, priv, n, clients, lambda st: progress({**st, "balancer": balancer}), deploy=deploy)
    except (RuntimeError, OSError, BalancerError) as exc:
        return {"mode": mode, "balancer": balancer, "error": str(exc)}
    f["balancer"] = balancer
    dep = made[-1]
    if balancer == "kernel" and dep.victim_killed_at is not None:
        ev = next((e for e in dep.events if e.name == f["victim"] and not e.ready
                   and e.t >= dep.victim_killed_at), None)
        # the prober's own times, not the 100 ms polls: out of the rules = the nft commit
        f["marked_down_s"] = round(ev.t - dep.victim_killed_at, 3) if ev else None
        f["check_failed_s"] = (round(ev.first_fail_at - dep.victim_killed_at, 3)
                               if ev and ev.first_fail_at else f.get("check_failed_s"))
        f["rules_update_s"] = ev.apply_s if ev else None
        f["health_check"] = kopts.probe.describe()
        f["false_removals"] = [e.name for e in dep.events if e.name != f["victim"] and not e.ready]
    f["notes"] = dep.notes
    return f


def run_compare(cfg: ScaleoutConfig, balancers: tuple[str, ...], faults: tuple[str, ...], kopts: KernelOptions,
                progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    progress = progress or (lambda st: None)
    require_root()
    gone = sweep()
    priv = privileges()
    notes = list(priv["missing"]) + ([f"removed leftovers of killed runs: {', '.join(gone)}"] if gone else [])
    notes.append("IPVS (kube-proxy's other kernel mode) is not built into this kernel: the kernel balancer is "
                 "nftables, as kube-proxy's nftables mode")
    t0 = time.monotonic()
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = []
    refs: dict[str, int] = {}   # each balancer's 1-replica breaking load: a stage of every later count
    for n in cfg.replicas:
        for bal in balancers:
            ncfg = cfg
            if bal in refs:
                stages = tuple(sorted(set(cfg.run.stages) | {refs[bal]}))
                ncfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, stages=stages))
            results.append(_count(n, bal, ncfg, priv, kopts, progress))
            bp = results[-1]["stages"].get("breaking_point")
            if n == cfg.replicas[0] and bp:
                refs[bal] = bp["clients"]
    analysis = {bal: analyse([r for r in results if r["balancer_kind"] == bal], cfg) for bal in balancers}
    fault_list = []
    n = cfg.fault_replicas or max(cfg.replicas)
    if faults and n >= 2:
        first = analysis[balancers[0]]["rows"]
        clients = cfg.fault_clients or (first[0]["last_good_clients"] if first else None) or cfg.run.stages[0]
        for bal in balancers:
            for mode in faults:
                fault_list.append(_fault(mode, bal, n, clients, cfg, priv, kopts, progress))
    for r in results:
        notes += [f"{r['balancer_kind']}, {r['replicas']} replica(s): {x}" for x in r["notes"]]
    return {"tool": "fastc1k.capacity scaleout --balancer", "version": __version__, "started": started,
            "host": host_info(), "privileges": priv, "config": cfg.as_dict(), "kernel": kopts.describe(),
            "balancers": list(balancers), "replica_desc": describe_replica(cfg, priv) + ", behind the node",
            "runtime": runtime_of(cfg, results, fault_list), "notes": notes, "results": results, "analysis": analysis, "faults": fault_list,
            "host_load": {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]},
            "elapsed_s": round(time.monotonic() - t0, 1)}


# --------------------------------------------------------------------------- report

def _rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for bal in rep["balancers"]:
        ref = rep["analysis"][bal].get("reference_clients")
        for row in rep["analysis"][bal]["rows"]:
            out.append({**row, "balancer": bal, "_ref": ref})
    return out


def _p99_ref(r: dict[str, Any]) -> str:
    """p99 at the balancer's 1-replica breaking load, or at the first stage above it (an
    upper bound) when none ran at it."""
    at = r.get("p99_reference_clients")
    if r.get("p99_at_reference_ms") is None:
        return "-"
    return f"{r['p99_at_reference_ms']:.1f} ms at {at}" + ("" if at == r.get("_ref") else f" (> {r.get('_ref')})")


def _fault_line(f: dict[str, Any]) -> str:
    if f.get("error"):
        return f"{f['balancer']}, {f['mode']}: not run: {f['error']}"
    share = f.get("failed_share_of_stage")
    hc = f.get("health_check") or {}
    probe = (f"probe every {hc['interval_ms']} ms, time-out {hc['timeout_ms']} ms, {hc['failures_to_remove']} "
             f"failures" if "interval_ms" in hc else f"check inter {hc.get('inter_ms')} ms fall {hc.get('fall')}")
    return (f"{f['balancer']}, {f['mode']} {f['victim']} of {f['replicas']} at {f['clients']} clients: "
            f"{f['failed_after_fault']} failed of {f['stage_requests']} "
            f"({fmt_num(share * 100 if share is not None else None, '{:.3f}')} %), out of the rules after "
            f"{fmt_num(f.get('marked_down_s'), '{:.2f}')} s ({probe}), stall {f.get('stall_s')} s, "
            f"cascade {'yes' if f.get('cascade') else 'no'}")


def summary_text(rep: dict[str, Any]) -> str:
    out = [f"fastc1k scale-out, balancers side by side: {', '.join(rep['balancers'])}; replicas "
           f"{', '.join(map(str, rep['config']['replicas']))} of {rep['replica_desc']}",
           f"load average before {rep['host_load']['before']}, after {rep['host_load']['after']}"]
    out += [f"note: {n}" for n in rep["notes"]]
    out.append("")
    out.append(f"{'balancer':<13} {'N':>2} {'break at':>9} {'max req/s':>10} {'eff.':>5} {'p99@ref':>8} "
               f"{'LB us/req':>9}  bound at peak")
    for r in _rows(rep):
        brk = str(r["breaking_point"]) if r["breaking_point"] else f">{r['unbroken_up_to']}"
        b = r.get("bound") or {}
        out.append(f"{r['balancer']:<13} {r['replicas']:>2} {brk:>9} {fmt_num(r['max_throughput'], '{:.0f}'):>10} "
                   f"{fmt_num(r['efficiency'], '{:.2f}'):>5} {fmt_num(r['p99_at_reference_ms']):>8} "
                   f"{fmt_num(r['balancer_us_per_request'], '{:.2f}'):>9}  {b.get('label') or '-'}")
        if b.get("evidence"):
            out.append(f"{'':>14}({b['evidence']})")
    out += _removal_lines(rep)
    if rep["faults"]:
        out.append("")
        out += [_fault_line(f) for f in rep["faults"]]
    g = goals(rep)
    if g:
        out += ["", "goals (kernel balancer):"] + [f"  {x}" for x in g]
    return "\n".join(out)


GOAL_EFFICIENCY = {2: 0.9, 4: 0.85}


def goals(rep: dict[str, Any], balancer: str = "kernel") -> list[str]:
    """The issue's goals for one balancer's rows and faults: held or missed, and when
    missed, what bound that row (from its evidence)."""
    if balancer not in rep["analysis"]:
        return []
    rows = rep["analysis"][balancer]["rows"]
    out = []
    def us(n: int) -> float | None:   # the replicas' CPU per request at that count's peak
        res = next((x for x in rep.get("results", []) if x.get("balancer_kind") == balancer and x["replicas"] == n),
                   None)
        return (((res or {}).get("peak_stage") or {}).get("cost") or {}).get("replicas_us_per_request")
    for n, want in GOAL_EFFICIENCY.items():
        r = next((x for x in rows if x["replicas"] == n), None)
        if r is None or r["efficiency"] is None:
            continue
        ok = r["efficiency"] >= want
        b = r.get("bound") or {}
        why = f"missed: bound by {b.get('label') or 'unknown'}"
        u1, un = us(rows[0]["replicas"]), us(n)
        if not ok and b.get("resource") == "replicas" and u1 and un:
            why += (f", and each request cost the replicas {un:.1f} µs of CPU against {u1:.1f} with one (softirq "
                    f"work is charged to the task it interrupts, other processes' packets included)")
        out.append(f"efficiency at N={n} {r['efficiency']:.2f} (goal >= {want:g}): " + ("held" if ok else why))
    brk = [(r["replicas"], r["breaking_point"] or r["unbroken_up_to"]) for r in rows]
    if len(brk) > 1:
        # an unbroken count is a lower bound: it rose if that bound is above the last break;
        # after an unbroken count there is nothing to compare
        verdicts = []
        for a, b in zip(rows, rows[1:]):
            if not a["breaking_point"]:
                verdicts.append(None)
            else:
                verdicts.append((b["breaking_point"] or b["unbroken_up_to"] or 0) > a["breaking_point"])
        text = " -> ".join(f"{'>' if not r['breaking_point'] else ''}{b or '-'}" for r, (_, b) in zip(rows, brk))
        if None in verdicts and False not in verdicts:
            out.append(f"breaking point {text} clients (goal: rises with N): no verdict, a count did not break "
                       f"up to the client cap (raise --max-clients)")
        else:
            out.append(f"breaking point {text} clients (goal: rises with N): "
                       + ("held" if all(verdicts) else "missed: " + "; ".join(
                           f"N={r['replicas']} bound by {(r.get('bound') or {}).get('label') or 'unknown'}"
                           for r, v in zip(rows[1:], verdicts) if v is False)))
        p99 = [r["p99_at_reference_ms"] for r in rows]
        if all(x is not None for x in p99):
            falls = all(b < a for a, b in zip(p99, p99[1:]))
            out.append(f"p99 at {rep['analysis'][balancer]['reference_clients']} clients "
                       + " -> ".join(f"{x:.1f}" for x in p99) + " ms (goal: falls with N): "
                       + ("held" if falls else "missed"))
    for f in rep["faults"]:
        if f.get("balancer") != balancer or f.get("error"):
            continue
        share, down = f.get("failed_share_of_stage"), f.get("marked_down_s")
        ok = share is not None and share < 0.01 and down is not None and down <= 1.0 and not f.get("cascade")
        out.append(f"{f['mode']} one of {f['replicas']}: failed {fmt_num(share * 100 if share is not None else None, '{:.3f}')}"
                   f" %, out of the rules after {fmt_num(down, '{:.2f}')} s, cascade {'yes' if f.get('cascade') else 'no'}"
                   f" (goal: < 1 %, <= 1 s, none): " + ("held" if ok else "missed"))
    return out


def _removal_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    for r in rep["results"]:
        gone = [e for e in r.get("removals_during_ramp") or [] if not e["ready"]]
        if gone:
            at = list(dict.fromkeys(e.get("phase") or "?" for e in gone))
            lines.append(f"{r['balancer_kind']}, {r['replicas']} replica(s): the readiness probe took a loaded replica "
                         f"for dead {len(gone)} time(s) during the run (in {', '.join(at)}: p99 past the probe's "
                         f"time-out), each back at its next good probe")
    return lines


def chart(rep: dict[str, Any]) -> bytes | None:
    from ..report import png as _png
    from ..report import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = {"kernel": "C0", "haproxy-http": "C3", "haproxy-tcp": "C1", "nginx": "C2"}
    for bal in rep["balancers"]:
        rows = rep["analysis"][bal]["rows"]
        n = [r["replicas"] for r in rows]
        x = [r["max_throughput"] or 0 for r in rows]
        bp = [r["breaking_point"] or r["unbroken_up_to"] or 0 for r in rows]
        c = colors.get(bal, "k")
        axes[0].plot(n, x, "o-", color=c, label=bal)
        if x and rows:
            axes[0].plot(n, [x[0] * k / n[0] for k in n], ":", color=c, lw=1)
        axes[1].plot(n, bp, "s-", color=c, label=bal)
        axes[2].plot(n, [r["balancer_us_per_request"] or 0 for r in rows], "^-", color=c, label=bal)
    axes[0].set_title("Peak throughput (dotted: N x one replica)")
    axes[0].set_ylabel("req/s")
    axes[1].set_title("Breaking point (p99 over the threshold)")
    axes[1].set_ylabel("clients")
    axes[2].set_title("Balancer CPU per request")
    axes[2].set_ylabel("µs")
    for ax in axes:
        ax.set_xlabel("replicas")
        ax.set_xticks(rep["config"]["replicas"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def readme_block(rep: dict[str, Any], chart_path: str | None) -> str:
    h = rep["host"]
    k = rep["kernel"]
    p = k["probe"]
    lines = [f"Measured {rep['started'].replace('T', ' ')} on {h.get('summary', '')}; load average "
             f"{' '.join(map(str, rep['host_load']['before']))} → {' '.join(map(str, rep['host_load']['after']))} "
             f"(other engineers' jobs share the 2 cores). Replicas: {rep['replica_desc']}. Kernel balancer: nftables "
             f"`numgen {k['pick']}` DNAT per connection, readiness probe every {p['interval_ms']} ms, time-out "
             f"{p['timeout_ms']} ms, {p['failures_to_remove']} failures to remove (worst case "
             f"{p['worst_case_removal_ms']} ms).", "",
             "| balancer | replicas | breaks at (clients) | peak req/s | efficiency | p99 at its 1-replica break "
             "| balancer CPU µs/req | bound at the peak |", "|---|---|---|---|---|---|---|---|"]
    for r in _rows(rep):
        brk = str(r["breaking_point"]) if r["breaking_point"] else f"> {r['unbroken_up_to']}"
        b = r.get("bound") or {}
        lines.append(f"| {r['balancer']} | {r['replicas']} | {brk} | {fmt_num(r['max_throughput'], '{:,.0f}')} | "
                     f"{fmt_num(r['efficiency'], '{:.2f}')} | {_p99_ref(r)} | "
                     f"{fmt_num(r['balancer_us_per_request'], '{:.2f}')} | {b.get('label') or '-'}: "
                     f"{b.get('evidence', '').replace(SOFTIRQ_NOTE, '')} |")
    cpu = []
    for r in rep.get("results", []):
        b = r.get("balancer") or {}
        if r.get("balancer_kind") == "kernel" and b.get("netfilter_us_per_request") is not None:
            cpu.append(f"- kernel, {r['replicas']} replica(s): netfilter CPU in the run's tasks "
                       f"{b['netfilter_us_per_request']:.2f} µs/request over the ramp, less "
                       f"{fmt_num(b.get('host_hooks_us_per_request'), '{:.2f}')} µs measured routed to a replica without "
                       f"the service = {fmt_num(b.get('us_per_request'), '{:.2f}')} µs (perf samples at "
                       f"{rep['kernel']['profile_hz']} Hz).")
    if cpu:
        lines += ["", "The kernel balancer's CPU per request:", ""] + cpu
    lines += ["", "Each row's evidence is every part's use at its peak stage; softirqs are the kernel's packet work "
              "(veth), already inside the processes' figures. HAProxy is pinned to a core of its own and its replicas "
              "to the other; the kernel balancer has no process, so its replicas float."]
    removals = _removal_lines(rep)
    if removals:
        lines += [""] + [f"- {x}" for x in removals]
    if rep["faults"]:
        lines += ["", "Faults (replica r0 of the largest fleet, steady load):", ""]
        lines += [f"- {_fault_line(f)}" for f in rep["faults"]]
    g = goals(rep)
    if g:
        lines += ["", "The goals, for the kernel balancer:", ""] + [f"- {x}" for x in g]
    if chart_path:
        lines += ["", f"![scale-out: throughput, breaking point and balancer CPU against replicas]({chart_path})"]
    return "\n".join(lines) + "\n"


README_BLOCK = "scaleout"   # <!-- scaleout:start --> ... <!-- scaleout:end -->
SOFTIRQ_NOTE = " (packets, veth: charged to the process they interrupted)"   # said once, under the table


def write_outputs(rep: dict[str, Any], out_dir: str, charts: bool = True, readme: str | None = None,
                  prefix: str = "scaleout") -> dict[str, str]:
    """JSON, summary, chart and the README block (between its markers, when `readme`)."""
    from ..report import write_json
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, prefix + ".json"), "md": os.path.join(out_dir, prefix + ".md")}
    write_json(rep, paths["json"])
    png = None
    if charts:
        try:
            png = chart(rep)
        except ImportError:
            rep["notes"].append("matplotlib is not installed (pip install 'fastc1k[report]'): no chart")
    rel = None
    if png:
        paths["png"] = os.path.join(out_dir, prefix + ".png")
        with open(paths["png"], "wb") as f:
            f.write(png)
        rel = os.path.relpath(paths["png"], os.path.dirname(os.path.abspath(readme)) if readme else out_dir)
    block = readme_block(rep, rel)
    with open(paths["md"], "w") as f:
        f.write(block)
    if readme:
        if not write_block(readme, README_BLOCK, block):
            start, end = markers(README_BLOCK)
            raise OSError(f"{readme} has no {start} ... {end} markers")
        paths["readme"] = readme
    return paths


def side_by_side(args: Any) -> tuple[tuple[str, ...], tuple[str, ...], KernelOptions] | None:
    """(balancers, faults, kernel options) when the CLI's --balancer asks for the side by
    side run (a list, or the kernel); None for one HAProxy or nginx; ValueError on bad input."""
    bals = parse_balancers(args.balancer)
    faults = tuple(x.strip() for x in args.fault.split(",") if x.strip())
    if not faults or any(f not in ("kill", "freeze", "none") for f in faults) or \
            ("none" in faults and len(faults) > 1):
        raise ValueError(f"--fault: kill, freeze, kill,freeze or none, not {args.fault!r}")
    if bals in (("haproxy",), ("nginx",)):
        if len(faults) > 1:
            raise ValueError("--fault kill,freeze needs the side by side run (--balancer kernel,...)")
        if args.readme:
            raise ValueError("--readme needs the side by side run (--balancer kernel,...)")
        return None
    try:
        ms = [x.strip() for x in args.probe.split(",")]
        probe = ProbeSpec(interval_s=float(ms[0]) / 1000, timeout_s=float(ms[1]) / 1000, failures=int(ms[2]))
        probe.validate()
        if len(ms) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"--probe: interval ms, time-out ms, failures (e.g. 100,200,2), not {args.probe!r}") from None
    if args.conntrack_max is not None and args.conntrack_max < 1024:
        raise ValueError("--conntrack-max must be >= 1024")
    bals = tuple(f"haproxy-{args.mode}" if b == "haproxy" else b for b in bals)
    return bals, tuple(f for f in faults if f != "none"), KernelOptions(args.pick, probe, args.conntrack_max)


def teardown_all() -> None:
    from .kernel_lb import teardown_all
    teardown_all()


def main_compare(args: Any, cfg: ScaleoutConfig, balancers: tuple[str, ...], faults: tuple[str, ...],
                 kopts: KernelOptions, prog: Callable[[dict[str, Any]], None]) -> int:
    """The CLI's side-by-side path (scaleout.main hands over when --balancer lists more
    than one, or the kernel)."""
    rep = run_compare(cfg, balancers, faults, kopts, prog)
    paths = write_outputs(rep, args.out, charts=not args.no_charts, readme=args.readme)
    print(summary_text(rep))
    print(f"\nwritten: {', '.join(paths.values())}")
    return 0
