"""The staged ramp: where one server breaks, why, and how fast it recovers.

    python -m fastc1k.capacity ramp --serve

    cli   the `ramp` subcommand: its arguments, RunConfig from them, their checks
    run   the network namespace, the container, the server, the Runner's phases, the report
"""
from .cli import TOOL, main, run_config

__all__ = ["TOOL", "main", "run_config"]
