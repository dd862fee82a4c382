"""What the capacity tools' command lines share: the `Tool` record each tool exports (its
arguments and its run, so it works as a subcommand of `python -m fastc1k.capacity` and as a
module of its own), the live progress line, the argument types and the busy-host note."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .._cli import ArgumentParser, UsageError

__all__ = ["Tool", "Progress", "stage_list", "p99_limit", "busy_note"]


@dataclass(frozen=True)
class Tool:
    name: str                                              # the subcommand
    prog: str                                              # error lines start "PROG: error:"
    summary: str                                           # its line in the top-level help
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]               # raises UsageError on bad input
    epilog: str | None = None

    def parser_kwargs(self) -> dict[str, Any]:
        return {"description": self.description, "epilog": self.epilog,
                "formatter_class": argparse.RawDescriptionHelpFormatter}

    def main(self, argv: Sequence[str] | None = None) -> int:
        """The tool alone (`python -m fastc1k.capacity.<name>`)."""
        p = ArgumentParser(prog=f"python -m {self.prog}", **self.parser_kwargs())
        self.add_arguments(p)
        return self.call(p, argv)

    def call(self, p: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
        """Parse and run; bad input is one line on stderr and exit status 2."""
        try:
            return self.run(p.parse_args(argv))
        except UsageError as exc:
            print(f"{self.prog}: error: {exc}", file=sys.stderr)
            return 2


class Progress:
    """One live line on a terminal (rewritten), a line every 5 s otherwise."""

    def __init__(self, stream=None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
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


def stage_list(text: str) -> tuple[int, ...]:
    """--stages: '100,250,500' -> increasing positive client counts."""
    try:
        v = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not v or any(x < 1 for x in v) or list(v) != sorted(set(v)):
        raise argparse.ArgumentTypeError(f"stages must be increasing positive integers, got {text!r}")
    return v


def p99_limit(text: str) -> float | None:
    """--break-p99-ms: milliseconds, or 'none'/'off' (never broken by latency)."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds or 'none', got {text!r}") from None


def busy_note() -> str | None:
    """A note when the machine was busy at the start (absolute figures are then noisy)."""
    load = os.getloadavg()[0]
    ncpu = len(os.sched_getaffinity(0))
    if load > 0.5 * ncpu:
        return (f"the machine was busy at the start (load average {load:.2f} on {ncpu} CPUs): absolute "
                f"figures are noisy")
    return None
