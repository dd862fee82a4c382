"""`python -m fastc1k.capacity ramp`: where one server breaks, why, and how fast it recovers.

    python -m fastc1k.capacity ramp --serve                 # starts fastc1k itself, full report in < 5 min
    python -m fastc1k.capacity ramp --serve --container cpus=0.5,memory=256M,nofile=4096,somaxconn=128
    python -m fastc1k.capacity ramp --serve --runtime podman --container cpus=0.5,memory=256M   # the image, by podman
    python -m fastc1k.capacity ramp --target http://127.0.0.1:8080 --server-pid 1234
    python -m fastc1k.capacity --serve ...                  # the same (today's form: ramp is the default)

Exit codes: 0 report written; 1 the run failed (server did not start, load worker
failed); 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence
from urllib.parse import urlsplit

from ... import __version__
from ..._cli import UsageError
from ...host.net import parse_source_ips
from .. import analysis as A
from ..console import Tool, p99_limit, stage_list
from ..container import ContainerError, ContainerSpec
from ..nginx import nginx_missing
from ..podman import IMAGE, NETWORKS, RUNTIMES
from ..stages import DEFAULT_STAGES, RunConfig
from .run import PHASES, PROG, run_ramp

__all__ = ["TOOL", "main", "add_arguments", "run_config"]


def ramp_rate(text: str) -> float | str:
    """--ramp-rate: requests/s at the top of the ramp, 'auto' or 'closed'."""
    if text.lower() in ("auto", "closed"):
        return text.lower()
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, closed or requests/s, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def max_connections(text: str) -> str:
    if text.lower() != "auto" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}")
    return text.lower()


def add_arguments(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("target (one of)")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--serve", action="store_true", help="start fastc1k (python -m fastc1k.serve) and test it")
    g.add_argument("--target", metavar="URL", help="an external server's root, e.g. http://127.0.0.1:8080")
    t.add_argument("--server-pid", type=int, metavar="PID", help="with --target: monitor this process tree")
    s = p.add_argument_group("the server started by --serve")
    s.add_argument("--engine", choices=("c", "python"), help="default: c when built, else python")
    s.add_argument("--workers", type=int, default=1, help="worker processes [default 1]")
    s.add_argument("--max-connections", type=max_connections, default="auto",
                   help="per worker (ServerConfig.max_connections) [default auto: sized from the fd limit, so "
                        "that the container's limits, not the server's configured cap, are what is measured]")
    s.add_argument("--backlog", type=int, help="listen backlog (ServerConfig.backlog)")
    s.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to fastc1k.serve (repeatable, e.g. --server-arg=--idle-timeout=5s)")
    s.add_argument("--host-netns", action="store_true",
                   help="run in the host's network namespace; by default --serve runs the server and the load in "
                        "a namespace of their own when permitted (root), so the kernel's TCP counters "
                        "(ListenOverflows, ...) are this run's alone; the host's TCP sysctls are copied in")
    s.add_argument("--versus", choices=("nginx",),
                   help="then run the same plan against nginx (Debian's, a config the suite writes with the "
                        "same routes and limits) under the same container limits, and report both side by side")
    s.add_argument("--container", metavar="SPEC",
                   help="cpus=0.5,memory=256M,nofile=4096,somaxconn=128[,net.*=v][,netns]: cgroup CPU quota and "
                        "memory limit, RLIMIT_NOFILE, own network namespace with its sysctls (root; otherwise a "
                        "note and the run goes on without that part)")
    s.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what makes the --container: podman (the image of `make image`, limits as podman flags, "
                        "its port published on 127.0.0.1), kernel (a cgroup, RLIMIT_NOFILE and a namespace of the "
                        "run's own), auto: podman where it is installed and runs, else kernel [default auto]")
    s.add_argument("--network", choices=NETWORKS, default="publish",
                   help="podman: publish (-p 127.0.0.1::8080: bridge, DNAT, conntrack) or host (--network host) "
                        "[default publish]")
    s.add_argument("--image", default=IMAGE, help=f"podman: the image [default {IMAGE}]")
    r = p.add_argument_group("durations and stages")
    r.add_argument("--quick", action="store_true", help="scaled-down durations for CI (about 1 minute)")
    r.add_argument("--plan", action="store_true", help="the plan's durations (about 8 minutes or more)")
    r.add_argument("--phases", default=",".join(PHASES), help=f"which of {','.join(PHASES)} to run [default all]")
    r.add_argument("--stages", type=stage_list, help=f"client counts [default {','.join(map(str, DEFAULT_STAGES))}]")
    r.add_argument("--stage-duration", type=int, metavar="S", help="seconds per stage [default 5]")
    r.add_argument("--final-duration", type=int, metavar="S", help="seconds of the last listed stage [default 10]")
    r.add_argument("--growth", type=float, help="past the listed stages, multiply clients by this [default 1.5]")
    r.add_argument("--max-clients", type=int, help="never more clients than this [default 20000, capped by the "
                   "host's ephemeral ports]")
    r.add_argument("--ramp-clients", type=int, help="resource ramp target [default: the last stage's clients]")
    r.add_argument("--ramp-steps", type=int, help="[default 20]")
    r.add_argument("--ramp-duration", type=float, metavar="S", help="[default 30]")
    r.add_argument("--ramp-rate", type=ramp_rate, metavar="REQ/S",
                   help="the resource ramp is open loop, its rate rising with the clients to this many "
                        "requests/s at the top, so per-connection limits (fds, memory, listen queue) show "
                        "before CPU; 'closed': closed loop [default auto: half the stages' peak throughput]")
    r.add_argument("--precision", type=float, metavar="FRACTION",
                   help="bisect the breaking point until its bracket is this narrow [default 0.05]")
    r.add_argument("--probe-duration", type=int, metavar="S",
                   help="seconds measured per bisection probe (after 1 s to settle) [default 3]")
    r.add_argument("--blast-factor", type=float, help="blast at this times the breaking point [default 2]")
    r.add_argument("--blast-duration", type=int, metavar="S", help="[default 10]")
    r.add_argument("--recovery-clients", type=int, help="[default 10 %% of the breaking point, at least 100]")
    r.add_argument("--recovery-window", type=int, metavar="S", help="seconds to watch for recovery [default 15]")
    h = p.add_argument_group("thresholds")
    h.add_argument("--break-error-rate", type=float, help="a stage is broken past this [default 0.5]")
    h.add_argument("--break-p99-ms", type=p99_limit, default="1000", help="... or with p99 over this ('none': never) "
                   "[default 1000]")
    h.add_argument("--stop-error-rate", type=float, help="stop ramping past this [default 0.9]")
    lg = p.add_argument_group("load generator (fastc1k.load)")
    lg.add_argument("--processes", type=int, help="load processes [default: one per 15,000 clients]")
    lg.add_argument("--source-ips", help="source addresses, e.g. 127.0.0.1-127.0.0.16 ('none': the kernel's "
                    "choice) [default: 127.0.0.1-127.0.0.8 against a loopback target: 8x the ephemeral ports]")
    lg.add_argument("--cluster", metavar="tcp://HOST:8786", help="run the load on this Dask scheduler's workers "
                    "(pip install 'fastc1k[cluster]'; --processes: in all, default one per worker core)")
    lg.add_argument("--connect-timeout", type=float, help="[default 2]")
    lg.add_argument("--request-timeout", type=float, help="[default 5]")
    lg.add_argument("--path", help="request path [default /api/health]")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=".", metavar="DIR", help="where the reports go [default .]")
    o.add_argument("--no-png", action="store_true", help="no PNG files (the HTML embeds its charts anyway)")
    o.add_argument("--no-charts", action="store_true", help="no charts at all (faster; JSON, summary and tables)")
    o.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--version", action="version", version=f"fastc1k {__version__}")


def run_config(args: argparse.Namespace) -> RunConfig:
    if args.quick and args.plan:
        raise UsageError("--quick and --plan exclude each other")
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    bad = [x for x in phases if x not in PHASES]
    if bad or not phases:
        raise UsageError(f"--phases: choose from {','.join(PHASES)}, got {args.phases!r}")
    th = A.Thresholds(break_p99_ms=args.break_p99_ms)
    for flag, name in (("break_error_rate", "break_error_rate"), ("stop_error_rate", "stop_error_rate"),
                       ("precision", "precision")):
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
                       ("processes", "processes"), ("source_ips", "source_ips"), ("cluster", "cluster"),
                       ("connect_timeout", "connect_timeout"), ("request_timeout", "request_timeout"),
                       ("path", "path"), ("probe_duration", "probe_s")):
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


def run_cli(args: argparse.Namespace) -> int:
    try:
        cfg = run_config(args)
        spec = ContainerSpec.parse(args.container)
    except ContainerError as exc:
        raise UsageError(str(exc)) from None
    if args.target:
        u = urlsplit(args.target)
        if u.scheme != "http" or not u.hostname:
            raise UsageError(f"--target must be an http:// URL, got {args.target!r}")
        if args.container:
            raise UsageError("--container applies to the server that --serve starts, not to --target")
    elif args.server_pid:
        raise UsageError("--server-pid goes with --target")
    if args.versus and not args.serve:
        raise UsageError("--versus runs the plan against a server the suite starts: use it with --serve")
    if args.versus and nginx_missing():
        raise UsageError(f"--versus nginx: {nginx_missing()}")
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if cfg.cluster:
        from ...load.cluster import ClusterError, preflight
        if args.source_ips:
            raise UsageError("--source-ips: on a cluster each load machine declares its own (FASTC1K_SOURCE_IPS)")
        try:
            preflight(cfg.cluster)
        except ClusterError as exc:
            raise UsageError(str(exc)) from None
    if spec.netns and args.host_netns:
        raise UsageError(f"--host-netns contradicts --container {args.container}")
    if args.target and args.runtime == "podman":
        raise UsageError("--runtime podman starts the server: it goes with --serve, not --target")
    if args.network != "publish" and args.runtime == "kernel":
        raise UsageError(f"--network {args.network} is podman's: --runtime kernel has its own namespace")
    return run_ramp(args, cfg, spec)


TOOL = Tool("ramp", PROG, "stages, resource ramp, blast and recovery against one server (the default)",
            "Where one server breaks, why, and how fast it recovers: clients ramped in stages against a server "
            "(optionally inside a resource-limited container), its resources sampled every 100 ms; the breaking "
            "point, the degradation curve, the first bottleneck and the recovery time as JSON, a terminal summary "
            "and an HTML report with charts.",
            add_arguments, run_cli,
            epilog="Default durations are the plan's scaled down to fit 5 minutes (stages 5 s, the last listed one "
                   "10 s, ramp 30 s, blast 10 s); --plan uses the plan's own (10 s, 30 s, 2 min, 30 s); --quick "
                   "scales further (CI).")


def main(argv: Sequence[str] | None = None) -> int:
    return TOOL.main(argv)
