"""Where a real app breaks: `python -m bench.wsgi_capacity` (about 2 minutes with --quick).

The capacity suite (`python -m fastc1k.capacity ramp --serve --runtime kernel`: a cgroup
and a network namespace of the run's own; the podman image holds neither Flask nor this
bench's app) run twice in the same container limits: once against the built-in responder (/api/health), once against a
Flask app served with `--wsgi` (bench/wsgi_app.py; the built-ins stay at the root for the
suite's /metrics, the load asks /hello, which only the app answers). Side by side: the
breaking point, the peak req/s, the first bottleneck and the recovery time. Writes
bench/results/wsgi-capacity.json and the README block between <!-- wsgi-capacity:start -->
and <!-- wsgi-capacity:end -->.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastc1k._readme import write_block

from . import ceiling
from .servers import BENCH

RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"
COMMAND = "PYTHONPATH=src python -m bench.wsgi_capacity"
RUNS = {  # name -> (label, extra capacity-ramp arguments)
    "builtin": ("built-in responder (/api/health)", ["--path", "/api/health"]),
    "flask": ("Flask app via --wsgi (/hello)", ["--server-arg=--wsgi=bench.wsgi_app:flask_app",
                                                 "--server-arg=--builtin-prefix=/", "--path", "/hello"]),
}


def run_one(extra: list[str], container: str, quick: bool, engine: str, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastc1k-wsgi-capacity-") as out:
        cmd = [sys.executable, "-m", "fastc1k.capacity", "ramp", "--serve", "--engine", engine, "--container", container,
               "--runtime", "kernel",
               "--out", out, "--no-charts", "--quiet", *(["--quick"] if quick else []), *extra]
        log("$ " + " ".join(cmd[1:]))
        r = subprocess.run(cmd, cwd=BENCH.parent, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"capacity ramp failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")
        report = json.loads((Path(out) / "capacity-report.json").read_text())
    st, ramp, rec = (report["phases"].get(k, {}) for k in ("stages", "ramp", "recovery"))
    bp, neck = st.get("breaking_point") or {}, ramp.get("bottleneck") or {}
    tried = max((x.get("clients", 0) for x in st.get("stages", []) + st.get("probes", [])), default=0)
    return {"breaking": bp.get("text") or f"did not break up to {tried:,} clients", "max_clients": tried, "last_good_clients": bp.get("last_good_clients"),
            "broken_clients": bp.get("clients"), "reasons": bp.get("reasons", []),
            "peak_rps": st.get("peak_throughput"), "bottleneck": neck.get("resource"),
            "bottleneck_clients": neck.get("clients"), "bottleneck_evidence": neck.get("evidence"),
            "recovery": (rec.get("recovery") or {}).get("label"), "peaks": ramp.get("peaks"),
            "notes": report.get("notes"), "argv": report.get("server", {}).get("argv")}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Measured {m['date_utc']} UTC on {m['cpu']}, {m['cores']} cores, load average "
             f"{' '.join(m['loadavg'])}; container `{report['container']}` (kernel runtime), C engine, 1 worker, capacity ramp "
             f"{'--quick' if report['quick'] else 'default durations'}. `{COMMAND}`", "",
             "| served | breaks (p99 > 1 s or errors) | peak req/s | first bottleneck | recovery |",
             "|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        neck = f"{r['bottleneck']} at {r['bottleneck_clients']:,} clients" if r["bottleneck"] else "none seen"
        lines.append(f"| {RUNS[name][0]} | {r['breaking']} | {r['peak_rps']:,.0f} | {neck} | {r['recovery']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wsgi_capacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--container", default="cpus=0.5,memory=256M")
    ap.add_argument("--engine", choices=("c", "python"), default="c")
    ap.add_argument("--plan", action="store_true", help="the suite's default durations (about 5 min per run) "
                                                         "instead of --quick")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.monotonic()
    report = {"machine": ceiling.machine(), "container": args.container, "engine": args.engine,
              "quick": not args.plan, "runs": {}}
    try:
        for name, (_, extra) in RUNS.items():
            report["runs"][name] = run_one(extra, args.container, not args.plan, args.engine, log)
            log(f"{name}: {report['runs'][name]['breaking']}")
    except RuntimeError as exc:
        print(f"bench.wsgi_capacity: {exc}", file=sys.stderr)
        return 1
    report["command"] = COMMAND
    report["wall_s"] = round(time.monotonic() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wsgi-capacity.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    if not args.no_readme and args.out.resolve() == RESULTS.resolve():
        write_block(str(README), "wsgi-capacity", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
