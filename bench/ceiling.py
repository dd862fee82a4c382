"""The ceiling report: `python -m bench.ceiling` (about 9 minutes with the defaults).

Per server (the floor responder, nginx, the C engine on epoll and on io_uring, the
pure-Python engine, uvloop): server CPU per request split user/sys and the kernel's share,
under the 0.5-CPU quota, keep-alive c=1000, pipelined x16 c=100 and a new connection per
request c=50 (the floor, which cannot close, sits that one out), in pair-by-pair rounds (A B C ..., A B C ...;
each figure is the median over rounds, each ratio the median of per-round ratios with its
spread); syscalls per request (`strace -c -f` over a short run); memory per idle
connection, measured first, on the freshly started servers. Writes bench/results/ceiling.json (with the machine's description),
ceiling.md (the README table) and ceiling.png (the chart), and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastc1k._readme import write_block
from fastc1k.host import proc

from . import drivers, measure, workloads
from .servers import DEFER_ACCEPT, SERVERS, RunningServer

RESULTS = Path(__file__).resolve().parent / "results"
CEILING_SERVERS = ("floor", "nginx", "c", "c-uring", "python", "uvloop")
CEILING_WORKLOADS = ("quota-c1000", "pipelined16-c100", "newconn-c50")
COMMAND = "sudo make ceiling   # = PYTHONPATH=src python -m bench.ceiling"


def machine() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "kernel": platform.release(), "cpu": proc.cpu_model(), "cores": os.cpu_count(),
        "mem_gib": round(proc.meminfo().get("MemTotal", 0) / 2**30, 1), "python": platform.python_version(),
        "nginx": first(["nginx", "-v"]), "wrk": first(["wrk", "-v"]),
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[str]:
    return [f"{x:.2f}" for x in os.getloadavg()]


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run(names: list[str], rounds: int, duration: float, idle: int, do_strace: bool,
        log=print, warmup: float = 1.0) -> dict:
    specs, skipped = [], {}
    for n in names:
        why = SERVERS[n].unavailable()
        if why:
            skipped[n] = why
            log(f"skip {n}: {why}")
        else:
            specs.append(SERVERS[n])
    why = drivers.driver_missing()
    if why:
        raise SystemExit(f"bench.ceiling: {why}")
    report = {"machine": machine(), "servers": [s.name for s in specs], "skipped": skipped,
              "defer_accept": DEFER_ACCEPT,
              "rounds": rounds, "round_s": duration, "workloads": {}, "syscalls": {}, "memory": {}}
    running: list[RunningServer] = []
    try:
        for spec in specs:
            try:
                running.append(RunningServer(spec))
            except RuntimeError as exc:  # it could not start here: say so, go on with the others
                skipped[spec.name] = str(exc)
                log(f"skip {spec.name}: {exc}")
        report["quota"] = running[0].quota.label if running else "n/a"
        log(f"servers up: {', '.join(s.spec.name for s in running)}; quota: {report['quota']}")
        if idle:   # first, on fresh servers: the connections' pages are theirs alone (METHOD.md §6)
            for s in running:
                report["memory"][s.spec.name] = workloads.idle_memory(s, idle)
                log(f"idle memory {s.spec.name}: {report['memory'][s.spec.name]}")
        for wname in CEILING_WORKLOADS:
            w = workloads.WORKLOADS[wname]
            able = [s for s in running if s.spec.closes or not w.close]
            if not able:
                continue
            for s in able if warmup else ():  # warm-up, not recorded
                workloads.measure_run(s, w, duration=warmup, max_requests=0)
            per_round: list[dict[str, dict]] = []
            for r in range(rounds):
                row = {}
                for s in able:
                    row[s.spec.name] = workloads.measure_run(s, w, duration=duration, max_requests=0)
                per_round.append(row)
                log(f"{wname} round {r + 1}/{rounds}: " + "  ".join(
                    f"{n} {m['cpu_us']:.2f}us {m['rps'] / 1000:.0f}k/s" for n, m in row.items()))
            report["workloads"][wname] = summarize(w, per_round)
        if do_strace:
            why = measure.strace_available()
            if why:
                report["syscalls_skipped"] = why
            else:
                for wname in report["workloads"]:
                    w = workloads.WORKLOADS[wname]
                    report["syscalls"][wname] = {s.spec.name: syscalls(s, w) for s in running
                                                 if s.spec.closes or not w.close}
                    log(f"{wname} syscalls/request: " + "  ".join(
                        f"{n} {v['per_request']:.2f}" for n, v in report["syscalls"][wname].items()))
    finally:
        for s in running:
            s.stop()
    report["machine"]["loadavg_end"] = _loadavg()
    return report


def summarize(w: workloads.Workload, per_round: list[dict[str, dict]]) -> dict:
    names = list(per_round[0])
    out = {"title": w.title, "rounds": per_round, "summary": {}}
    for n in names:
        ms = [row[n] for row in per_round]
        s = {k: statistics.median(m[k] for m in ms) for k in ("cpu_us", "rps")}
        # cores the server used: under its 0.5 quota its req/s is its capacity only near 0.5;
        # well below, the load generator (on a busy host) set the rate
        s["cores"] = statistics.median(m["cpu_us"] * m["rps"] / 1e6 for m in ms)
        # the split of the median, so that user + sys adds up to it
        s["kernel_share"] = statistics.median(m["sys_us"] / m["cpu_us"] if m["cpu_us"] else 0.0 for m in ms)
        s["sys_us"] = s["cpu_us"] * s["kernel_share"]
        s["user_us"] = s["cpu_us"] - s["sys_us"]
        s["errors"] = sum(sum(m["errors"].values()) for m in ms)
        for ref in ("nginx", "floor", "python", "c"):
            if ref in names and ref != n:
                s[f"vs_{ref}"] = _median_spread([row[n]["cpu_us"] / row[ref]["cpu_us"] for row in per_round])
                s[f"rps_vs_{ref}"] = _median_spread([row[n]["rps"] / max(row[ref]["rps"], 1) for row in per_round])
        out["summary"][n] = s
    return out


def syscalls(s: RunningServer, w: workloads.Workload, duration: float = 3.0) -> dict:
    """strace -c -f over a short run: syscalls per completed request, and the main ones.

    At most 100 connections: strace slows the server ~10x, and with 1,000 the accepts of
    the run's start would weigh on the few requests it completes."""
    s.set_quota(w.quota)
    with measure.Strace(s.pids()) as st:
        res = drivers.run_load(s.url(w.path), min(w.connections, 100), duration, w.pipeline, 0, w.close)
    n = max(res.requests, 1)
    total = sum(st.calls.values())
    top = sorted(st.calls.items(), key=lambda kv: -kv[1])[:5]
    return {"requests": res.requests, "calls": st.calls, "per_request": total / n,
            "top": {k: round(v / n, 3) for k, v in top}}


def _ratio(s: dict, ref: str) -> str:
    v = s.get(f"vs_{ref}")
    return f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})" if v else "1" if ref else ""


def headline(report: dict) -> list[str]:
    """The figures the project is judged by (bench/METHOD.md, the goals), measured vs goal."""
    wl, mem = report["workloads"], report["memory"]
    ka, pl, nc = (wl.get(n, {}).get("summary", {}) for n in CEILING_WORKLOADS)
    c, u = ka.get("c"), ka.get("c-uring")
    if not c or "nginx" not in ka:
        return []

    def r(summ: dict, key: str) -> str:
        v = summ.get(key)
        return f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})" if v else "n/a"
    rows = [("C engine CPU per request × nginx, c=1000", r(c, "vs_nginx"), "≤ 0.80"),
            ("C engine user time per request, c=1000", f"{c['user_us']:.2f} µs", "≤ 0.3 µs")]
    if "floor" in ka:
        rows += [("floor × nginx (the kernel's floor)", r(ka["floor"], "vs_nginx"), "~0.75 (measured here before)"),
                 ("C engine × floor", r(c, "vs_floor"), "≤ 1.05")]
    if u:
        rows += [("io_uring C engine × floor (the epoll floor)", r(u, "vs_floor"), "≤ 0.90"),
                 ("io_uring C engine × epoll C engine", r(u, "vs_c"), "< 1 to be the default")]
    rows.append(("req/s under the quota, C engine × nginx", r(c, "rps_vs_nginx"), "≥ 1.15"))
    if pl.get("c"):
        rows.append(("pipelined ×16: C engine × nginx", r(pl["c"], "vs_nginx"), "≤ 0.1"))
        if pl.get("c-uring"):
            rows.append(("pipelined ×16: io_uring C engine × epoll C engine", r(pl["c-uring"], "vs_c"), "≤ 1"))
        rows.append(("pipelined ×16: C engine × pure-Python engine", r(pl["c"], "vs_python"), "≤ 0.6"))
    for n, label in (("c", "C engine"), ("c-uring", "io_uring C engine")):
        if nc.get(n):
            rows.append((f"a new connection per request: {label} × nginx", r(nc[n], "vs_nginx"), "≤ 0.90"))
    if mem.get("c"):
        ng = mem.get("nginx")
        struct = mem["c"].get("struct_bytes")
        rows.append(("memory per idle connection, C engine (fresh server)", f"{mem['c']['rss_per_conn']:.0f} B"
                     + (f" (its struct {struct} B)" if struct else "")
                     + (f"; nginx {ng['rss_per_conn']:.0f} B" if ng else ""), "≤ 128 B"))
    return ["| figure | measured (median, min–max of rounds) | goal |", "|---|---|---|"] + \
        [f"| {a} | {b} | {g} |" for a, b, g in rows]


def backend_verdict(report: dict) -> str:
    """The io_uring backend against the epoll C engine and the floor, keep-alive c=1000, in
    this run's own figures: by how much, and where the difference is (kernel, syscalls)."""
    ka = report["workloads"].get(CEILING_WORKLOADS[0], {}).get("summary", {})
    c, u = ka.get("c"), ka.get("c-uring")
    if not c or not u or "vs_c" not in u:
        return ""
    sc = report["syscalls"].get(CEILING_WORKLOADS[0], {})
    calls = (f"; syscalls per request {sc['c-uring']['per_request']:.2f} against {sc['c']['per_request']:.2f}"
             if sc.get("c") and sc.get("c-uring") else "")
    ratio, lo, hi = u["vs_c"]
    verdict = ("cheaper than epoll in every round" if hi < 1 else
               "dearer than epoll in every round" if lo > 1 else "not cheaper than epoll beyond the noise")
    floor = (f", {u['vs_floor'][0]:.2f} × the epoll floor (goal ≤ 0.90: {'met' if u['vs_floor'][0] <= 0.90 else 'missed'})"
             if "vs_floor" in u else "")
    return (f"io_uring, keep-alive c=1000: {ratio:.2f} ({lo:.2f}–{hi:.2f}) × the epoll C engine's CPU per request"
            f"{floor}: {verdict}. Kernel {u['sys_us']:.2f} µs against {c['sys_us']:.2f} µs, user "
            f"{u['user_us']:.2f} µs against {c['user_us']:.2f} µs{calls}.")


def markdown(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(f"Measured {m['date_utc']} UTC on {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
                 f"load average {' '.join(m['loadavg'])} → {' '.join(m.get('loadavg_end', []))}; "
                 f"{report['rounds']} rounds of {report['round_s']:g} s, quota {report.get('quota')}; "
                 f"listeners with deferred accept ({report.get('defer_accept', 0)} s: TCP_DEFER_ACCEPT, "
                 "nginx `deferred`).")
    head = headline(report)
    if head:
        lines += [""] + head
    verdict = backend_verdict(report)
    if verdict:
        lines += ["", verdict]
    for wname, wr in report["workloads"].items():
        lines += ["", f"**{wr['title']}** — server CPU per request (µs), median of rounds; "
                      "ratios are medians of per-round ratios (min–max)", "",
                  "| server | µs/request | user | sys | kernel share | × nginx | × floor | req/s (server cores) "
                  "| syscalls/request (c≤100) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        sc = report["syscalls"].get(wname, {})
        for n, s in wr["summary"].items():
            calls = sc.get(n)
            calls_txt = (f"{calls['per_request']:.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                      list(calls["top"].items())[:3]) + ")"
                         if calls else "n/a")
            lines.append(f"| {SERVERS[n].label} | {s['cpu_us']:.2f} | {s['user_us']:.2f} | {s['sys_us']:.2f} | "
                         f"{s['kernel_share']:.0%} | {_ratio(s, 'nginx') if n != 'nginx' else '1'} | "
                         f"{_ratio(s, 'floor') if n != 'floor' else '1'} | {s['rps']:,.0f}"
                         + (f" ({s['cores']:.2f})" if "cores" in s else "") + f" | {calls_txt} |")
    if report["memory"]:
        lines += ["", f"**Memory per idle keep-alive connection** ({next(iter(report['memory'].values()))['connections']:,}"
                      " connections on each freshly started server, before any other workload; RSS delta / answered "
                      "connections; the C engine's connection struct and the kernel slab beside it)", "",
                  "| server | RSS / conn | connection struct | kernel slab / conn | answered |", "|---|---|---|---|---|"]
        for n, mm in report["memory"].items():
            struct = f"{mm['struct_bytes']} B" if mm.get("struct_bytes") else ""
            lines.append(f"| {SERVERS[n].label} | {mm['rss_per_conn']:,.0f} B | {struct} | "
                         f"{mm['slab_per_conn']:,.0f} B | {mm['answered']:,} |")
    if report["skipped"]:
        lines += [""] + [f"Skipped {n}: {why}." for n, why in report["skipped"].items()]
    return "\n".join(lines) + "\n"


README = Path(__file__).resolve().parent.parent / "README.md"
def update_readme(md: str, readme: Path = README) -> bool:
    """Replace the README's block between the ceiling markers with this run's table."""
    return write_block(str(readme), "ceiling", md)


def chart(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    wl = list(report["workloads"].items())
    fig, axes = plt.subplots(1, len(wl), figsize=(6.2 * len(wl), 3.6), squeeze=False)
    for ax, (wname, wr) in zip(axes[0], wl):
        summ = wr["summary"]
        names = list(summ)[::-1]
        user = [summ[n]["user_us"] for n in names]
        sys_ = [summ[n]["sys_us"] for n in names]
        y = range(len(names))
        ax.barh(y, sys_, color="#9db4d3", label="kernel (sys)")
        ax.barh(y, user, left=sys_, color="#c0392b", label="user space")
        ax.set_yticks(list(y), [SERVERS[n].label for n in names])
        for i, n in enumerate(names):
            s = summ[n]
            txt = f"{s['cpu_us']:.2f} µs"
            if "vs_nginx" in s:
                txt += f"  ({s['vs_nginx'][0]:.2f}× nginx)"
            ax.text(s["cpu_us"], i, " " + txt, va="center", fontsize=8)
        if "floor" in summ:
            ax.axvline(summ["floor"]["cpu_us"], ls="--", color="k", lw=1)
            ax.text(summ["floor"]["cpu_us"], len(names) - 0.45, " floor", fontsize=8)
        ax.set_xlim(0, max(s["cpu_us"] for s in summ.values()) * 1.55)
        ax.set_xlabel("server CPU per request (µs), 1 worker, 0.5-CPU quota")
        ax.set_title(wr["title"], fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("fastc1k: where the CPU per request goes (kernel below, user space on top)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(CEILING_SERVERS), help="comma list (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per server per round")
    ap.add_argument("--idle", type=int, default=10000, help="idle connections for memory (0: skip)")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite README.md's Performance table")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or args.rounds < 1 or args.duration < 1:
        print(f"bench.ceiling: bad arguments (unknown servers {unknown}, rounds >= 1, duration >= 1)",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    report = run(names, args.rounds, args.duration, args.idle, not args.no_strace,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    report["command"] = COMMAND
    report["wall_s"] = round(time.monotonic() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (args.out / "ceiling.md").write_text(md)
    png = chart(report, args.out / "ceiling.png")
    if not args.no_readme and args.out.resolve() == RESULTS:
        update_readme(md)
    print(md)
    print(f"wrote {args.out / 'ceiling.json'}, ceiling.md{', ceiling.png' if png else ''} "
          f"in {report['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
