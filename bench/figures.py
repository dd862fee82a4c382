"""The README's capacity and load-generator figures, each written by a command between
markers, with its JSON under bench/results/ naming the commands, the machine and the time.

    python -m bench.figures capacity    # make capacity-figures: both engines and nginx, one
                                        # container (0.5 CPU, 256 MiB), ~10 min, as root
    python -m bench.figures vswrk       # make vswrk: the load generator's CPU per request
                                        # against wrk -t1, pair by pair, ~3 min
    python -m bench.figures c1m         # make c1m: one million connections held (the probe;
                                        # ~12 GB of RAM, a few minutes)

`capacity` runs `python -m fastc1k.capacity --serve --engine c --versus nginx --container
cpus=0.5,memory=256M` (fastc1k's C engine and nginx under the same limits in one run),
then the same with `--engine python`, and writes bench/results/capacity.{json,md} and the
README block `capacity`. `vswrk` starts the C engine on core 0 and runs
`python -m fastc1k.load.vswrk` against it; bench/results/vswrk.{json,md}, block `vswrk`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastc1k._readme import write_block
from fastc1k.capacity.analysis import peak_text

from .ceiling import README, RESULTS, machine

CONTAINER = "cpus=0.5,memory=256M"


def _save(name: str, data: dict[str, Any], md: str, readme: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(md)
    if readme and not write_block(str(README), name, md):
        print(f"bench.figures: README.md has no <!-- {name}:start --> markers: not rewritten", file=sys.stderr)
    print(md)


def _header(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (f"Measured {m['date_utc']} UTC on {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, load average "
            f"{' '.join(m['loadavg'])} → {' '.join(m.get('loadavg_end', []))} (a machine shared with other work); "
            f"`{data['command']}` wrote this block and `bench/results/{data['name']}.json`.")


def run_child(argv: list[str], grace: float = 60.0, **popen: Any) -> subprocess.CompletedProcess:
    """`argv`, its output captured. On ^C (which reaches the child too: same process group)
    the child is given `grace` s to clean up (stop its server, remove its cgroup, restore
    nf_conntrack_max) before it is killed; subprocess.run would kill it after 0.25 s."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen) as proc:
        try:
            out, err = proc.communicate()
        except KeyboardInterrupt:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --- capacity ----------------------------------------------------------------------------------

def _capacity_run(engine: str, versus: bool, out: Path, quick: bool) -> tuple[list[str], dict[str, Any]]:
    argv = [sys.executable, "-m", "fastc1k.capacity", "--serve", "--engine", engine, "--runtime", "kernel",
            "--container", CONTAINER,
            "--quiet", "--no-png", "--out", str(out)] + (["--versus", "nginx"] if versus else []) \
        + (["--quick"] if quick else [])
    p = run_child(argv)
    if p.returncode not in (0, 1) or not (out / "capacity-report.json").exists():
        raise SystemExit(f"bench.figures: {' '.join(argv[1:])} failed ({p.returncode}): {p.stderr.strip()[-600:]}")
    with open(out / "capacity-report.json") as f:
        rep = json.load(f)
    check_contained(rep)
    return ["python"] + argv[1:argv.index("--quiet")] + argv[argv.index("--out") + 2:], rep


def check_contained(rep: dict[str, Any]) -> None:
    """The figures are the container's only if its limits were in force on every server
    process, master and workers, for the whole run."""
    if set(rep["container"].get("applied") or {}) < {"cpus", "memory"}:
        raise SystemExit(f"bench.figures: the container's limits were not applied: {'; '.join(rep['notes'])}")
    for name, pids in [("fastc1k", rep["container"].get("outside"))] + [
            (n, v.get("outside_container")) for n, v in (rep.get("versus") or {}).items()]:
        if pids is None or pids:
            raise SystemExit(f"bench.figures: {name}: server process(es) {pids} ran outside the container's "
                             "cgroup (or the run could not tell): its figures would not be the container's")


def condense(phases: dict[str, Any]) -> dict[str, Any]:
    """One server's answers from a capacity report's phases."""
    st, rp, rc = phases.get("stages") or {}, phases.get("ramp") or {}, phases.get("recovery") or {}
    bp = st.get("breaking_point") or {}
    by = {s["clients"]: s for s in st.get("stages", [])}
    b = rp.get("bottleneck") or {}
    rec = rc.get("recovery") or {}
    return {
        "breaks_between": [bp.get("last_good_clients"), bp.get("clients")] if bp else None,
        "breaks_because": bp.get("reasons"), "configured_limit": bp.get("configured_limit"),
        "probes": bp.get("probes"), "precision": bp.get("precision"),
        "peak_throughput": st.get("peak_throughput"), "peak": peak_text(st.get("stages") or []),
        "p99_ms_by_clients": {c: (s.get("latency_ms") or {}).get("p99") for c, s in by.items()},
        "throughput_by_clients": {c: round(s["throughput"]) for c, s in by.items()},
        "first_bottleneck": {k: b.get(k) for k in ("resource", "clients", "evidence")} if b else None,
        "ramp": rp.get("rate_how"),
        "blast_clients": rc.get("blast_clients"), "recovery_clients": rc.get("recovery_clients"),
        "recovery_s": rec.get("seconds"), "recovery_label": rec.get("label"),
        "recovery_resolution_s": rec.get("resolution_s"), "recovery_bar_s": rec.get("bar_s"),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _cell_bp(c: dict[str, Any]) -> str:
    if not c["breaks_between"]:
        return "not broken up to the host's client limit"
    lo, hi = c["breaks_between"]
    txt = (f"**{lo:,}–{hi:,}** clients" if lo else f"≤ {hi:,} clients") + f" ({'; '.join(c['breaks_because'])})"
    return txt + (f"; {c['configured_limit'].split(':')[0]}" if c.get("configured_limit") else "")


def capacity_markdown(data: dict[str, Any]) -> str:
    servers = data["servers"]
    names = list(servers)
    common = sorted(set.intersection(*(set(s["p99_ms_by_clients"]) for s in servers.values())), key=int)
    rows = [("breaking point (bisected to 5 %)", [_cell_bp(servers[n]) for n in names]),
            ("peak throughput (closed loop; the server's CPU there)", [servers[n]["peak"] or "-" for n in names])]
    for c in [x for x in common if int(x) in (100, 1000, 5063)]:
        rows.append((f"p99 at {int(c):,} clients", [_ms(servers[n]["p99_ms_by_clients"][c]) for n in names]))
    rows.append(("first bottleneck (open-loop ramp)", [
        f"{b['resource']} at {b['clients']:,} clients" if (b := servers[n]["first_bottleneck"]) else "none reached"
        for n in names]))
    rows.append(("recovery after 2× the breaking point (100 ms rows; the plan's bar 30 s)", [
        f"{servers[n]['recovery_label']} (blast {servers[n]['blast_clients']:,}, then {servers[n]['recovery_clients']:,})"
        if servers[n]["recovery_label"] else "-" for n in names]))
    out = [_header(data), "",
           f"One run each. One server worker, container `{CONTAINER}` (cgroup CPU quota and memory limit), its own network "
           "namespace, `--max-connections auto` (the fd limit's); nginx ran the same plan in the same container "
           "right after the C engine, in the same command.", "",
           "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
    ev = [f"- {n}: {b['evidence']}" for n in names if (b := servers[n]["first_bottleneck"])]
    if ev:
        out += ["", "First bottleneck, the evidence:"] + ev
    return "\n".join(out) + "\n"


def capacity(readme: bool, quick: bool) -> None:
    data: dict[str, Any] = {"name": "capacity", "command": "make capacity-figures   # = python -m bench.figures capacity",
                            "machine": machine(), "container": CONTAINER, "runs": [], "servers": {}}
    with tempfile.TemporaryDirectory(prefix="fastc1k-figures-") as tmp:
        for engine, versus in (("c", True), ("python", False)):
            print(f"bench.figures: capacity, {engine} engine{' and nginx' if versus else ''} ...", file=sys.stderr,
                  flush=True)
            argv, rep = _capacity_run(engine, versus, Path(tmp) / engine, quick)
            data["runs"].append({"command": " ".join(argv), "started": rep["started"], "elapsed_s": rep["elapsed_s"],
                                 "loadavg_start": rep["host"]["loadavg"], "notes": rep["notes"]})
            label = "fastc1k C engine" if engine == "c" else "fastc1k pure Python"
            data["servers"][label] = condense(rep["phases"])
            for name, v in (rep.get("versus") or {}).items():
                data["servers"][name] = condense(v.get("phases") or {})
    data["machine"]["loadavg_end"] = [f"{x:.2f}" for x in os.getloadavg()]
    order = [n for n in ("fastc1k C engine", "nginx", "fastc1k pure Python") if n in data["servers"]]
    data["servers"] = {n: data["servers"][n] for n in order}
    if quick:   # a trial: the durations are not the ones the README states
        print(capacity_markdown(data))
        return
    _save("capacity", data, capacity_markdown(data), readme)


# --- the load generator against wrk -------------------------------------------------------------

def vswrk_markdown(data: dict[str, Any]) -> str:
    titles = {"c100": "c=100", "c1000": "c=1000", "p16": "pipelined ×16, c=100"}
    out = [_header(data), "",
           f"Both on core 1 (`wrk -t1`, one fastc1k.load process), the C engine on core 0; {data['rounds']} rounds "
           f"of {data['seconds']} s, the two alternating; client CPU per request (getrusage), ours ÷ wrk per round.",
           "", "| case | ours ÷ wrk, median (min–max) | ours: µs/request (user) | wrk: µs/request (user) |",
           "|---|---|---|---|"]
    for case, c in data["cases"].items():
        out.append(f"| {titles.get(case, case)} | **{c['ratio_median']:.2f}** ({c['ratio_min']:.2f}–{c['ratio_max']:.2f}) "
                   f"| {c['ours_us']:.2f} ({c['ours_user_us']:.2f}) | {c['wrk_us']:.2f} ({c['wrk_user_us']:.2f}) |")
    return "\n".join(out) + "\n"


def vswrk(readme: bool, rounds: int, seconds: int) -> None:
    from fastc1k.load import vswrk as vw

    from .servers import SERVERS, RunningServer
    data: dict[str, Any] = {"name": "vswrk", "command": f"make vswrk   # = python -m bench.figures vswrk "
                            f"(fastc1k.load.vswrk URL --rounds {rounds} --seconds {seconds})",
                            "machine": machine(), "rounds": rounds, "seconds": seconds, "cases": {}}
    with RunningServer(SERVERS["c"], quota=False, cpu=0) as srv:
        report = vw.main([srv.url(), "--rounds", str(rounds), "--seconds", str(seconds), "--core", "1"])
    data["machine"]["loadavg_end"] = [f"{x:.2f}" for x in os.getloadavg()]
    for case, r in report.items():
        rows = r["rounds"]
        data["cases"][case] = {
            "ratio_median": r["ratio_median"], "ratio_min": min(r["ratios"]), "ratio_max": max(r["ratios"]),
            "ours_us": statistics.median(x["ours"]["cpu_us"] for x in rows),
            "ours_user_us": statistics.median(x["ours"]["user_us"] for x in rows),
            "wrk_us": statistics.median(x["wrk"]["cpu_us"] for x in rows),
            "wrk_user_us": statistics.median(x["wrk"]["user_us"] for x in rows), "rounds": rows}
    _save("vswrk", data, vswrk_markdown(data), readme)


# --- one million connections -----------------------------------------------------------------

C1M_ARGS = ("--connections 1000000 --workers 56 --clients 56 --source-ips 127.0.0.10-127.0.0.109 "
            "--hold 30 --verify-timeout 180 --engine c")


def c1m_markdown(data: dict[str, Any]) -> str:
    r, mib = data["result"], 1 << 20
    n = max(1, r["opened"])
    rows = [
        ("connections held (200 when opened, 200 again after the hold)", f"**{r['held']:,}** of {r['target_connections']:,}"),
        ("failed / lost while held / second answer failed",
         f"{r['failed_open']:,} / {r['lost_during_hold']:,} / {r['failed_verify']:,}"),
        ("opening time (rate)", f"{r['open_seconds']:.1f} s ({r['open_rate']:,.0f}/s)"),
        ("second answers (the verify phase; its timeout counts the unanswered as failed)",
         f"{r['verify_seconds']:.1f} s"),
        ("kernel memory per connection (client + server socket: Slab + TCP pages)",
         f"{r['kernel_bytes_per_conn']:,.0f} B"),
        ("server user space per connection (RSS delta of the workers)", f"{r['server_rss_bytes_per_conn']:,.0f} B"),
        ("server RSS all told / connections (the interpreters included)", f"{r['server_rss_after'] / n:,.0f} B"),
        ("client user space per connection (Python probe)", f"{r['client_rss_bytes_per_conn']:,.0f} B"),
        ("RAM in use at the peak", f"{r['mem_used_fraction_peak']:.1%} of {r['limits'].get('mem_total', 0) / 2**30:.1f} GiB"),
        ("stopped by", r["stopped_by"]), ("the next limit", r["next_limit"]),
    ] + ([("conntrack", r["conntrack"])] if r.get("conntrack") else [])
    return "\n".join([_header(data), "", f"`{data['probe_command']}` ({r['workers']} server workers, "
                      f"{r['clients']} client processes, {r['engine']} engine; server RSS "
                      f"{r['server_rss_before'] / mib:,.0f} -> {r['server_rss_after'] / mib:,.0f} MiB):", "",
                      "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def c1m(readme: bool, probe_args: str | None) -> None:
    args = (probe_args or C1M_ARGS).split()
    cmd = ["python", "-m", "fastc1k.capacity", "probe", *args]
    data: dict[str, Any] = {"name": "c1m", "command": "make c1m   # = python -m bench.figures c1m",
                            "probe_command": " ".join(cmd), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="fastc1k-figures-") as tmp:
        out = os.path.join(tmp, "probe.json")
        p = run_child([sys.executable, *cmd[1:], "--quiet", "--json", out])
        # exit 1 with a result: some connection was not held to the end, which the block reports
        if p.returncode not in (0, 1) or not os.path.exists(out):
            raise SystemExit(f"bench.figures: the probe failed ({p.returncode}): {p.stderr.strip()[-600:]}")
        with open(out) as f:
            data["result"] = json.load(f)
        data["summary"] = p.stdout
    data["machine"]["loadavg_end"] = [f"{x:.2f}" for x in os.getloadavg()]
    if probe_args:   # a trial at another size: the README's block states the million
        print(c1m_markdown(data))
        return
    _save("c1m", data, c1m_markdown(data), readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("capacity", "vswrk", "c1m"))
    ap.add_argument("--no-readme", action="store_true", help="write bench/results/ only")
    ap.add_argument("--quick", action="store_true", help="capacity: the suite's --quick durations (a trial run)")
    ap.add_argument("--rounds", type=int, default=5, help="vswrk rounds [5]")
    ap.add_argument("--seconds", type=int, default=4, help="vswrk seconds per run [4]")
    ap.add_argument("--probe-args", help=f"c1m: other probe arguments, a trial that writes nothing [{C1M_ARGS}]")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    if a.what == "capacity":
        if os.geteuid() != 0:
            print("bench.figures capacity: needs root (the container's cgroup and namespace)", file=sys.stderr)
            return 2
        capacity(not a.no_readme, a.quick)
    elif a.what == "c1m":
        c1m(not a.no_readme, a.probe_args)
    else:
        vswrk(not a.no_readme, a.rounds, a.seconds)
    print(f"bench.figures {a.what}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
