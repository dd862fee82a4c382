"""`python -m fastc1k.capacity scaleout`: the scale-out tool's arguments and its run.

    python -m fastc1k.capacity scaleout --replicas 1,2,4 --container cpus=0.25,memory=256M
    python -m fastc1k.capacity --replicas 1,2,4 ...        # the same (today's form)
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Sequence

from ... import __version__
from ..._cli import UsageError
from .. import analysis as A
from ..console import Progress, Tool, p99_limit, stage_list
from ..container import ContainerSpec
from ..podman import IMAGE, RUNTIMES, PodmanError, choose_runtime
from ..stages import RunConfig
from .balancer import ALGORITHMS, BalancerSpec
from .config import DEFAULT_BREAK_P99_MS, PROG, ScaleoutConfig
from .fleet import privileges, stop_all
from .kscale import NeedsRoot, main_compare, require_root, side_by_side, teardown_all
from .report import summary_text, write_reports
from .run import run

__all__ = ["TOOL", "main", "add_arguments", "config_from", "replica_counts"]


def replica_counts(text: str) -> tuple[int, ...]:
    try:
        v = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not v or any(x < 1 or x > 63 for x in v) or list(v) != sorted(set(v)):
        raise argparse.ArgumentTypeError(f"replica counts must be increasing, 1..63, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=replica_counts, default=(1, 2, 4), help="replica counts [default 1,2,4]")
    p.add_argument("--container", default="cpus=0.25,memory=256M",
                   help="each replica's limits, as the capacity suite's --container [default cpus=0.25,memory=256M]")
    p.add_argument("--engine", choices=("c", "python"), help="default: c when built")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="passed to fastc1k.serve")
    p.add_argument("--balancer", default="haproxy", metavar="LIST",
                   help="haproxy or nginx (with --mode), or a comma-separated list of kernel, haproxy-http, "
                        "haproxy-tcp, nginx run side by side behind a node namespace (needs root) [haproxy]")
    p.add_argument("--balance", choices=ALGORITHMS, default="leastconn",
                   help="[leastconn: routes around a hung replica before its health check does]")
    p.add_argument("--mode", choices=("http", "tcp"), default="http",
                   help="balance requests (L7, http) or connections (L4, tcp: cheaper, no retries) [http]")
    p.add_argument("--check-interval", type=int, default=1000, metavar="MS", help="health check every MS [1000]")
    p.add_argument("--retries", type=int, default=3,
                   help="balancer retries of a failed idempotent request on another server [3; 0: none, so a "
                        "killed replica's in-flight requests fail]")
    p.add_argument("--maxconn", type=int, default=9000, help="balancer maxconn [9000: ~2 fds each, 20,000 max]")
    p.add_argument("--no-pin", action="store_true", help="do not pin the balancer to its own core")
    p.add_argument("--host-net", action="store_true", help="replicas on 127.0.0.x even when namespaces are permitted")
    p.add_argument("--runtime", choices=RUNTIMES, default="kernel",
                   help="what a replica is: kernel (a process in cgroups of the run's own), podman (a container of "
                        "the image of `make image`, its limits as podman flags, in the replica's namespace), auto: "
                        "podman where it is installed and runs, else kernel [default kernel: the figures in the "
                        "README are kernel parts', and a run should not change with whether an image is built]")
    p.add_argument("--image", default=IMAGE, help=f"podman: the image [default {IMAGE}]")
    r = p.add_argument_group("the ramp (per replica count)")
    r.add_argument("--quick", action="store_true", help="short stages (CI)")
    r.add_argument("--stages", type=stage_list, help="client counts [default 100,250,500,750,1000, then x1.5]")
    r.add_argument("--stage-duration", type=int, metavar="S", help="[default 3]")
    r.add_argument("--max-clients", type=int, help="[default 8000: the balancer's maxconn bounds the rest]")
    r.add_argument("--break-p99-ms", type=p99_limit, default=str(DEFAULT_BREAK_P99_MS),
                   help=f"a stage is broken with p99 over this [default {DEFAULT_BREAK_P99_MS:g}]")
    r.add_argument("--no-recovery", action="store_true", help="skip the blast and recovery per replica count")
    f = p.add_argument_group("fault injection")
    f.add_argument("--fault", default="kill", metavar="LIST",
                   help="kill, freeze, none, or kill,freeze (side by side: each, behind each balancer) [kill]")
    f.add_argument("--fault-replicas", type=int, help="[default: the largest count]")
    f.add_argument("--fault-clients", type=int, help="[default: what one replica held]")
    f.add_argument("--fault-duration", type=int, default=10, metavar="S", help="seconds after the fault [10]")
    o = p.add_argument_group("output")
    k = p.add_argument_group("the kernel balancer (--balancer kernel,...)")
    k.add_argument("--pick", choices=("random", "inc"), default="random",
                   help="numgen mode: random (kube-proxy's) or inc (round robin) [random]")
    k.add_argument("--probe", default="100,200,2", metavar="MS,MS,N",
                   help="readiness probe interval, time-out (ms), failures to remove [100,200,2]")
    k.add_argument("--conntrack-max", type=int, metavar="N",
                   help="set nf_conntrack_max to N for the run [default: raised to 4 x --max-clients if below]")
    o.add_argument("--out", default=".", metavar="DIR")
    o.add_argument("--readme", metavar="FILE",
                   help="side by side: also rewrite the block between <!-- scaleout:start/end --> in FILE")
    o.add_argument("--no-charts", action="store_true")
    o.add_argument("--quiet", action="store_true")
    p.add_argument("--version", action="version", version=f"fastc1k {__version__}")


def config_from(args: argparse.Namespace) -> ScaleoutConfig:
    spec = ContainerSpec.parse(args.container)
    th = A.Thresholds(break_p99_ms=args.break_p99_ms)
    kw: dict[str, Any] = dict(phases=("stages",) if args.no_recovery else ("stages", "recovery"),
                              stages=(100, 250, 500, 750, 1000), stage_s=3, final_stage_s=3, blast_s=5,
                              recovery_window_s=8, max_clients=8000, thresholds=th)
    if args.quick:
        kw.update(stage_s=2, final_stage_s=2, blast_s=3, recovery_window_s=5)
    if args.stages:
        kw["stages"] = args.stages
    if args.stage_duration:
        kw["stage_s"] = kw["final_stage_s"] = args.stage_duration
    if args.max_clients:
        kw["max_clients"] = args.max_clients
    if args.maxconn < 100 or args.maxconn > 9900:
        raise UsageError("--maxconn must be 100..9900 (two fds per connection, 20,000 fds per process)")
    if args.fault_replicas is not None and args.fault_replicas < 2:
        raise UsageError("--fault-replicas must be >= 2 (one is killed, the others must take the load)")
    side = side_by_side(args)
    fault = args.fault if not side else (side[1] or ("none",))[0]
    if not side and fault not in ("kill", "freeze", "none"):
        raise UsageError(f"--fault must be kill, freeze or none with one balancer, not {fault!r}")
    bs = BalancerSpec(kind=args.balancer if not side else "haproxy", mode=args.mode, algorithm=args.balance, maxconn=args.maxconn,
                      check_inter_ms=args.check_interval, retries=args.retries).validate()
    return ScaleoutConfig(replicas=args.replicas, container=spec, engine=args.engine, balancer=bs,
                          run=RunConfig(**kw), fault=fault, fault_replicas=args.fault_replicas,
                          fault_clients=args.fault_clients, fault_after_s=args.fault_duration,
                          use_netns=not args.host_net, pin=not args.no_pin, server_args=list(args.server_arg),
                          runtime=args.runtime, image=args.image)


def run_cli(args: argparse.Namespace) -> int:
    try:
        cfg = config_from(args)
    except ValueError as exc:   # ContainerError, a bad balancer spec
        raise UsageError(str(exc)) from None
    try:
        cfg.runtime, chose = choose_runtime(cfg.runtime, cfg.image)
    except PodmanError as exc:
        raise UsageError(str(exc)) from None
    if chose and not args.quiet:
        print(f"{PROG}: {chose}", file=sys.stderr)
    side = side_by_side(args)
    if side:
        try:
            require_root()
        except NeedsRoot as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
    # SIGTERM: unwind through the finally below (atexit alone does not run on a signal)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    priv = privileges()
    if priv["missing"]:   # even with --quiet: the figures mean something else without them
        print(f"{PROG}: running without: " + "; ".join(priv["missing"]), file=sys.stderr)
    prog = Progress(quiet=args.quiet)

    def progress(st: dict[str, Any]) -> None:
        who = f"{st['balancer']} " if st.get("balancer") else ""
        prog({**st, "phase": f"{who}N={st.get('replicas')} {st['phase']}"})
    try:
        if side:
            code = main_compare(args, cfg, *side, progress)
            prog.done()
            return code
        rep = run(cfg, progress)
    except (RuntimeError, OSError, ValueError) as exc:
        prog.done()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
        teardown_all()
    prog.done()
    paths = write_reports(rep, args.out, charts=not args.no_charts)
    print(summary_text(rep))
    print(f"\nreports: {', '.join(paths.values())}")
    return 0


TOOL = Tool("scaleout", PROG, "the staged ramp against 1, 2, 4 ... replicas behind a balancer, and a fault",
            "The scale-out proof: the capacity suite's staged ramp against 1, 2, 4 ... fastc1k replicas (each its "
            "own cgroup and network namespace) behind HAProxy, or behind the kernel (nftables, as a Kubernetes "
            "Service) and HAProxy side by side (--balancer kernel,haproxy-http,haproxy-tcp), with a replica killed "
            "under load.",
            add_arguments, run_cli)


def main(argv: Sequence[str] | None = None) -> int:
    return TOOL.main(argv)
