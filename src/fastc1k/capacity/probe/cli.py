"""`python -m fastc1k.capacity probe`: the connection probe's arguments and its run.

    python -m fastc1k.capacity probe --connections 1000000 --workers 56 --clients 56 \\
        --source-ips 127.0.0.10-127.0.0.59 --hold 30
    python -m fastc1k.capacity probe --connections auto          # the most this host should hold
    python -m fastc1k.capacity probe --target 127.0.0.1:8080 --server-pid 1234 --connections 50000
    python -m fastc1k.capacity --max-connections-probe ...       # the same (today's form)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

from ..._cli import UsageError
from ...host.net import parse_source_ips
from ..console import Tool
from .run import CONNTRACK_WAYS, KERNEL_BYTES_PER_PAIR, ProbeSpec, auto_connections, host_limits, run_probe, summary

__all__ = ["TOOL", "main", "add_arguments"]

PROG = "fastc1k.capacity.probe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", default="10000", help="connections to hold, or 'auto' [10000]")
    p.add_argument("--workers", type=int, default=None, help="server workers [connections / 18000, at least 1]")
    p.add_argument("--clients", type=int, default=None, help="client processes [connections / 18000, at least 1]")
    p.add_argument("--source-ips", default="127.0.0.1",
                   help="client source addresses, e.g. 127.0.0.10-127.0.0.59 [127.0.0.1]")
    p.add_argument("--target", default=None, metavar="HOST:PORT", help="probe a running server instead")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="with --target: worker pids to measure (repeatable)")
    p.add_argument("--engine", choices=("c", "python"), default=None)
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold before the second answer [5]")
    p.add_argument("--open-timeout", type=float, default=240.0, help="stop opening after this [240 s]")
    p.add_argument("--verify-timeout", type=float, default=60.0,
                   help="give up on the second answers after this; the unanswered count as failed [60 s]")
    p.add_argument("--in-flight", type=int, default=256, help="handshakes outstanding per client [256]")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="a connection unanswered this long after connect() failed (e.g. stuck in SYN-SENT "
                        "behind a full conntrack table) [10 s]")
    p.add_argument("--max-memory", type=float, default=0.85, help="stop opening past this fraction of RAM [0.85]")
    p.add_argument("--conntrack", choices=CONNTRACK_WAYS, default="notrack",
                   help="where conntrack tracks the namespace (a NAT table: any container engine's published port): "
                        "exempt the server's port for the run (notrack), or raise nf_conntrack_max to hold every "
                        "connection (raise), both undone afterwards; or leave the host as it is (leave) [notrack]")
    p.add_argument("--plan", action="store_true", help="print the plan and the host's limits, open nothing")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    try:
        ips = parse_source_ips(args.source_ips)
        if not ips:
            raise ValueError("no source addresses")
        target = None
        if args.target:
            host, _, port = args.target.rpartition(":")
            target = (host or "127.0.0.1", int(port))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    per_proc = 18_000   # connections per process, under the usual 20,000-fd limit
    spec = ProbeSpec(source_ips=ips, target=target, server_pids=args.server_pid, engine=args.engine,
                     hold=args.hold, open_timeout=args.open_timeout, verify_timeout=args.verify_timeout,
                     in_flight=args.in_flight,
                     connect_timeout=args.connect_timeout,
                     max_memory=args.max_memory, quiet=args.quiet, conntrack=args.conntrack)
    if args.connections == "auto":
        lim = host_limits()
        spec.workers = args.workers or 1 << 20   # let fds of the processes not be the cap...
        spec.clients = args.clients or 1 << 20
        n, why = auto_connections(spec, lim)     # ...unless they were given
        print(f"{PROG}: aiming at {n:,} connections (limited by {why})", file=sys.stderr)
    else:
        try:
            n = int(float(args.connections))
        except ValueError:
            raise UsageError(f"--connections must be a number or 'auto', got {args.connections!r}") from None
    spec.connections = n
    spec.workers = args.workers or max(1, -(-n // per_proc))
    spec.clients = args.clients or max(1, -(-n // per_proc))
    if args.plan:
        lim = host_limits()
        print(json.dumps({"connections": spec.connections, "workers": spec.workers, "clients": spec.clients,
                          "source_ips": len(spec.source_ips),
                          "per_source_ip": -(-spec.connections // len(spec.source_ips)),
                          "kernel_memory_estimate_gib": round(spec.connections * KERNEL_BYTES_PER_PAIR / 2**30, 1),
                          "limits": lim}, indent=1))
        return 0
    try:
        res = run_probe(spec)
    except (ValueError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(summary(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(res), f, indent=2)
    return 0 if res.held == res.opened and res.opened > 0 else 1


TOOL = Tool("probe", PROG, "how many concurrent keep-alive connections this host holds (C1M)",
            "How many concurrent keep-alive connections this host holds: each is answered when opened and again "
            "after the hold; opening stops at the memory, fd or port limit, which the report names.",
            add_arguments, run_cli)


def main(argv: Sequence[str] | None = None) -> int:
    return TOOL.main(argv)
