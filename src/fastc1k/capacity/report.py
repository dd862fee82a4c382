"""The report: capacity-report.json (everything), a terminal summary, one self-contained
capacity-report.html with its charts embedded as base64 PNGs, and the same PNGs as
files for the README.

Charts need matplotlib (the `report` extra); without it the JSON, the summary and an
HTML report with tables only are still written, and the HTML says why it has no charts.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any

from . import analysis as A

__all__ = ["write_json", "summary_text", "render_charts", "write_html", "write_all", "CHARTS", "stage_table",
           "chart_stages", "html_opening", "pyplot", "png"]

CHARTS = ("stages", "timeline", "resources", "recovery", "versus")
_PHASE_COLOURS = {"stages": "#4c72b0", "probe": "#937860", "ramp": "#55a868", "blast": "#c44e52",
                  "recovery": "#8172b2"}


def fmt_num(x: Any, fmt: str = "{:.1f}", none: str = "-") -> str:
    """A figure for a table cell: `none` where it was not measured."""
    return none if x is None else fmt.format(x)


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")


# --------------------------------------------------------------------------- terminal

def stage_table(stages: list[dict[str, Any]]) -> list[str]:
    head = (f"{'clients':>8} {'req/s':>9} {'err%':>6} {'conn fail':>9} {'refused':>7} {'timeout':>7} "
            f"{'avg':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'p99.9':>8} {'cascade':>7}")
    lines = [head + "   (latency in ms)"]
    for s in stages:
        lat = s.get("latency_ms") or {}
        lines.append(
            f"{s['clients']:>8} {s['throughput']:>9.0f} {100 * s['error_rate']:>6.1f} {s['failed_connections']:>9} "
            f"{100 * s['refusal_rate']:>6.1f}% {100 * s['timeout_rate']:>6.1f}% {fmt_num(lat.get('avg')):>8} "
            f"{fmt_num(lat.get('p50')):>8} {fmt_num(lat.get('p95')):>8} {fmt_num(lat.get('p99')):>8} {fmt_num(lat.get('p999')):>8} "
            f"{fmt_num(s.get('cascade_s'), '{}s'):>7}" + ("  BROKEN" if s.get("broken") else ""))
    return lines


def summary_text(report: dict[str, Any]) -> str:
    """The terminal summary: what broke, where, why, how fast it came back."""
    r = report
    srv = r.get("server") or {}
    out = [f"fastc1k capacity report: {r['target']}"
           + (f" (fastc1k {srv['engine']} engine, {srv['workers']} worker(s))" if "engine" in srv else
              f" (server pid {srv['pid']})" if "pid" in srv else " (server not monitored: no --server-pid)")]
    rt = r.get("runtime") or {}
    if rt.get("name") == "podman":
        how = (f"-p {rt['url'].split('//')[1]} -> 8080: bridge, DNAT, conntrack" if rt.get("network") == "publish"
               else "--network host")
        out.append(f"runtime: podman, image {rt['image']} {rt['image_id'][:12]}, {how}")
        out.append("limits applied: " + ", ".join(f"{k}={v / 2**20:g}M" if k == "memory" else f"{k}={v}"
                                                  for k, v in rt["applied"].items()))
        out += [f"limit refused: {x}" for x in rt.get("refused") or []]
        if rt.get("conntrack"):
            out.append(rt["conntrack"])
    elif rt.get("name") == "kernel":
        out.append("runtime: kernel parts (cgroup, RLIMIT_NOFILE, network namespace)")
    if rt.get("chosen"):
        out.append(rt["chosen"])
    if r.get("oom_kills"):
        at = r.get("oom_at") or {}
        lim = (r.get("container") or {}).get("applied", {}).get("memory")
        out.append(f"OOM kill: {r['oom_kills']} process(es) killed at the memory limit"
                   + (f" of {lim / 2**20:.0f} MiB" if lim else "") + " (the cgroup's oom_kill count)"
                   + (f", first at {at['clients']} clients ({at['t']:.1f} s into the run)" if at else ""))
    c = r.get("container") or {}
    if c.get("applied") and rt.get("name") != "podman":
        out.append("container: " + ", ".join(f"{k}={v}" for k, v in c["applied"].items())
                   + (f" (cgroup {c['cgroup']})" if c.get("cgroup") and ("cpus" in c["applied"] or "memory" in c["applied"]) else ""))
    if c.get("netns"):
        sc = ", ".join(f"{k}={v}" for k, v in (c.get("sysctls") or {}).items())
        out.append("network: own namespace" + (f" with {sc}" if sc else "") + " (kernel counters are this run's alone)")
    for n in r.get("notes", []):
        out.append(f"note: {n}")
    st = r["phases"].get("stages")
    if st:
        out.append("")
        out.append("1. Breaking point")
        out += ["  " + ln for ln in stage_table(st["stages"])]
        if st.get("probes"):
            out.append("  bisection probes:")
            out += ["  " + ln for ln in stage_table(st["probes"])[1:]]
        bp = st["breaking_point"]
        if bp:
            out.append(f"  breaking point: {bp.get('text') or str(bp['clients']) + ' clients'} ({'; '.join(bp['reasons'])})"
                       + (f"; bisected to {100 * bp['precision']:g} % in {bp['probes']} probes" if bp.get("probes") else ""))
            if bp.get("configured_limit"):
                out.append(f"  {bp['configured_limit']}: the server's own cap, not a limit of the container")
        else:
            out.append(f"  no breaking point up to {st['stages'][-1]['clients']} clients ({st['stop_reason']})")
        if st["stages"]:
            out.append(f"  peak: {A.peak_text(st['stages'])}")
        ex = st.get("latency_explosion")
        if ex:
            out.append(f"  latency explosion at {ex['clients']} clients: p99 {ex['p99_before_ms']:.1f} -> "
                       f"{ex['p99_ms']:.1f} ms ({ex['p99_growth_over_client_growth']:.1f}x the client growth)")
        d = st["degradation"]
        if d["mean_ratio"] is not None:
            out.append(f"  degradation: p99 growth / client growth = {d['mean_ratio']:.2f} on average "
                       f"({'non-linear' if d['nonlinear'] else 'linear or better'})")
        u = st.get("usl")
        if u:
            if u.get("saturated_from_first_stage"):
                peak = f"saturated from the first stage (peak {u['peak_throughput']:.0f} req/s below it)"
            elif u.get("peak_clients"):
                peak = f"predicted peak {u['peak_throughput']:.0f} req/s at {u['peak_clients']:.0f} clients"
            else:
                peak = "no peak predicted (kappa = 0)"
            out.append(f"  USL fit: sigma={u['sigma']:.4g} kappa={u['kappa']:.3g} lambda={u['lambda']:.1f}, {peak}"
                       + (f", R^2={u['r2']:.2f}" if u.get("r2") is not None else ""))
        else:
            out.append("  USL fit: needs >= 6 stages with throughput")
    rp = r["phases"].get("ramp")
    if rp:
        out.append("")
        out.append(f"2. Resource exhaustion (0 -> {rp['clients']} clients in {rp['steps']} steps over "
                   f"{rp['steps'] * rp['step_s']:.0f} s; {rp.get('rate_how') or 'closed loop'})")
        b = rp.get("bottleneck")
        if b:
            out.append(f"  first bottleneck: {b['resource'].upper()} at {b['clients']} clients: {b['evidence']}")
            if b.get("also"):
                out.append(f"  (in the same sample: {', '.join(b['also'])})")
        else:
            out.append("  no resource reached its threshold (CPU 95%, memory 90%, fds 95%, listen overflow)")
        pk = rp.get("peaks") or {}
        if pk:
            out.append("  peaks: " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    rc = r["phases"].get("recovery")
    if rc:
        out.append("")
        b = rc["blast"]
        errs = ", ".join(f"{k} {v}" for k, v in sorted((b.get("errors") or {}).items(), key=lambda kv: -kv[1]))
        out.append(f"3. Recovery: {rc['blast_clients']} clients for {rc['blast_s']} s (error rate "
                   f"{100 * b['error_rate']:.1f}%{': ' + errs if errs else ''}; {b.get('ok', 0)} answered, "
                   f"p99 {fmt_num(b['latency_ms'].get('p99'))} ms), then {rc['recovery_clients']} clients")
        rec = rc["recovery"]
        out.append(f"  recovery (p99 < {r['thresholds']['recovery_p99_ms']:g} ms and errors < "
                   f"{100 * r['thresholds']['recovery_error_rate']:g}% for {r['thresholds']['recovery_hold_s']} s, "
                   f"timed on {1000 * rec.get('resolution_s', 1):.0f} ms rows): "
                   + (f"{rec['label']} (the plan's bar: {rec.get('bar_s', 30):g} s; goal ≤ 1 s)" if rec["recovered"]
                      else rec["label"].upper()))
        if rc.get("note"):
            out.append(f"  note: {rc['note']}")
    if r.get("versus"):
        out.append("")
        out += versus_text(r)
    out.append("")
    out.append(f"elapsed {r['elapsed_s']:.0f} s")
    return "\n".join(out)


# --------------------------------------------------------------------------- versus

def _server_label(report: dict[str, Any]) -> str:
    srv = report.get("server") or {}
    return f"fastc1k ({srv['engine']} engine)" if "engine" in srv else srv.get("name", "server")


def _figures(phases: dict[str, Any]) -> dict[str, str]:
    """One server's answers, as the side-by-side table shows them."""
    st, rp, rc = phases.get("stages") or {}, phases.get("ramp") or {}, phases.get("recovery") or {}
    bp = st.get("breaking_point")
    out = {}
    if st:
        out["breaking point"] = ((bp.get("text") or f"{bp['clients']:,} clients") + f" ({'; '.join(bp['reasons'])})"
                                 + (f"; {bp['configured_limit']}" if bp.get("configured_limit") else "")
                                 if bp else f"none up to {st['stages'][-1]['clients']:,} clients")
        out["peak throughput"] = A.peak_text(st["stages"]) or "-"
        out["p99 by clients (ms)"] = ", ".join(f"{s['clients']:,}: {fmt_num((s.get('latency_ms') or {}).get('p99'))}"
                                               for s in st["stages"])
    if rp:
        b = rp.get("bottleneck")
        out["first bottleneck"] = f"{b['resource']} at {b['clients']:,} clients: {b['evidence']}" if b else "none reached"
    if rc:
        rec = rc["recovery"]
        out["recovery"] = rec["label"] + (f" (blast {rc['blast_clients']:,}, then {rc['recovery_clients']:,})")
    return out


def versus_rows(report: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(server names, [(figure, [value per server])]) for fastc1k and each --versus server."""
    runs = [(_server_label(report), report["phases"])] + [
        (name, v.get("phases") or {}) for name, v in (report.get("versus") or {}).items()]
    figs = [_figures(ph) for _, ph in runs]
    keys = [k for k in ("breaking point", "peak throughput", "p99 by clients (ms)", "first bottleneck", "recovery")
            if any(k in f for f in figs)]
    return [n for n, _ in runs], [(k, [f.get(k, "-") for f in figs]) for k in keys]


def versus_text(report: dict[str, Any]) -> list[str]:
    names, rows = versus_rows(report)
    out = [f"Side by side, same plan, same container, same run: {' vs '.join(names)}"]
    for k, vals in rows:
        out.append(f"  {k}:")
        out += [f"    {n:<24} {v}" for n, v in zip(names, vals)]
    for name, v in (report.get("versus") or {}).items():
        if v.get("error"):
            out.append(f"  {name}: {v['error']}")
    return out


def chart_versus(report: dict[str, Any]) -> bytes | None:
    runs = [(_server_label(report), report["phases"].get("stages"))] + [
        (n, (v.get("phases") or {}).get("stages")) for n, v in (report.get("versus") or {}).items()]
    runs = [(n, st) for n, st in runs if st and st.get("stages")]
    if len(runs) < 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, st in runs:
        ss = st["stages"] + st.get("probes", [])
        ss = sorted(ss, key=lambda s: s["clients"])
        x = [s["clients"] for s in ss]
        axes[0].plot(x, [(s["latency_ms"] or {}).get("p99") for s in ss], "o-", label=name)
        axes[1].plot(x, [s["throughput"] for s in ss], "o-", label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("p99, ms")
    axes[1].set_ylabel("throughput, req/s")
    for ax in axes:
        ax.set_xlabel("clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Same plan, same container: " + " vs ".join(n for n, _ in runs), fontsize=10)
    fig.tight_layout()
    return png(fig)


# --------------------------------------------------------------------------- charts

def pyplot():
    """matplotlib's pyplot on the Agg backend (ImportError without the report extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _shade(ax, windows, phases=("stages", "probe", "ramp", "blast", "recovery"), labels=True) -> None:
    for w in windows:
        if w["phase"] not in phases:
            continue
        ax.axvspan(w["t0"], w["t1"], color=_PHASE_COLOURS[w["phase"]], alpha=0.06)
        ax.axvline(w["t0"], color=_PHASE_COLOURS[w["phase"]], lw=0.6, alpha=0.5)
        if labels:
            ax.text(w["t0"], 1.0, " " + w["label"], transform=ax.get_xaxis_transform(), fontsize=6,
                    va="top", rotation=90, color=_PHASE_COLOURS[w["phase"]])


def _segments(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows split where the phase changes or seconds are missing (no line across a gap)."""
    out: list[list[dict[str, Any]]] = []
    for r in rows:
        if out and out[-1][-1]["phase"] == r["phase"] and r["t"] - out[-1][-1]["t"] < 1.5:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def chart_stages(report: dict[str, Any]) -> bytes | None:
    st = report["phases"].get("stages")
    if not st or not st["stages"]:
        return None
    plt = pyplot()
    ss = st["stages"]
    x = [s["clients"] for s in ss]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    p99 = [(s["latency_ms"] or {}).get("p99") for s in ss]
    p50 = [(s["latency_ms"] or {}).get("p50") for s in ss]
    axes[0].plot(x, p99, "o-", label="p99")
    axes[0].plot(x, p50, "s--", label="p50", alpha=0.7)
    axes[0].set_ylabel("latency, ms")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [s["throughput"] for s in ss], "o-", label="measured")
    u = st.get("usl")
    if u:
        from .analysis import usl_throughput
        xs = [x[0] + (x[-1] - x[0]) * i / 100 for i in range(101)]
        axes[1].plot(xs, [usl_throughput(n, u["lambda"], u["sigma"], u["kappa"]) for n in xs], ":",
                     label=f"USL fit (sigma={u['sigma']:.3g}, kappa={u['kappa']:.2g})")
    axes[1].set_ylabel("throughput, req/s")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [100 * s["error_rate"] for s in ss], "o-", color="#c44e52", label="requests failed")
    axes[2].plot(x, [100 * s["connection_failure_rate"] for s in ss], "x--", color="#dd8452",
                 label="connection attempts failed")
    axes[2].set_ylabel("error rate, %")
    axes[2].set_xlabel("clients")
    axes[2].legend(fontsize=8)
    bp = st.get("breaking_point")
    for ax in axes:
        ax.grid(alpha=0.3)
        if bp:
            ax.axvline(bp["clients"], color="#c44e52", ls="--", lw=1)
    axes[0].set_title("Breaking point: clients against p99, throughput and errors"
                      + (f" (broke at {bp['clients']})" if bp else ""))
    return png(fig)


def chart_timeline(report: dict[str, Any]) -> bytes | None:
    rows = report.get("timeline") or []
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    ax2 = axes[0].twinx()
    for j, seg in enumerate(_segments(rows)):
        t = [r["t"] + 0.5 for r in seg]
        lab = (lambda s: s) if j == 0 else (lambda s: None)
        axes[0].plot(t, [r["ok"] for r in seg], ".-", color="C0", lw=0.8, label=lab("ok req/s"))
        ax2.plot(t, [r["clients"] for r in seg], color="grey", lw=0.8, alpha=0.7, drawstyle="steps-mid")
        axes[1].plot(t, [(r["p99_us"] or 0) / 1000 for r in seg], ".-", color="C0", lw=0.8, label=lab("p99"))
        axes[1].plot(t, [(r["p50_us"] or 0) / 1000 for r in seg], ".-", color="C1", lw=0.8, alpha=0.6,
                     label=lab("p50"))
        errs = [sum(r["errors"].values()) for r in seg]
        axes[2].plot(t, [100 * e / (e + r["ok"]) if e + r["ok"] else 0 for e, r in zip(errs, seg)], ".-",
                     color="#c44e52", lw=0.8)
    axes[0].set_ylabel("req/s")
    ax2.set_ylabel("clients (grey)")
    axes[1].set_yscale("symlog", linthresh=1)
    axes[1].set_ylabel("latency, ms")
    axes[1].legend(fontsize=8)
    axes[2].set_ylabel("errors, %")
    axes[2].set_xlabel("seconds since the run started")
    for i, ax in enumerate(axes):
        _shade(ax, report.get("windows", []), labels=(i == 0))
        ax.grid(alpha=0.3)
    axes[0].set_title("Per-second timeline (shaded: stages, ramp, blast, recovery)")
    return png(fig)


def chart_resources(report: dict[str, Any]) -> bytes | None:
    sm = [s for s in report.get("samples") or [] if "cpu_used" in s or "listen_overflows" in s]
    if not sm:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    t = [s["t"] for s in sm]
    have = [s for s in sm if "cpu_used" in s]
    th = [s["t"] for s in have]
    if have:
        axes[0].plot(th, [s["cpu_used"] for s in have], lw=0.8, label="CPU used")
        axes[0].plot(th, [s["cpu_used"] + (s.get("cpu_wait") or 0) for s in have], lw=0.6, alpha=0.6,
                     label="used + queued for a CPU")
        axes[0].plot(th, [s["cpu_allowed"] for s in have], "k--", lw=1, label="allowed")
        axes[1].plot(th, [s["rss"] / 2**20 for s in have], lw=0.8, label="RSS")
        lim = [s.get("mem_limit") for s in have]
        if report.get("container", {}).get("applied", {}).get("memory"):
            axes[1].plot(th, [x / 2**20 for x in lim], "k--", lw=1, label="limit")
        axes[2].plot(th, [s.get("fds") or 0 for s in have], lw=0.8, label="fds (fullest process)")
        axes[2].plot(th, [s.get("fd_limit") or 0 for s in have], "k--", lw=1, label="fd limit")
    axes[0].set_ylabel("cores")
    axes[1].set_ylabel("MiB")
    axes[2].set_ylabel("fds")
    axes[3].plot(t, [s.get("listen_overflows", 0) for s in sm], lw=0.8, label="ListenOverflows")
    axes[3].plot(t, [s.get("listen_drops", 0) for s in sm], lw=0.8, ls="--", label="ListenDrops")
    axes[3].plot(t, [s.get("tcp_abort_on_timeout", 0) + s.get("tcp_abort_on_memory", 0) for s in sm], lw=0.8,
                 ls=":", label="TCPAbortOnTimeout+Memory")
    axes[3].set_ylabel("kernel (cumulative)")
    axes[3].set_xlabel("seconds since the run started")
    b = (report["phases"].get("ramp") or {}).get("bottleneck")
    for i, ax in enumerate(axes):
        _shade(ax, report.get("windows", []), labels=(i == 0))
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        if b:
            ax.axvline(b["t"], color="#c44e52", lw=1.2)
    axes[0].set_title("Server resources against their limits"
                      + (f" (first bottleneck: {b['resource']} at {b['clients']} clients)" if b else ""))
    return png(fig)


def chart_recovery(report: dict[str, Any]) -> bytes | None:
    rc = report["phases"].get("recovery")
    if not rc:
        return None
    rows = rc.get("fine") or []     # 100 ms rows, s = seconds from the drop
    if not rows:
        return None
    plt = pyplot()
    th = report["thresholds"]
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    x = [r["s"] + 0.05 for r in rows]
    axes[0].plot(x, [r["p99_ms"] or 0 for r in rows], ".-", lw=0.8, label="p99 per 100 ms")
    axes[0].axhline(th["recovery_p99_ms"], color="k", ls="--", lw=1, label=f"{th['recovery_p99_ms']:g} ms")
    axes[0].set_yscale("symlog", linthresh=1)
    axes[0].set_ylabel("p99, ms")
    axes[1].plot(x, [100 * r["errors"] / (r["errors"] + r["ok"]) if r["errors"] + r["ok"] else 0 for r in rows],
                 ".-", lw=0.8, color="#c44e52", label="errors per 100 ms")
    axes[1].axhline(100 * th["recovery_error_rate"], color="k", ls="--", lw=1)
    axes[1].set_ylabel("errors, %")
    axes[1].set_xlabel("seconds since the drop to %d clients" % rc["recovery_clients"])
    rec = rc["recovery"]
    for ax in axes:
        ax.axvspan(min(x) - 0.05, 0, color=_PHASE_COLOURS["blast"], alpha=0.08)
        ax.axvline(0, color="k", lw=1)
        if rec["recovered"]:
            ax.axvline(rec["seconds"], color="#55a868", lw=1.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"Recovery after {rc['blast_clients']} clients: {rec['label']}")
    return png(fig)


def render_charts(report: dict[str, Any]) -> tuple[dict[str, bytes], str | None]:
    """{name: png} and, when charts could not be drawn, why."""
    try:
        pyplot()
    except ImportError:
        return {}, "matplotlib is not installed (pip install 'fastc1k[report]'): no charts"
    out = {}
    for name, fn in zip(CHARTS, (chart_stages, chart_timeline, chart_resources, chart_recovery, chart_versus)):
        png = fn(report)
        if png:
            out[name] = png
    return out, None


# --------------------------------------------------------------------------- html

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}tr.broken td{background:#fbe9e9}pre{background:#f7f7f7;padding:1em;font-size:12px;
overflow-x:auto}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}.note{color:#8a5a00}"""


def html_opening(title: str, facts: list[str], notes: list[str], summary: str, why_none: str | None) -> list[str]:
    """The top of a self-contained report page: title, facts line, notes, the terminal summary."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
             f"<p>{' &middot; '.join(e(f) for f in facts)}</p>"]
    parts += [f"<p class='note'>note: {e(n)}</p>" for n in notes]
    parts.append(f"<h2>Summary</h2><pre>{e(summary)}</pre>")
    if why_none:
        parts.append(f"<p class='note'>{e(why_none)}</p>")
    return parts


def write_html(report: dict[str, Any], path: str, charts: dict[str, bytes], why_none: str | None) -> None:
    e = html.escape
    parts = html_opening("fastc1k capacity report",
                         [report["target"], report["started"], report["host"]["summary"]],
                         report.get("notes", []), summary_text(report), why_none)
    titles = {"stages": "1. Breaking point", "timeline": "Timeline", "resources": "2. Resources",
              "recovery": "3. Recovery", "versus": "Side by side"}
    st = report["phases"].get("stages")
    for name in CHARTS:
        if name == "timeline" and st:
            parts.append("<h2>Stages</h2><table><tr>" + "".join(
                f"<th>{h}</th>" for h in ("clients", "ok req/s", "error %", "conn. failed", "refused %",
                                          "503 %", "timeout %", "avg ms", "p50", "p95", "p99", "p99.9",
                                          "max", "intended/s", "achieved/s", "cascade s")) + "</tr>")
            for s in st["stages"] + st.get("probes", []):
                lat = s.get("latency_ms") or {}
                cells = [f"{s['clients']}" + (" (probe)" if s in st.get("probes", []) else ""), f"{s['throughput']:.0f}", f"{100 * s['error_rate']:.2f}",
                         s["failed_connections"], f"{100 * s['refusal_rate']:.2f}", f"{100 * s['rejected_rate']:.2f}",
                         f"{100 * s['timeout_rate']:.2f}"] + [fmt_num(lat.get(k), "{:.2f}") for k in
                                                                ("avg", "p50", "p95", "p99", "p999", "max")] + \
                        [fmt_num(s.get("intended_rate"), "{:.0f}"), f"{s['achieved_rate']:.0f}", fmt_num(s.get("cascade_s"), "{}")]
                parts.append(f"<tr class='{'broken' if s.get('broken') else ''}'>" +
                             "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
            parts.append("</table>")
        if name == "versus" and report.get("versus"):
            names, rows = versus_rows(report)
            parts.append("<h2>Side by side (same plan, same container, same run)</h2><table><tr><th></th>"
                         + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>"
                         + "".join(f"<tr><th>{e(k)}</th>" + "".join(f"<td style='text-align:left'>{e(v)}</td>"
                                                                   for v in vals) + "</tr>" for k, vals in rows)
                         + "</table>")
        if name in charts:
            b64 = base64.b64encode(charts[name]).decode()
            parts.append(f"<h2>{titles[name]}</h2><img alt='{name}' src='data:image/png;base64,{b64}'>")
    parts += load_machines_html(report["phases"])
    parts.append("<h2>Configuration</h2><pre>" + e(json.dumps(
        {k: report.get(k) for k in ("server", "container", "config", "thresholds", "host")}, indent=1,
        default=str)) + "</pre>")
    parts.append("<p>The full data (per-second timeline, 100 ms samples, merged HdrHistograms per stage) is in "
                 "the JSON report.</p></body></html>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def load_machines_html(phases: dict[str, Any]) -> list[str]:
    """Per phase, the load processes grouped by machine (the farm summary's ``workers``):
    which load machine kept up. The rows' requests add up to the phase's."""
    e = html.escape
    out = []
    for name, ph in phases.items():
        ls = ph.get("load_summary") or {}
        if not ls.get("workers"):
            continue
        out.append(f"<h2>Load processes by machine: {e(name)}</h2><table><tr>" + "".join(
            f"<th>{h}</th>" for h in ("machine", "worker", "process", "requests", "connections", "intended/s",
                                      "achieved/s", "CPU", "CPU wait", "bottleneck", "lost")) + "</tr>")
        for r in ls["workers"]:
            cells = [r["machine"], r["worker"], r["process"], f"{r['requests']:,}", f"{r['connections']:,}",
                     fmt_num(r["intended_rate"], "{:.0f}"), f"{r['achieved_rate']:.0f}", f"{r['cpu']:.2f}",
                     f"{r['cpu_wait']:.2f}", "yes" if r["bottleneck"] else "", "LOST" if r["lost"] else ""]
            out.append(f"<tr class='{'broken' if r['bottleneck'] or r['lost'] else ''}'>"
                       + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
        out.append("</table>")
        offsets = ls.get("clock_offsets") or {}
        if offsets:
            out.append("<p>Clock offsets: " + e(", ".join(f"{a} {c['offset_ms']:+.1f} ms (+/- {c['error_ms']:.1f})"
                                                          for a, c in offsets.items())) + "</p>")
        for lost in ls.get("lost") or []:
            out.append(f"<p>LOST from second {lost['t']}: process {lost['process']} on {e(lost['machine'])} "
                       f"({lost['connections']:,} connections): {e(lost['why'])}</p>")
    return out


def write_all(report: dict[str, Any], out_dir: str, prefix: str = "capacity-report",
              pngs: bool = True, charts: bool = True) -> dict[str, str]:
    """JSON, HTML and (optionally) one PNG per chart in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, prefix + ".json"), "html": os.path.join(out_dir, prefix + ".html")}
    write_json(report, paths["json"])
    drawn, why = render_charts(report) if charts else ({}, "charts not drawn (--no-charts)")
    write_html(report, paths["html"], drawn, why)
    if pngs:
        for name, png in drawn.items():
            p = os.path.join(out_dir, f"{prefix}-{name}.png")
            with open(p, "wb") as f:
                f.write(png)
            paths[name] = p
    return paths
