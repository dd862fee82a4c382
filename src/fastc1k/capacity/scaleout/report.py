"""The scale-out report: the terminal summary, the scaling and fault charts, the JSON and
the HTML page (over the capacity report's shared parts)."""
from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

from .. import analysis as A
from ..report import chart_stages, fmt_num, html_opening, png, pyplot, stage_table, write_json

__all__ = ["summary_text", "absorbed", "chart_scaling", "chart_fault", "write_reports"]


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
        out.append(f"{r['replicas']:>8} {brk:>9} {fmt_num(r['max_throughput'], '{:.0f}'):>10} "
                   f"{fmt_num(r['efficiency'], '{:.2f}'):>10} {fmt_num(r['p99_at_reference_ms']):>12} "
                   f"{(r['recovery_label'] or '-'):>10} {fmt_num(r['balancer_us_per_request'], '{:.1f}'):>9}  "
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
                       f"{fmt_num(share * 100 if share is not None else None, '{:.3f}')}% of the stage's "
                       f"{f['stage_requests']} (goal < 1%)")
            if not f.get("polls"):
                out.append(f"  {c['balancer']['kind']} has no active health check or stats socket: routing around "
                           f"the victim is passive (proxy_next_upstream), its timing is not measured")
            out.append(f"  health check (inter {f['health_check']['inter_ms']} ms, fall {f['health_check']['fall']}):"
                       f" first failed check after {fmt_num(f['check_failed_s'], '{:.2f}')} s, marked DOWN after "
                       f"{fmt_num(f['marked_down_s'], '{:.2f}')} s; last second with errors ends "
                       f"{fmt_num(f['last_error_s'], '{:.1f}')} s after the fault")
            out.append(f"  throughput {fmt_num(f['throughput_before'], '{:.0f}')} -> {fmt_num(f['throughput_after'], '{:.0f}')}"
                       f" req/s ({f.get('stall_s', 0)} s under a quarter of it), p99 {fmt_num(f['p99_before_ms'])} -> "
                       f"{fmt_num(f['p99_after_ms'])} ms; "
                       + absorbed(f)
                       + f"; recovery {f['recovery']['label']}")
    out.append("")
    out.append(f"elapsed {rep['elapsed_s']:.0f} s")
    return "\n".join(out)


def absorbed(f: dict[str, Any]) -> str:
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
    rows = [r for r in rep["analysis"]["rows"] if r["max_throughput"]]
    if not rows:
        return None
    plt = pyplot()
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
    return png(fig)


def chart_fault(rep: dict[str, Any]) -> bytes | None:
    f = rep.get("fault")
    if not f or not f.get("rows"):
        return None
    plt = pyplot()
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
    return png(fig)


def write_reports(rep: dict[str, Any], out_dir: str, charts: bool = True, prefix: str = "scaleout-report"
                  ) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, prefix + ".json"), "html": os.path.join(out_dir, prefix + ".html")}
    write_json(rep, paths["json"])
    drawn: dict[str, bytes] = {}
    why = None
    if charts:
        try:
            pyplot()
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
