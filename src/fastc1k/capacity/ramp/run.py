"""The ramp's run: the network namespace and the container, the server, the Runner's three
phases (stages, resource ramp, blast and recovery), and the report."""
from __future__ import annotations

import argparse
import copy
import datetime
import sys
from typing import Any
from urllib.parse import urlsplit

from ... import __version__
from ..._compat import c_available
from ...host.net import enter_netns
from ...host.proc import host_info
from ..console import Progress, busy_note
from ..container import Container, ContainerSpec
from ..nginx import NginxProcess
from ..report import summary_text, write_all
from ..stages import RunConfig, Runner, ServerProcess

__all__ = ["PROG", "PHASES", "run_ramp"]

PROG = "fastc1k.capacity"
PHASES = ("stages", "ramp", "recovery")


def _peaks(samples: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    sm = [s for s in samples if t0 <= s["t"] <= t1 + 0.5 and "cpu_used" in s]
    if not sm:
        return {}
    top = max(sm, key=lambda s: s["fds"] or 0)
    return {"cpu_cores": max(s["cpu_used"] for s in sm),
            "cpu_demand_cores": round(max(s["cpu_used"] + (s.get("cpu_wait") or 0) for s in sm), 3),
            "rss_mib": round(max(s["rss"] for s in sm) / 2**20, 1),
            "fds": f"{top['fds']}/{top['fd_limit']}",
            "listen_overflows": max(s.get("listen_overflows", 0) for s in sm),
            "loop_lag_p99_us": max((s.get("server") or {}).get("fastc1k_loop_lag_p99_us", 0) for s in sm)}


def run_versus(args: argparse.Namespace, plan: RunConfig, container: Any, progress: Any,
               in_netns: bool) -> dict[str, Any]:
    """The same plan against nginx, in the same container and namespace, after fastc1k."""
    other = NginxProcess(args.workers, container.preexec() if container else None)
    try:
        other.start()
        if not args.quiet:
            print(other.startup_line, file=sys.stderr)
        r = Runner(other.url, plan, server=other, container=container, progress=progress, metrics=False,
                   own_netns=in_netns).run()
    except RuntimeError as exc:
        return {"server": {"name": "nginx"}, "error": f"nginx run failed: {exc}", "phases": {}}
    finally:
        other.stop()
    phases = {k: r.pop(k) for k in PHASES if k in r}
    return {"server": {"name": "nginx", "workers": args.workers, "argv": other.argv,
                       "startup_line": other.startup_line}, "phases": phases, **r}


def run_ramp(args: argparse.Namespace, cfg: RunConfig, spec: ContainerSpec) -> int:
    """The whole run from validated arguments; its exit status."""
    notes: list[str] = [n for n in (busy_note(),) if n]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    in_netns = False
    if spec.netns or (args.serve and not args.host_netns):
        # Before any thread or child: the whole run lives in the namespace's loopback.
        in_netns, n = enter_netns(spec.sysctls)
        if spec.netns:
            notes += n
        elif not in_netns:
            notes.append("kernel counters (ListenOverflows, ...) are host-wide: other processes' listeners "
                         "count too (an own network namespace needs root)")
    container = Container(spec).setup() if args.serve else None
    if container:
        notes += container.notes
    server = None
    progress = Progress(quiet=args.quiet)
    try:
        if args.serve:
            extra = list(args.server_arg)
            extra += ["--max-connections", args.max_connections]
            if args.backlog:
                extra += ["--backlog", str(args.backlog)]
            engine = args.engine
            if engine is None:
                engine = "c" if c_available() else "python"
                if engine == "python":
                    notes.append("the C engine is not built: testing the pure-Python engine")
            server = ServerProcess(engine, args.workers, extra, container.preexec() if container else None).start()
            url = server.url
            if not args.quiet:
                print(server.startup_line, file=sys.stderr)
        else:
            url = args.target.rstrip("/")
            if urlsplit(url).path not in ("", "/"):
                url = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
                notes.append(f"--target is the server root; requests go to {cfg.path}")
        plan = copy.deepcopy(cfg)    # the same plan for the --versus server (a Runner fills in its cfg)
        runner = Runner(url, cfg, server=server, container=container, progress=progress,
                        server_pid=args.server_pid, own_netns=in_netns)
        if not args.quiet:
            print(f"{PROG}: {', '.join(cfg.phases)} against {url}, about {runner.planned_s:.0f} s of load"
                  + (f" (then the same against {args.versus})" if args.versus else ""), file=sys.stderr)
        out = runner.run()
        if args.versus:
            server.stop()
            out["versus"] = {args.versus: run_versus(args, plan, container, progress, in_netns)}
    except (RuntimeError, OSError, ValueError) as exc:
        progress.done()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        if container is not None:
            container.cleanup()
    progress.done()
    notes += out.pop("notes")
    if container:
        notes += [n for n in container.notes if n not in notes]
    phases = {k: out.pop(k) for k in PHASES if k in out}
    for name, ph in phases.items():
        ls = ph.get("load_summary") or {}
        if ls.get("generator_bottleneck"):
            notes.append(f"{name}: the load generator was itself a bottleneck ({ls.get('generator_bottleneck_why')})")
    if "ramp" in phases:
        phases["ramp"]["peaks"] = _peaks(out["samples"], phases["ramp"]["t0"], phases["ramp"]["t1"])
    report = {
        "tool": PROG, "version": __version__, "started": started, "target": url,
        "server": ({"engine": engine, "workers": args.workers, "argv": server.argv, "startup_line": server.startup_line}
                   if server else ({"pid": args.server_pid} if args.server_pid else None)),
        "container": {**spec.describe(), "applied": (container.applied if container else {}),
                      "cgroup": container.version if container else None, "netns": in_netns},
        "host": host_info(), "config": cfg.as_dict(), "thresholds": cfg.as_dict()["thresholds"],
        "notes": notes, "phases": phases, **out,
    }
    paths = write_all(report, args.out, pngs=not args.no_png, charts=not args.no_charts)
    print(summary_text(report))
    print(f"\nreports: {paths['json']}, {paths['html']}" +
          (f" (+ {len(paths) - 2} PNGs)" if len(paths) > 2 else ""))
    return 1 if report.get("aborted") else 0
