"""What a container's network costs: the same server under the same limits, exposed three
ways, each through the same ramp (stages, resource ramp, blast and recovery), in one run:

  podman -p      the image with its port published on 127.0.0.1 (what `docker run -p`
                 gives users): a bridge, a veth pair, DNAT and conntrack on every packet;
  podman host    the image with --network host: the host's own stack, no NAT;
  kernel parts   the server in a cgroup with the same limits, in a network namespace of
                 the run's own with the load generator: loopback only, no netfilter.

Each variant is `python -m fastc1k.capacity --serve --runtime ...` in a child process
(the kernel-parts run enters a network namespace, which a process cannot leave), one
after the other; their JSON reports are put side by side: breaking point, peak
throughput, first bottleneck, recovery, and CPU per request at the largest stage that
held in all three — the server's and the load generator's (the kernel's packet path,
where NAT and conntrack show, runs in softirq in their contexts).

    python -m fastc1k.capacity netcost --container cpus=0.5,memory=256M,nofile=16384,somaxconn=8192
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from typing import Any, Sequence

from ..._cli import UsageError
from ..console import Tool
from ..podman import unavailable
from ..._readme import markers, write_block
from ..report import write_json

__all__ = ["TOOL", "VARIANTS", "summarize", "compare", "markdown", "main"]

PROG = "fastc1k.capacity.netcost"
VARIANTS = {   # name -> the ramp's runtime flags
    "podman -p": ["--runtime", "podman", "--network", "publish"],
    "podman --network host": ["--runtime", "podman", "--network", "host"],
    "kernel parts": ["--runtime", "kernel"],
}
DEFAULT_CONTAINER = "cpus=0.5,memory=256M,nofile=16384,somaxconn=8192"
RESULTS = os.path.join("bench", "results", "netcost.json")
MARKER = "netcost"


def _window(report: dict[str, Any], stage: dict[str, Any]) -> list[dict[str, Any]]:
    t0 = stage["start_s"]
    return [s for s in report.get("samples") or [] if t0 <= s["t"] <= t0 + stage["duration_s"] and "cpu_used" in s]


def cpu_per_request(report: dict[str, Any], stage: dict[str, Any]) -> dict[str, float | None]:
    """µs of CPU per request served in `stage`: the server's processes (the monitor's
    samples) and the load generator's (the farm's rows). The kernel's packet path — veth,
    bridge, DNAT, conntrack — runs in softirq in the context of whichever of them sent
    the packet, so it lands in these two (the host's total would count other work too)."""
    rps = stage.get("throughput") or 0
    t0 = stage["start_s"]
    sm = [s for s in report.get("samples") or [] if t0 <= s["t"] <= t0 + stage["duration_s"] and "cpu_used" in s]
    rows = [r for r in report.get("timeline") or []
            if r.get("phase") == "stages" and r.get("clients") == stage["clients"] and r.get("client_cpu") is not None]
    server = sum(s["cpu_used"] for s in sm) / len(sm) if len(sm) >= 2 and rps > 0 else None
    client = sum(r["client_cpu"] for r in rows) / len(rows) if rows and rps > 0 else None
    us = {k: None if v is None else round(v / rps * 1e6, 1) for k, v in (("server_us", server), ("client_us", client))}
    us["total_us"] = None if None in us.values() else round(us["server_us"] + us["client_us"], 1)
    return us


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one variant's capacity report that the comparison needs."""
    ph = report.get("phases") or {}
    st = ph.get("stages") or {}
    bp = st.get("breaking_point")
    bn = (ph.get("ramp") or {}).get("bottleneck")
    rec = ((ph.get("recovery") or {}).get("recovery")) or {}
    rt = report.get("runtime") or {}
    return {
        "runtime": rt.get("name"), "network": rt.get("network"), "image_id": rt.get("image_id"),
        "applied": rt.get("applied") or (report.get("container") or {}).get("applied"),
        "refused": rt.get("refused") or [], "conntrack": rt.get("conntrack"),
        "breaking_point": bp["clients"] if bp else None,
        "breaking_why": "; ".join(bp["reasons"]) if bp else f"held up to {st['stages'][-1]['clients']:,} clients"
        if st.get("stages") else None,
        "peak_rps": round(st["peak_throughput"]) if st.get("peak_throughput") else None,
        "bottleneck": bn["resource"] if bn else None,
        "bottleneck_evidence": bn["evidence"] if bn else None,
        "bottleneck_clients": bn["clients"] if bn else None,
        "recovery": rec.get("label"),
        "oom_kills": report.get("oom_kills"),
        "aborted": report.get("aborted"),
        "load_average": round(((report.get("host") or {}).get("loadavg") or [0])[0], 1),
        # a starved load generator caps what the run could see (load.farm's wait figure)
        "generator_wait": max((w for p in ph.values() if isinstance(p, dict)
                               for w in (p.get("load_summary") or {}).get("client_cpu_wait_per_process") or []),
                              default=None),
        # the monitor's own gaps (capacity.monitor): why a CPU cell can be "-"
        "monitor_gaps": [n.split(": ", 1)[1].split("):")[0] + ")" for n in report.get("notes") or []
                         if n.startswith("monitor: no sample for")],
    }


def common_stage(reports: dict[str, dict[str, Any]]) -> int | None:
    """The most clients of a stage that every variant ran and held (unbroken)."""
    held = None
    for rep in reports.values():
        ok = {s["clients"] for s in ((rep.get("phases") or {}).get("stages") or {}).get("stages", []) if not s["broken"]}
        held = ok if held is None else held & ok
    return max(held) if held else None


def compare(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Side by side: each variant's summary, and CPU per request at the common stage."""
    at = common_stage(reports)
    rows = {}
    for name, rep in reports.items():
        row = summarize(rep)
        if at is not None:
            stage = next(s for s in rep["phases"]["stages"]["stages"] if s["clients"] == at)
            row.update(rps_at_common=round(stage["throughput"]), **cpu_per_request(rep, stage))
        rows[name] = row
    return {"common_stage_clients": at, "variants": rows}


def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if isinstance(v, (int, float)) else str(v)


def markdown(result: dict[str, Any]) -> str:
    """The README block: the table, the command, and what the differences mean."""
    v = result["variants"]
    names = list(v)
    at = result["common_stage_clients"]
    lines = [f"Measured {result['date']} on the {result['host']} (shared with other work), one run of",
             "", "```sh", result["command"], "```", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, key: str, unit: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(_n(v[n].get(key), unit) for n in names) + " |")

    lines.append("| breaking point (clients) | " + " | ".join(
        _n(v[n]["breaking_point"]) if v[n]["breaking_point"] else f"none ({v[n]['breaking_why'] or '-'})"
        for n in names) + " |")
    row("peak throughput (req/s)", "peak_rps")
    if at is not None:
        row(f"req/s at {at:,} clients (held in all three)", "rps_at_common")
        row(f"server CPU per request at {at:,} clients (µs)", "server_us")
        row(f"load generator CPU per request at {at:,} clients (µs)", "client_us")
        row("both, per request (µs; the kernel's packet path included)", "total_us")
    lines.append("| first bottleneck | " + " | ".join(
        f"{v[n]['bottleneck'] or '-'}" + (f" at {v[n]['bottleneck_clients']:,}" if v[n].get("bottleneck_clients") else "")
        for n in names) + " |")
    row("recovery after a 2x blast", "recovery")
    lines.append("| load generator's most time waiting for a CPU (share of a phase) | "
                 + " | ".join("-" if v[n].get("generator_wait") is None else f"{v[n]['generator_wait']:.0%}"
                              for n in names) + " |")
    lines.append("| machine's load average at the start (other work) | "
                 + " | ".join(f"{v[n]['load_average']:.1f}" for n in names) + " |")
    lines += ["", f"Image {result['image']}; limits applied: "
              + ", ".join(f"{k}={val / 2**20:.0f}M" if k == "memory" else f"{k}={val}"
                          for k, val in (v[names[0]].get("applied") or {}).items()) + "."]
    refused = sorted({r for n in names for r in v[n].get("refused") or []})
    if refused:
        lines.append("Refused: " + "; ".join(refused) + ".")
    gaps = [f"{n}: {'; '.join(v[n]['monitor_gaps'])}" for n in names if v[n].get("monitor_gaps")]
    if gaps:
        lines.append("Monitor gaps: " + "; ".join(gaps) + ".")
    ct = sorted({v[n]["conntrack"] for n in names if v[n].get("conntrack")})
    if ct:
        lines.append("; ".join(ct) + ".")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--container", default=DEFAULT_CONTAINER, metavar="SPEC",
                   help=f"the limits of all three [default {DEFAULT_CONTAINER}]")
    p.add_argument("--quick", action="store_true", help="the ramp's scaled-down durations (CI)")
    p.add_argument("--ramp-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to each ramp run (repeatable, e.g. --ramp-arg=--stages=50,200,800)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which, comma-separated [default all three]")
    p.add_argument("--out", default="netcost", metavar="DIR", help="each variant's report goes here [default netcost/]")
    p.add_argument("--results", default=RESULTS, metavar="JSON", help=f"the comparison [default {RESULTS}]")
    p.add_argument("--readme", metavar="README", help=f"replace the block between the {MARKER} markers in this file")


def run_cli(args: argparse.Namespace) -> int:
    names = [x.strip() for x in args.variants.split(",") if x.strip()]
    bad = [x for x in names if x not in VARIANTS]
    if bad or not names:
        raise UsageError(f"--variants: choose from {', '.join(VARIANTS)}; got {args.variants!r}")
    why = unavailable() if any(VARIANTS[n][1] == "podman" for n in names) else None
    if why:
        raise UsageError(why)
    if args.readme:
        try:
            with open(args.readme, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"--readme {args.readme}: {exc.strerror}") from None
        if not all(m in text for m in markers(MARKER)):
            raise UsageError(f"{args.readme} has no {' ... '.join(markers(MARKER))} markers")
    reports: dict[str, dict[str, Any]] = {}
    for name in names:
        out = os.path.join(args.out, name.replace(" ", "_").replace("-", ""))
        cmd = [sys.executable, "-m", "fastc1k.capacity", "--serve", "--container", args.container,
               *VARIANTS[name], "--out", out, "--no-charts", "--no-png", "--quiet",
               *(["--quick"] if args.quick else []), *args.ramp_arg]
        print(f"{PROG}: {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        path = os.path.join(out, "capacity-report.json")
        if not os.path.exists(path):
            print(f"{PROG}: error: {name} wrote no report (exit {r.returncode}): "
                  f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
            return 1
        with open(path) as f:
            reports[name] = json.load(f)
    result = compare(reports)
    first = next(iter(reports.values()))
    result.update(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  host=f"{first['host']['summary'].split(', Linux')[0]} machine",
                  image=next((v["image_id"][:12] for v in result["variants"].values() if v.get("image_id")), "-"),
                  command=f"python -m fastc1k.capacity netcost --container {args.container}"
                          + (" --quick" if args.quick else "") + "".join(f" --ramp-arg={a}" for a in args.ramp_arg),
                  container=args.container)
    os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
    write_json(result, args.results)
    md = markdown(result)
    print(md)
    if args.readme:
        write_block(args.readme, MARKER, md)
    print(f"{PROG}: {args.results}" + (f", {args.readme}" if args.readme else ""), file=sys.stderr)
    return 0


TOOL = Tool("netcost", PROG, "what a container's network costs: podman -p, --network host and kernel parts",
            __doc__.split("\n\n")[0], add_arguments, run_cli)


def main(argv: Sequence[str] | None = None) -> int:
    return TOOL.main(argv)
