"""The ramp's run: the network namespace and the container, the server, the Runner's three
phases (stages, resource ramp, blast and recovery), and the report."""
from __future__ import annotations

import argparse
import copy
import datetime
import sys
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

from ... import __version__
from ..._compat import c_available
from ...host.net import enter_netns
from ...host.proc import host_info
from ..console import Progress, busy_note
from ..._cli import UsageError
from ..container import Container, ContainerSpec
from ..nginx import NginxProcess
from ..podman import PodmanError, PodmanServer, choose_runtime, conntrack_for_run, remove_run
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


def outside_container(samples: list[dict[str, Any]]) -> list[int]:
    """The server processes any sample found outside the container's cgroup (none: every
    process, master and workers, ran under its limits)."""
    return sorted({p for s in samples for p in s.get("outside_container", ())})


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
                       "startup_line": other.startup_line}, "phases": phases,
            "outside_container": outside_container(r["samples"]), **r}


def _podman_start(args: argparse.Namespace, spec: ContainerSpec, extra: list[str], max_clients: int,
                  stack: ExitStack) -> tuple[PodmanServer, dict[str, Any], conntrack_for_run]:
    """The server in the image under podman, the conntrack table sized for the run (each
    client's connection, and as many again lingering after a reconnect, twice over)."""
    server = PodmanServer(spec, network=args.network, workers=args.workers, extra=extra, image=args.image)
    ct = stack.enter_context(conntrack_for_run(4 * max_clients))
    stack.callback(remove_run, server.run_id)   # whatever the run created, also on ^C
    stack.callback(server.stop)
    server.start()
    rt = {"name": "podman", "image": args.image, "image_id": server.image_id, "network": args.network,
          "url": server.url, "applied": server.applied, "refused": server.refused, "argv": server.argv}
    return server, rt, ct


def run_ramp(args: argparse.Namespace, cfg: RunConfig, spec: ContainerSpec) -> int:
    """The whole run from validated arguments; its exit status."""
    notes: list[str] = [n for n in (busy_note(),) if n]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runtime, chose = "kernel", None
    if args.versus and args.runtime == "podman":
        raise UsageError("--versus runs nginx in the kernel-parts container beside fastc1k: use --runtime kernel")
    if args.versus and args.runtime == "auto" and args.container:
        runtime, chose = "kernel", "runtime auto: kernel parts, since --versus runs nginx in the same container"
    elif args.serve and (args.container or args.runtime == "podman"):
        try:
            runtime, chose = choose_runtime(args.runtime, args.image)
        except PodmanError as exc:
            raise UsageError(str(exc)) from None
    if chose and not args.quiet:
        print(f"{PROG}: {chose}", file=sys.stderr)
    in_netns = False
    if runtime == "kernel" and (spec.netns or (args.serve and not args.host_netns)):
        # Before any thread or child: the whole run lives in the namespace's loopback.
        in_netns, n = enter_netns(spec.sysctls)
        if spec.netns:
            notes += n
        elif not in_netns:
            notes.append("kernel counters (ListenOverflows, ...) are host-wide: other processes' listeners "
                         "count too (an own network namespace needs root)")
    container = Container(spec).setup() if args.serve and runtime == "kernel" else None
    if container:
        notes += container.notes
    server = None
    rt: dict[str, Any] = {"name": runtime if args.serve else None, "chosen": chose}
    ct = None
    progress = Progress(quiet=args.quiet)
    stack = ExitStack()
    try:
        if args.serve:
            extra = list(args.server_arg)
            extra += ["--max-connections", args.max_connections]
            if args.backlog:
                extra += ["--backlog", str(args.backlog)]
            engine = args.engine
            if engine is None and runtime == "kernel":
                engine = "c" if c_available() else "python"
                if engine == "python":
                    notes.append("the C engine is not built: testing the pure-Python engine")
            if runtime == "podman":
                server, more, ct = _podman_start(args, spec, extra + (["--engine", engine] if engine else []),
                                             cfg.max_clients, stack)
                rt.update(more)
                container = server
                engine = engine or "c"   # the image's wheel has the C engine (its build checks)
            else:
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
        if runtime == "podman" and args.network == "publish" and cfg.source_ips == "auto":
            # netavark masquerades only connections from 127.0.0.1 to a port published there:
            # from 127.0.0.2+ they are DNATed but answered to an address the container does
            # not route back (connect time-outs). One source address: ~28,000 ports.
            cfg.source_ips = None
            notes.append("podman -p: the load comes from 127.0.0.1 alone (netavark masquerades only it)")
        runner = Runner(url, cfg, server=server, container=container, progress=progress,
                        server_pid=args.server_pid, own_netns=in_netns)
        if runtime == "podman" and args.network == "publish":
            # the server's listen queue is in the container's namespace: its counters are read there
            runner.monitor.netns_pid, runner.monitor.own_netns = server.pid, True
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
        stack.close()
        if ct is not None:
            rt["conntrack"] = ct.how   # as it ended (restored, or why not)
        if container is not None and runtime == "kernel":
            container.cleanup()
    progress.done()
    notes += out.pop("notes")
    if container and runtime == "kernel":
        notes += [n for n in container.notes if n not in notes]
    oom = max((s.get("oom_kills") or 0 for s in out["samples"]), default=0)
    oom_at = next(({"t": round(s["t"], 2), "clients": s["clients"]} for s in out["samples"] if s.get("oom_kills")),
                  None)
    if runtime == "podman":
        oom = max(oom, server.final.get("oom_kills") or 0)
        rt["final"] = server.final
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
                      "cgroup": getattr(container, "version", None) if runtime == "kernel" else runtime,
                      "netns": in_netns, "outside": outside_container(out["samples"])},
        "runtime": rt, "oom_kills": oom, "oom_at": oom_at,
        "host": host_info(), "config": cfg.as_dict(), "thresholds": cfg.as_dict()["thresholds"],
        "notes": notes, "phases": phases, **out,
    }
    paths = write_all(report, args.out, pngs=not args.no_png, charts=not args.no_charts)
    print(summary_text(report))
    print(f"\nreports: {paths['json']}, {paths['html']}" +
          (f" (+ {len(paths) - 2} PNGs)" if len(paths) > 2 else ""))
    return 1 if report.get("aborted") else 0
