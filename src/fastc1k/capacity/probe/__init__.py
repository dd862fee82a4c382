"""The connection probe: how many concurrent keep-alive connections this host holds.

    python -m fastc1k.capacity probe --connections auto

    client   the client process: one epoll loop of raw sockets, counters in shared arrays
    run      ProbeSpec, the server it starts, the controller (open, hold, verify), the
             figures per connection and the limit the next step meets
    cli      the `probe` subcommand
"""
from .cli import TOOL, main
from .run import ProbeResult, ProbeSpec, host_limits, run_probe, summary

__all__ = ["TOOL", "main", "ProbeSpec", "ProbeResult", "run_probe", "host_limits", "summary"]
