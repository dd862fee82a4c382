"""What the measurements mean: stage summaries, the breaking point, degradation, the
Universal Scalability Law, the first bottleneck and the recovery time.

Every function here is pure (numbers in, numbers out) so each rule is unit-tested on
synthetic data; stages.py and monitor.py feed them real measurements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..config import FD_RESERVE

__all__ = ["Thresholds", "CONNECT_ERRORS", "TIMEOUT_ERRORS", "CONN_ENDING_ERRORS", "summarize_rows",
           "is_broken", "breaking_point", "latency_explosion", "degradation", "usl_fit", "usl_throughput",
           "first_bottleneck", "recovery_time", "cascade_seconds", "bisect_next", "bracket_text",
           "configured_limit", "server_cpu", "peak_text", "PLAN_RECOVERY_BAR_S"]

# Error classes of fastc1k.load. A connect failure is also counted in connects_failed;
# the others end an established connection (the client reconnects), so they are failed
# connections too. A 503 closes the connection (admission control: README table).
CONNECT_ERRORS = ("refused", "connect_timeout", "addrnotavail", "emfile")
TIMEOUT_ERRORS = ("connect_timeout", "read_timeout")
CONN_ENDING_ERRORS = ("reset", "read_timeout", "bad_response", "status_503")


@dataclass
class Thresholds:
    """The rules of the report, each a flag of the CLI."""
    break_error_rate: float = 0.5      # a stage whose requests (or connection attempts) fail more is broken
    break_p99_ms: float | None = 1000.0  # ... or whose p99 is over this (None: latency never breaks it)
    stop_error_rate: float = 0.9       # stop ramping past this
    explosion_factor: float = 2.0      # p99 grew this many times faster than clients: latency explosion
    nonlinear_ratio: float = 1.5       # mean degradation ratio over this: non-linear
    cpu: float = 0.95                  # fraction of the CPU allowance
    memory: float = 0.90               # fraction of the memory limit
    fds: float = 0.95                  # fraction of RLIMIT_NOFILE
    recovery_p99_ms: float = 100.0
    recovery_error_rate: float = 0.01
    recovery_hold_s: int = 3
    precision: float = 0.05            # bisect the breaking point until the bracket is this narrow
    conntrack: float = 0.95            # fraction of nf_conntrack_max


PLAN_RECOVERY_BAR_S = 30.0             # the plan's bar for recovery after a 2x blast


def _errsum(errors: Mapping[str, int], classes: Iterable[str]) -> int:
    return sum(errors.get(c, 0) for c in classes)


def summarize_rows(rows: Sequence[Mapping[str, Any]], clients: int) -> dict[str, Any]:
    """Counts and rates of a stage from its per-second timeline rows (latency comes from
    the merged histogram, added by the caller)."""
    errors: dict[str, int] = {}
    for r in rows:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    ok = sum(int(r.get("ok", 0)) for r in rows)
    n_err = sum(errors.values())
    attempts = ok + n_err
    secs = max(1, len(rows))
    connects_ok = sum(int(r.get("connects_ok", 0)) for r in rows)
    connects_failed = sum(int(r.get("connects_failed", 0)) for r in rows)
    conn_attempts = connects_ok + connects_failed
    # Connect errors are already in connects_failed; the others ended an established one.
    failed_conns = max(connects_failed, _errsum(errors, CONNECT_ERRORS)) + _errsum(errors, CONN_ENDING_ERRORS)
    opened = [int(r.get("connections_open", 0)) for r in rows]
    intended = [float(r["intended"]) for r in rows if r.get("intended") is not None]
    return {
        "clients": clients,
        "seconds": len(rows),
        "ok": ok,
        "errors": errors,
        "error_count": n_err,
        # Nothing answered at all (every request hung) is total failure, not 0 %.
        "error_rate": n_err / attempts if attempts else (1.0 if clients else 0.0),
        "throughput": ok / secs,
        "achieved_rate": attempts / secs,
        "intended_rate": (sum(intended) / len(intended)) if intended else None,
        "connects_ok": connects_ok,
        "connects_failed": connects_failed,
        "failed_connections": failed_conns,
        "connection_failure_rate": min(1.0, failed_conns / max(conn_attempts, failed_conns)) if failed_conns else 0.0,
        "refusal_rate": errors.get("refused", 0) / attempts if attempts else 0.0,
        "rejected_rate": errors.get("status_503", 0) / attempts if attempts else 0.0,
        "timeout_rate": _errsum(errors, TIMEOUT_ERRORS) / attempts if attempts else 0.0,
        "reset_rate": errors.get("reset", 0) / attempts if attempts else 0.0,
        "connections_open_mean": sum(opened) / len(opened) if opened else 0,
        "connections_open_max": max(opened) if opened else 0,
        "late_sends": sum(int(r.get("late_sends", 0) or 0) for r in rows),
    }


def server_cpu(samples: Sequence[Mapping[str, Any]], throughput: float) -> dict[str, Any]:
    """The server's CPU over a stage, from the monitor's samples inside it: mean cores used,
    the cores it was allowed, and CPU per answered request. A throughput beside its CPU says
    what bound it: a server well under its allowance was held back by something else (the
    load generator, on a shared host). The ksoftirqd threads' cores (host-wide; both
    directions of loopback traffic) are packet work outside the container's cgroup: the
    CPU per request is then given with them too."""
    used = [float(x["cpu_used"]) for x in samples if x.get("cpu_used") is not None]
    if len(used) < 2:
        return {}
    cores = sum(used) / len(used)
    allowed = [x["cpu_allowed"] for x in samples if x.get("cpu_allowed")]
    out = {"server_cpu": round(cores, 3), "server_cpu_allowed": min(allowed) if allowed else None,
           "cpu_us_per_request": round(cores / throughput * 1e6, 2) if throughput > 0 else None}
    ks = [float(x["ksoftirqd"]) for x in samples if x.get("ksoftirqd") is not None]
    if ks:
        k = sum(ks) / len(ks)
        out.update(kernel_outside_cores=round(k, 3),
                   cpu_us_per_request_with_kernel=round((cores + k) / throughput * 1e6, 2) if throughput > 0 else None)
    return out


def peak_text(stages: Sequence[Mapping[str, Any]]) -> str | None:
    """The highest stage throughput, where, and the server's CPU there (what bound it)."""
    if not stages:
        return None
    s = max(stages, key=lambda x: x["throughput"])
    txt = f"{s['throughput']:,.0f} req/s at {s['clients']:,} clients"
    if s.get("server_cpu") is not None:
        txt += f" (server CPU {s['server_cpu']:.2f}" + (f" of {s['server_cpu_allowed']:.2f} cores allowed"
                                                         if s.get("server_cpu_allowed") else " cores")
        txt += f", {s['cpu_us_per_request']:.1f} µs/request" if s.get("cpu_us_per_request") else ""
        if (s.get("kernel_outside_cores") or 0) >= 0.01:   # below: rounding noise, left to the JSON
            txt += f"; plus {s['kernel_outside_cores']:.2f} cores of ksoftirqd outside the container's cgroup (host-wide)"
            txt += (f", {s['cpu_us_per_request_with_kernel']:.1f} µs/request with it"
                    if s.get("cpu_us_per_request_with_kernel") else "")
        txt += ")"
    return txt


def is_broken(stage: Mapping[str, Any], th: Thresholds) -> list[str]:
    """The reasons a stage counts as broken (empty: it held).

    A server that keeps its first N clients fast but sheds every newer one (503 or
    refusal at max_connections, EMFILE) has a low per-request error rate, yet most of
    the stage's new clients never get served: so failed connection attempts count too,
    once they are more than a handful (5 % of the clients)."""
    why = []
    if stage["error_rate"] > th.break_error_rate:
        why.append(f"error rate {stage['error_rate']:.0%} > {th.break_error_rate:.0%}")
    fc = stage.get("failed_connections", 0)
    if stage.get("connection_failure_rate", 0) > th.break_error_rate and fc >= max(1, 0.05 * stage["clients"]):
        why.append(f"{stage['connection_failure_rate']:.0%} of connection attempts failed ({fc})")
    p99 = (stage.get("latency_ms") or {}).get("p99")
    if th.break_p99_ms is not None and p99 is not None and p99 > th.break_p99_ms:
        why.append(f"p99 {p99:.0f} ms > {th.break_p99_ms:.0f} ms")
    return why


def breaking_point(stages: Sequence[Mapping[str, Any]], th: Thresholds) -> dict[str, Any] | None:
    for i, s in enumerate(stages):
        why = is_broken(s, th)
        if why:
            return {"stage": i, "clients": s["clients"], "reasons": why,
                    "last_good_clients": stages[i - 1]["clients"] if i else None}
    return None


def bisect_next(last_good: int, first_broken: int, precision: float) -> int | None:
    """The next client count to probe between a stage that held and one that broke, or
    None once the bracket is within `precision` of the broken end (or no count is left)."""
    if first_broken - last_good <= max(1, precision * first_broken):
        return None
    mid = (last_good + first_broken) // 2
    return mid if last_good < mid < first_broken else None


def bracket_text(last_good: int | None, first_broken: int) -> str:
    if last_good is None:
        return f"breaks at {first_broken:,} clients or fewer (the first stage)"
    return f"breaks between {last_good:,} and {first_broken:,} clients"


def configured_limit(stage: Mapping[str, Any], max_connections: int | None, workers: int,
                     rejected: float | None = None, fd_limit: int | None = None) -> str | None:
    """A stage broken by the server's own admission cap rather than by a resource: its
    failures are mostly 503s, and the clients exceed max_connections x workers (or the
    server's fastc1k_rejected_max_connections_total moved during it: `rejected`). A cap
    that `max_connections auto` sized from the fd limit says so: that cap is the fd limit's."""
    errors = stage.get("errors") or {}
    n503 = errors.get("status_503", 0)
    failed = max(sum(errors.values()), stage.get("failed_connections", 0))
    if not n503 or n503 < 0.5 * failed:
        return None
    cap = max_connections * max(1, workers) if max_connections else None
    if rejected:
        why = f"{int(rejected):,} connections refused at the cap (fastc1k_rejected_max_connections_total)"
    elif cap and stage.get("clients", 0) > cap:
        why = f"{stage['clients']:,} clients > {cap:,} = max_connections x {max(1, workers)} worker(s)"
    else:
        return None
    where = f"max_connections={max_connections:,} per worker" if max_connections else "max_connections"
    if max_connections and fd_limit and max_connections == fd_limit - FD_RESERVE:
        where += f", sized from the fd limit {fd_limit:,} (max_connections auto)"
    return f"configured limit reached ({where}): {why}; {n503:,} requests answered 503"


def _p99(s: Mapping[str, Any]) -> float | None:
    return (s.get("latency_ms") or {}).get("p99")


def latency_explosion(stages: Sequence[Mapping[str, Any]], th: Thresholds) -> dict[str, Any] | None:
    """The first stage where p99 grew `explosion_factor` times faster than the clients."""
    for i in range(1, len(stages)):
        a, b = _p99(stages[i - 1]), _p99(stages[i])
        if not a or not b:
            continue
        growth = (b / a) / (stages[i]["clients"] / stages[i - 1]["clients"])
        if growth > th.explosion_factor:
            return {"stage": i, "clients": stages[i]["clients"], "p99_before_ms": a, "p99_ms": b,
                    "p99_growth_over_client_growth": growth}
    return None


def degradation(stages: Sequence[Mapping[str, Any]], th: Thresholds) -> dict[str, Any]:
    """Mean over consecutive stages of (p99 growth ratio) / (client growth ratio):
    1 = latency grows in proportion to clients (queueing on a saturated server), much
    less = headroom, > nonlinear_ratio = non-linear (the server degrades faster than load)."""
    ratios = []
    for i in range(1, len(stages)):
        a, b = _p99(stages[i - 1]), _p99(stages[i])
        if a and b and stages[i]["clients"] > stages[i - 1]["clients"]:
            ratios.append((b / a) / (stages[i]["clients"] / stages[i - 1]["clients"]))
    mean = sum(ratios) / len(ratios) if ratios else None
    return {"ratios": ratios, "mean_ratio": mean,
            "nonlinear": bool(mean is not None and mean > th.nonlinear_ratio)}


def usl_throughput(n: float, lam: float, sigma: float, kappa: float) -> float:
    """Gunther's Universal Scalability Law: X(N) = lam N / (1 + sigma (N-1) + kappa N (N-1))."""
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def _lstsq(rows: list[list[float]], y: list[float]) -> list[float] | None:
    """Least squares by the normal equations (small, well-scaled systems only)."""
    k = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(k)] + [sum(r[i] * v for r, v in zip(rows, y))]
         for i in range(k)]
    for c in range(k):                      # Gauss-Jordan with partial pivoting
        p = max(range(c, k), key=lambda r: abs(a[r][c]))
        if abs(a[p][c]) < 1e-300:
            return None
        a[c], a[p] = a[p], a[c]
        for r in range(k):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * z for x, z in zip(a[r], a[c])]
    return [a[i][k] / a[i][i] for i in range(k)]


def usl_fit(clients: Sequence[float], throughput: Sequence[float], min_points: int = 6) -> dict[str, Any] | None:
    """Fit sigma (contention), kappa (coherency) and lambda to (N, X) points.

    USL rearranges to a polynomial that is linear in its unknowns:
        N / X = 1/lam + (sigma/lam) (N-1) + (kappa/lam) N (N-1)
    so an ordinary least-squares fit finds them without an optimiser; a coefficient
    that comes out negative is physically meaningless and is refit as zero. Scaled by
    N_max so the normal equations stay well conditioned. None with < min_points points."""
    pts = [(float(n), float(x)) for n, x in zip(clients, throughput) if n > 0 and x > 0]
    if len(pts) < min_points:
        return None
    s = max(n for n, _ in pts)
    ns = [n for n, _ in pts]
    y = [n / x for n, x in pts]

    def solve(use_sigma: bool, use_kappa: bool) -> tuple[float, float, float] | None:
        cols = []
        for n in ns:
            row = [1.0]
            if use_sigma:
                row.append((n - 1) / s)
            if use_kappa:
                row.append(n * (n - 1) / (s * s))
            cols.append(row)
        sol = _lstsq(cols, y)
        if sol is None or sol[0] <= 0:
            return None
        a = sol[0]
        it = iter(sol[1:])
        b = next(it) / s if use_sigma else 0.0
        c = next(it) / (s * s) if use_kappa else 0.0
        return 1 / a, b / a, c / a

    fit = None
    for combo in ((True, True), (True, False), (False, True), (False, False)):
        fit = solve(*combo)
        if fit is not None and fit[1] >= 0 and fit[2] >= 0:
            break
        fit = None
    if fit is None:
        return None
    xs = [x for _, x in pts]

    def sse(f: tuple[float, float, float]) -> float:
        return sum((x - usl_throughput(n, *f)) ** 2 for n, x in zip(ns, xs))
    method = "linearised least squares"
    refined = _usl_refine(ns, xs, fit)
    if refined is not None and sse(refined) < sse(fit):
        fit, method = refined, "nonlinear least squares (scipy)"
    lam, sigma, kappa = fit
    mean = sum(xs) / len(xs)
    ss_tot = sum((x - mean) ** 2 for x in xs)
    ss_res = sse(fit)
    peak_n = math.sqrt((1 - sigma) / kappa) if kappa > 0 and sigma < 1 else None
    return {
        "lambda": lam, "sigma": sigma, "kappa": kappa,
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
        "peak_clients": peak_n,
        "peak_throughput": usl_throughput(peak_n, lam, sigma, kappa) if peak_n else None,
        "points": len(pts),
        "method": method,
        # sigma ~ 1: no gain from concurrency at all; the peak is below the first stage.
        "saturated_from_first_stage": bool(peak_n is not None and peak_n < min(ns)),
    }


def _usl_refine(ns: list[float], xs: list[float], start: tuple[float, float, float]):
    """Least squares on X itself (the linearised fit weighs the points unevenly, badly
    so when the server is saturated from the first stage), from several starts, with
    sigma, kappa >= 0. None without scipy."""
    try:
        import numpy as np
        from scipy.optimize import curve_fit
    except ImportError:
        return None
    n, x = np.asarray(ns, float), np.asarray(xs, float)
    best, best_sse = None, math.inf
    xmax = float(x.max())
    for p0 in (start, (xmax / n[0], 0.5, 1e-6), (xmax, 0.99, 1e-7), (xmax / n[0], 0.01, 1e-5)):
        p0 = (max(p0[0], 1e-9), min(max(p0[1], 0.0), 1.0), max(p0[2], 0.0))
        try:
            popt, _ = curve_fit(usl_throughput, n, x, p0=p0, bounds=([0, 0, 0], [np.inf, 1, np.inf]), maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        err = float(((x - usl_throughput(n, *popt)) ** 2).sum())
        if err < best_sse:
            best, best_sse = tuple(float(v) for v in popt), err
    return best


# --- bottleneck ------------------------------------------------------------------------

RESOURCES = ("cpu", "memory", "fds", "listen_overflows", "conntrack")
CPU_WINDOW = 5        # samples (0.5 s) averaged for the CPU rule
CPU_MIN_WORK = 0.25   # share of its allowance a server must use to be called CPU-bound


def first_bottleneck(samples: Sequence[Mapping[str, Any]], th: Thresholds) -> dict[str, Any] | None:
    """The first resource to reach its threshold, at which sample, with the evidence.

    A sample is a dict with t, clients, and (each optional) cpu_used, cpu_wait (cores
    queued for a CPU) / cpu_allowed (cores), rss / mem_limit (bytes), fds / fd_limit (per process: the fullest one), and
    listen_overflows (cumulative since the run started), oom_kills (since the start),
    conntrack_count / conntrack_max
    and conntrack_drop / conntrack_insert_failed (cumulative since the start). CPU must stay
    over its threshold for two consecutive (averaged) samples: one 100 ms sample can be a
    scheduling artefact.

    ListenOverflows is the namespace's counter: in the run's own namespace (own_netns) it
    is the run's; in the host's it counts every listener on the host, so it names the
    bottleneck only with evidence that this run caused it: the server's own listen queue
    full (listen_queue = [queued, backlog]) or an overflow rate over the last second far
    above the rate measured before the run (listen_overflows_baseline, per second)."""
    hot_cpu = 0
    hot_start: Mapping[str, Any] = {}
    recent: list[tuple[float, float]] = []
    overflow_at: list[tuple[float, int]] = []     # (t, cumulative overflows) over the last second
    for s in samples:
        hit: list[tuple[str, str]] = []
        cu, ca = s.get("cpu_used"), s.get("cpu_allowed")
        if cu is not None and ca:
            # Demand = time on a CPU + time runnable but waiting (queued on a shared host,
            # or throttled by a quota): a saturated server never idles, even when a busy
            # host gives it less than its allowance. Averaged over 0.5 s, since the
            # kernel credits waits in lumps; and only under load, doing real work (a
            # quarter of its allowance), so an idle server on a busy host is not "CPU".
            recent = (recent + [(cu, s.get("cpu_wait") or 0.0)])[-CPU_WINDOW:]
            cu = sum(x for x, _ in recent) / len(recent)
            wait = sum(w for _, w in recent) / len(recent)
            demand = cu + min(wait, ca)
            loaded = (s.get("clients") or 0) > 0 and cu >= CPU_MIN_WORK * ca
            hot_cpu = hot_cpu + 1 if loaded and demand >= th.cpu * ca else 0
            if hot_cpu == 1:
                hot_start = s
            if hot_cpu >= 2:
                why = f"server CPU {cu:.2f} of {ca:.2f} cores allowed ({cu / ca:.0%})"
                if wait >= 0.05:
                    why += (f", and runnable but waiting (throttled or queued for a CPU) {wait:.2f} cores' worth: "
                            f"it never idles")
                hit.append(("cpu", why))
        rss, lim = s.get("rss"), s.get("mem_limit")
        cg = s.get("cgroup_memory")           # what a cgroup limit is enforced against
        # The cgroup's figure where there is one: the processes' RSS sum counts pages they
        # share (a pre-fork server's) once per process, over the limit before the kernel is.
        mem = cg if cg is not None else rss
        if mem is not None and lim and mem >= th.memory * lim:
            what = "cgroup memory (RSS, page cache, kernel)" if cg is not None else "server RSS"
            hit.append(("memory", f"{what} {mem / 2**20:.1f} MiB of {lim / 2**20:.1f} MiB limit "
                                  f"({mem / lim:.0%} >= {th.memory:.0%})"))
        if s.get("oom_kills"):   # past the limit, not near it: the kernel killed a process
            hit.append(("oom_kill", f"OOM kill: the kernel killed {s['oom_kills']} process(es) at the memory limit"
                                    + (f" of {lim / 2**20:.0f} MiB" if lim else "")
                                    + f" (the cgroup's oom_kill count: {s['oom_kills']})"))
        fds, fl = s.get("fds"), s.get("fd_limit")
        if fds is not None and fl and fds >= th.fds * fl:
            hit.append(("fds", f"server process holds {fds} fds of its limit {fl} ({fds / fl:.0%} >= {th.fds:.0%})"))
        lo = s.get("listen_overflows") or 0
        overflow_at = [(tt, v) for tt, v in overflow_at if tt >= (s.get("t") or 0) - 1.0] + [(s.get("t") or 0, lo)]
        if lo:
            why = _overflows_caused(s, lo, overflow_at)
            if why:
                hit.append(("listen_overflows", why))
        cc, cm = s.get("conntrack_count"), s.get("conntrack_max")
        drops = (s.get("conntrack_drop") or 0) + (s.get("conntrack_insert_failed") or 0)
        if cm and cc is not None and (cc >= th.conntrack * cm or drops):
            hit.append(("conntrack", f"conntrack table {cc:,} of nf_conntrack_max {cm:,} ({cc / cm:.0%})"
                        + (f", {s.get('conntrack_drop') or 0:,} packets dropped and {s.get('conntrack_insert_failed') or 0:,}"
                           " insert failures (/proc/net/stat/nf_conntrack): new connections' SYNs vanish and "
                           "clients time out while the server idles" if drops else "")))
        if hit:
            # Several in the same 100 ms sample: the one closest to (or furthest past) its limit.
            name, why = hit[0] if len(hit) == 1 else max(hit, key=lambda h: _pressure(h[0], s))
            if name == "cpu":
                s = hot_start   # when the saturation began, not when it was confirmed
            return {"resource": name, "t": s.get("t"), "clients": s.get("clients"), "evidence": why,
                    "also": [h[0] for h in hit if h[0] != name], "sample": dict(s)}
    return None


def _overflows_caused(s: Mapping[str, Any], lo: int, window: list[tuple[float, int]]) -> str | None:
    """The evidence that this run's listener overflowed (None: the counter may be other
    processes' on a shared host)."""
    what = f"{lo:,} listen queue overflows (ListenOverflows, /proc/net/netstat"
    if s.get("own_netns"):
        return what + ", the run's own network namespace)"
    q = s.get("listen_queue")
    if q and q[1] and q[0] >= q[1]:
        return what + f", host-wide) with the server's own listen queue full ({q[0]} of {q[1]})"
    base = s.get("listen_overflows_baseline")
    span = window[-1][0] - window[0][0]
    if base is not None and span >= 0.5:
        rate = (window[-1][1] - window[0][1]) / span
        if rate > 2 * base + 1:
            return what + f", host-wide) at {rate:,.0f}/s against {base:,.1f}/s before the run"
    return None


def _pressure(name: str, s: Mapping[str, Any]) -> float:
    if name == "oom_kill":
        return 2.0
    if name in ("cpu", "conntrack"):
        return 1.0
    if name == "memory":
        cg = s.get("cgroup_memory")
        return (cg if cg is not None else s.get("rss") or 0) / s["mem_limit"]
    if name == "fds":
        return s["fds"] / s["fd_limit"]
    return 1.0


# --- recovery ---------------------------------------------------------------------------

def _row_ok(r: Mapping[str, Any], th: Thresholds) -> bool:
    ok = int(r.get("ok", 0))
    err = sum((r.get("errors") or {}).values())
    if ok + err == 0:
        return False
    p99 = r.get("p99_us")
    return err / (ok + err) < th.recovery_error_rate and p99 is not None and p99 / 1000 < th.recovery_p99_ms


def recovery_time(rows_after_drop: Sequence[Mapping[str, Any]], th: Thresholds,
                  resolution: float = 1.0) -> dict[str, Any]:
    """The first instant after the drop from which p99 < recovery_p99_ms and errors <
    recovery_error_rate hold, row after row, for `recovery_hold_s`. rows_after_drop start
    at the drop, one per `resolution` seconds (the farm's 100 ms rows: resolution 0.1), so
    the instant is known to +- one row: with 1 s rows, 0 means "healthy within the first
    second" ("< 1 s"); with 100 ms rows, 0.3 means between 0.2 and 0.4 s. The plan's bar
    (30 s) is given beside it."""
    need = max(1, round(th.recovery_hold_s / resolution))
    observed = round(len(rows_after_drop) * resolution, 3)
    out = {"resolution_s": resolution, "observed_s": observed, "bar_s": PLAN_RECOVERY_BAR_S}
    run = 0
    for i, r in enumerate(rows_after_drop):
        run = run + 1 if _row_ok(r, th) else 0
        if run >= need:
            k = i - need + 1
            if resolution >= 1:
                return {**out, "recovered": True, "seconds": k, "label": f"< {k + 1} s"}
            s = round(k * resolution, 3)
            label = (f"within {resolution * 1000:.0f} ms of the drop" if k == 0 else
                     f"{s:.1f} s ± {resolution * 1000:.0f} ms")
            return {**out, "recovered": True, "seconds": s, "label": label}
    return {**out, "recovered": False, "seconds": None, "label": f"did not recover within {observed:g} s"}


def cascade_seconds(rows_next: Sequence[Mapping[str, Any]]) -> int:
    """Errors that outlive the stage that caused them: leading seconds of the next stage
    whose error rate is over twice its own settled rate (its second half) and over 1 %."""
    def rate(rs: Sequence[Mapping[str, Any]]) -> float:
        ok = sum(int(r.get("ok", 0)) for r in rs)
        err = sum(sum((r.get("errors") or {}).values()) for r in rs)
        return err / (ok + err) if ok + err else 0.0
    if len(rows_next) < 2:
        return 0
    settled = rate(rows_next[len(rows_next) // 2:])
    n = 0
    for r in rows_next[: len(rows_next) // 2]:
        e = rate([r])
        if e > 0.01 and e > 2 * settled:
            n += 1
        else:
            break
    return n
