"""`python -m fastc1k.capacity`: where one server breaks, why, and how fast it recovers.

    python -m fastc1k.capacity --serve                      # starts fastc1k itself, full report in < 5 min
    python -m fastc1k.capacity --serve --container cpus=0.5,memory=256M,nofile=4096,somaxconn=128
    python -m fastc1k.capacity --target http://127.0.0.1:8080 --server-pid 1234
    python -m fastc1k.capacity --replicas 1,2,4 --container cpus=0.25,memory=256M   # scale-out (scaleout.py)
    python -m fastc1k.capacity --max-connections-probe --connections auto          # C1M search (probe.py)

Exit codes: 0 report written; 1 the run failed (server did not start, load worker
failed); 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Any, Sequence
from urllib.parse import urlsplit

from .. import __version__
from .._cli import ArgumentParser, UsageError
from ..host.net import enter_netns, parse_source_ips
from ..host.proc import host_info
from . import analysis as A
from .container import Container, ContainerError, ContainerSpec
from .report import summary_text, write_all
from .stages import DEFAULT_STAGES, RunConfig, Runner, ServerProcess

PROG = "fastc1k.capacity"
PHASES = ("stages", "ramp", "recovery")


def _ints(text: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not v or any(x < 1 for x in v) or list(v) != sorted(set(v)):
        raise argparse.ArgumentTypeError(f"stages must be increasing positive integers, got {text!r}")
    return v


def _p99(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Default durations are the plan's scaled down to fit 5 minutes (stages 5 s, the last "
                       "listed one 10 s, ramp 30 s, blast 10 s); --plan uses the plan's own (10 s, 30 s, 2 min, "
                       "30 s); --quick scales further (CI).")
    t = p.add_argument_group("target (one of)")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--serve", action="store_true", help="start fastc1k (python -m fastc1k.serve) and test it")
    g.add_argument("--target", metavar="URL", help="an external server's root, e.g. http://127.0.0.1:8080")
    t.add_argument("--server-pid", type=int, metavar="PID", help="with --target: monitor this process tree")
    s = p.add_argument_group("the server started by --serve")
    s.add_argument("--engine", choices=("c", "python"), help="default: c when built, else python")
    s.add_argument("--workers", type=int, default=1, help="worker processes [default 1]")
    s.add_argument("--max-connections", type=int, help="per worker (ServerConfig.max_connections)")
    s.add_argument("--backlog", type=int, help="listen backlog (ServerConfig.backlog)")
    s.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to fastc1k.serve (repeatable, e.g. --server-arg=--idle-timeout=5s)")
    s.add_argument("--host-netns", action="store_true",
                   help="run in the host's network namespace; by default --serve runs the server and the load in "
                        "a namespace of their own when permitted (root), so the kernel's TCP counters "
                        "(ListenOverflows, ...) are this run's alone; the host's TCP sysctls are copied in")
    s.add_argument("--container", metavar="SPEC",
                   help="cpus=0.5,memory=256M,nofile=4096,somaxconn=128[,net.*=v][,netns]: cgroup CPU quota and "
                        "memory limit, RLIMIT_NOFILE, own network namespace with its sysctls (root; otherwise a "
                        "note and the run goes on without that part)")
    r = p.add_argument_group("durations and stages")
    r.add_argument("--quick", action="store_true", help="scaled-down durations for CI (about 1 minute)")
    r.add_argument("--plan", action="store_true", help="the plan's durations (about 8 minutes or more)")
    r.add_argument("--phases", default=",".join(PHASES), help=f"which of {','.join(PHASES)} to run [default all]")
    r.add_argument("--stages", type=_ints, help=f"client counts [default {','.join(map(str, DEFAULT_STAGES))}]")
    r.add_argument("--stage-duration", type=int, metavar="S", help="seconds per stage [default 5]")
    r.add_argument("--final-duration", type=int, metavar="S", help="seconds of the last listed stage [default 10]")
    r.add_argument("--growth", type=float, help="past the listed stages, multiply clients by this [default 1.5]")
    r.add_argument("--max-clients", type=int, help="never more clients than this [default 20000, capped by the "
                   "host's ephemeral ports]")
    r.add_argument("--ramp-clients", type=int, help="resource ramp target [default: the last stage's clients]")
    r.add_argument("--ramp-steps", type=int, help="[default 20]")
    r.add_argument("--ramp-duration", type=float, metavar="S", help="[default 30]")
    r.add_argument("--ramp-rate", type=float, metavar="REQ/S",
                   help="resource ramp at this total request rate (open loop) instead of closed loop: shows "
                        "per-connection limits (fds, memory) before CPU")
    r.add_argument("--blast-factor", type=float, help="blast at this times the breaking point [default 2]")
    r.add_argument("--blast-duration", type=int, metavar="S", help="[default 10]")
    r.add_argument("--recovery-clients", type=int, help="[default 100]")
    r.add_argument("--recovery-window", type=int, metavar="S", help="seconds to watch for recovery [default 15]")
    h = p.add_argument_group("thresholds")
    h.add_argument("--break-error-rate", type=float, help="a stage is broken past this [default 0.5]")
    h.add_argument("--break-p99-ms", type=_p99, default="1000", help="... or with p99 over this ('none': never) "
                   "[default 1000]")
    h.add_argument("--stop-error-rate", type=float, help="stop ramping past this [default 0.9]")
    lg = p.add_argument_group("load generator (fastc1k.load)")
    lg.add_argument("--processes", type=int, help="load processes [default: one per 15,000 clients]")
    lg.add_argument("--source-ips", help="source addresses, e.g. 127.0.0.1-127.0.0.16 ('none': the kernel's "
                    "choice) [default: 127.0.0.1-127.0.0.8 against a loopback target: 8x the ephemeral ports]")
    lg.add_argument("--connect-timeout", type=float, help="[default 2]")
    lg.add_argument("--request-timeout", type=float, help="[default 5]")
    lg.add_argument("--path", help="request path [default /api/health]")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=".", metavar="DIR", help="where the reports go [default .]")
    o.add_argument("--no-png", action="store_true", help="no PNG files (the HTML embeds its charts anyway)")
    o.add_argument("--no-charts", action="store_true", help="no charts at all (faster; JSON, summary and tables)")
    o.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--version", action="version", version=f"fastc1k {__version__}")
    return p


def run_config(args: argparse.Namespace) -> RunConfig:
    if args.quick and args.plan:
        raise UsageError("--quick and --plan exclude each other")
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        raise UsageError(f"--phases: choose from {','.join(PHASES)}, got {args.phases!r}")
    th = A.Thresholds(break_p99_ms=args.break_p99_ms)
    for flag, name in (("break_error_rate", "break_error_rate"), ("stop_error_rate", "stop_error_rate")):
        v = getattr(args, flag)
        if v is not None:
            if not 0 < v <= 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be in (0, 1], got {v}")
            setattr(th, name, v)
    kw: dict[str, Any] = {"phases": phases, "thresholds": th}
    if args.source_ips is not None and args.source_ips.lower() == "none":
        kw["source_ips"] = None
        args.source_ips = None
    for flag, name in (("stages", "stages"), ("stage_duration", "stage_s"), ("final_duration", "final_stage_s"),
                       ("growth", "growth"), ("max_clients", "max_clients"), ("ramp_clients", "ramp_clients"),
                       ("ramp_steps", "ramp_steps"), ("ramp_duration", "ramp_s"), ("ramp_rate", "ramp_rate"),
                       ("blast_factor", "blast_factor"), ("blast_duration", "blast_s"),
                       ("recovery_clients", "recovery_clients"), ("recovery_window", "recovery_window_s"),
                       ("processes", "processes"), ("source_ips", "source_ips"),
                       ("connect_timeout", "connect_timeout"), ("request_timeout", "request_timeout"),
                       ("path", "path")):
        v = getattr(args, flag)
        if v is not None:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
                raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {v}")
            kw[name] = v
    if kw.get("source_ips"):
        try:
            parse_source_ips(kw["source_ips"])
        except ValueError as exc:
            raise UsageError(f"--source-ips: {exc}") from None
    if kw.get("growth") is not None and kw["growth"] <= 1:
        raise UsageError("--growth must be > 1")
    maker = RunConfig.quick if args.quick else RunConfig.plan if args.plan else RunConfig
    return maker(**kw)


class Progress:
    """One live line on a terminal (rewritten), a line every 5 s otherwise."""

    def __init__(self, stream=sys.stderr, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
        self._last = 0.0

    def __call__(self, st: dict[str, Any]) -> None:
        if self.quiet:
            return
        where = st["phase"] + (f" {st['stage']}" if "stage" in st else "") + (f" step {st['step']}" if "step" in st else "")
        p99 = "-" if st.get("p99_ms") is None else f"{st['p99_ms']:.1f} ms"
        line = (f"[{st['elapsed']:5.0f}s / ~{st['elapsed'] + st['remaining']:.0f}s] {where:<14} "
                f"clients {st['clients']:>6}  {st['rps']:>8.0f} req/s  p99 {p99:>10}  "
                f"errors {st['errors']:>6} ({100 * st['error_rate']:.1f}%)")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            self.stream.flush()
        elif time.monotonic() - self._last >= 5:
            self._last = time.monotonic()
            print(line, file=self.stream, flush=True)

    def done(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--replicas" or a.startswith("--replicas=") for a in argv):
        # N replicas behind a balancer: the scale-out run (it starts the servers itself)
        from .scaleout import main as scaleout_main
        return scaleout_main([a for a in argv if a != "--serve"])
    if "--max-connections-probe" in argv:
        # how many concurrent keep-alive connections this host holds (probe.py): its own flags
        from .probe import main as probe_main
        return probe_main([a for a in argv if a not in ("--max-connections-probe", "--serve")])
    try:
        args = build_parser().parse_args(argv)
        cfg = run_config(args)
        spec = ContainerSpec.parse(args.container)
        if args.target:
            u = urlsplit(args.target)
            if u.scheme != "http" or not u.hostname:
                raise UsageError(f"--target must be an http:// URL, got {args.target!r}")
            if args.container:
                raise UsageError("--container applies to the server that --serve starts, not to --target")
        elif args.server_pid:
            raise UsageError("--server-pid goes with --target")
        if args.workers < 1:
            raise UsageError("--workers must be >= 1")
    except (UsageError, ContainerError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    notes: list[str] = []
    load = os.getloadavg()[0]
    ncpu = len(os.sched_getaffinity(0))
    if load > 0.5 * ncpu:
        notes.append(f"the machine was busy at the start (load average {load:.2f} on {ncpu} CPUs): absolute "
                     f"figures are noisy")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    in_netns = False
    if spec.netns and args.host_netns:
        print(f"{PROG}: error: --host-netns contradicts --container {args.container}", file=sys.stderr)
        return 2
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
            if args.max_connections:
                extra += ["--max-connections", str(args.max_connections)]
            if args.backlog:
                extra += ["--backlog", str(args.backlog)]
            engine = args.engine
            if engine is None:
                from .._compat import c_available
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
        runner = Runner(url, cfg, server=server, container=container, progress=progress,
                        server_pid=args.server_pid, own_netns=in_netns)
        if not args.quiet:
            print(f"{PROG}: {', '.join(cfg.phases)} against {url}, about {runner.planned_s:.0f} s of load",
                  file=sys.stderr)
        out = runner.run()
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


if __name__ == "__main__":
    sys.exit(main())
