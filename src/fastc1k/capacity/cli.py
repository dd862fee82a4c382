"""`python -m fastc1k.capacity ramp|scaleout|probe ...`: the capacity suite's one command line.

    python -m fastc1k.capacity ramp --serve                       # one server: stages, ramp, recovery
    python -m fastc1k.capacity scaleout --replicas 1,2,4          # N replicas behind a balancer, a fault
    python -m fastc1k.capacity probe --connections auto           # how many connections this host holds
    python -m fastc1k.capacity netcost                            # the ramp in podman -p, --network host, kernel parts

Today's forms keep working: without a subcommand the flags choose the tool (`--replicas`:
scaleout, `--max-connections-probe`: probe, otherwise ramp), and `--serve`, which meant
"start the servers", is dropped where the tool always does.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._cli import ArgumentParser
from .console import Tool
from .probe.cli import TOOL as PROBE
from .ramp.cli import TOOL as RAMP
from .ramp.netcost import TOOL as NETCOST
from .scaleout.cli import TOOL as SCALEOUT

__all__ = ["TOOLS", "main", "build_parser", "route"]

TOOLS: dict[str, Tool] = {t.name: t for t in (RAMP, SCALEOUT, PROBE, NETCOST)}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastc1k.capacity", description="The capacity suite: where one server "
                       "breaks and how fast it recovers (ramp), how it scales out behind a balancer (scaleout), how "
                       "many connections this host holds (probe). `python -m fastc1k.capacity TOOL --help` for each.",
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tool", metavar="{" + ",".join(TOOLS) + "}", required=True)
    for t in TOOLS.values():
        t.add_arguments(sub.add_parser(t.name, help=t.summary, **t.parser_kwargs()))
    return p


def route(argv: Sequence[str]) -> list[str]:
    """argv with its subcommand first: today's flag forms get theirs (ramp by default)."""
    argv = list(argv)
    if argv and (argv[0] in TOOLS or argv[0] in ("-h", "--help")):
        return argv
    if any(a == "--replicas" or a.startswith("--replicas=") for a in argv):
        return ["scaleout"] + [a for a in argv if a != "--serve"]
    if "--max-connections-probe" in argv:
        return ["probe"] + [a for a in argv if a not in ("--max-connections-probe", "--serve")]
    return ["ramp"] + argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in TOOLS:
        print(f"fastc1k.capacity: error: unknown tool {argv[0]!r}: choose {', '.join(TOOLS)} (see --help)",
              file=sys.stderr)
        return 2
    argv = route(argv)
    tool = TOOLS.get(argv[0]) if argv else None
    if tool is None:   # -h: the top-level help (argparse exits)
        build_parser().parse_args(argv)
        return 0
    return tool.call(build_parser(), argv)
