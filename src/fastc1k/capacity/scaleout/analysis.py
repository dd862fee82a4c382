"""The scale-out figures from a run's results: what bounded each peak stage, the fault's
cost and timing, and across replica counts the efficiency, the USL fit and the verdict.
Pure functions of dicts (tested without running anything)."""
from __future__ import annotations

from typing import Any

from .. import analysis as A
from .config import ScaleoutConfig

__all__ = ["bound_of", "analyse_fault", "analyse"]


def bound_of(stage: dict[str, Any], n: int, quota: float | None, lb_cores: float, ncpu: int,
             loadgen_procs: int, lb_name: str = "balancer") -> dict[str, Any]:
    """What bounded the throughput of this (peak) stage: the resource closest to (or
    past) its ceiling, with every utilisation as evidence."""
    c = stage.get("cost") or {}
    util = {}
    if c.get("balancer_cores") is not None:
        util["balancer"] = (c["balancer_cores"] / lb_cores, f"{lb_name} {c['balancer_cores']:.2f} of {lb_cores:g} core(s)")
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
    what = {"balancer": "the balancer's single core" if lb_name == "balancer" else f"the {lb_name}",
            "replicas": "the replicas' CPU quota",
            "host": "the host's CPUs (balancer, replicas and load generator share them)",
            "loadgen": "the load generator"}[name]
    if name == "host" and others is not None and others >= 0.25 * ncpu:
        what = f"the host's CPUs, {others:.2f} of {ncpu} taken by other processes (a busy machine)"
    return {"resource": name if ratio >= 0.85 else None,
            "label": what if ratio >= 0.85 else "nothing saturated (latency bound: queueing at the p99 threshold)",
            "utilisation": {k: round(v[0], 3) for k, v in util.items()},
            "evidence": "; ".join(v[1] for v in util.values())}


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
        # the reference load itself (a bisection probe of the first count), else the first
        # stage or probe above it: p99 grows with clients, so that p99 is an upper bound
        pool = sorted(ss + st.get("probes", []), key=lambda s: s["clients"])
        at_ref = next((s for s in pool if s["clients"] == ref_clients), None) or \
            next((s for s in pool if ref_clients is not None and s["clients"] > ref_clients), None)
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
            "p99_reference_clients": at_ref["clients"] if at_ref else None,
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
