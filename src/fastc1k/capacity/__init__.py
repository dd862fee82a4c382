"""The capacity suite: `python -m fastc1k.capacity --serve` ramps clients in stages
against a server (optionally inside a resource-limited "container"), samples its
resources every 100 ms, and reports the breaking point, the degradation curve, the first
bottleneck and the recovery time (JSON, terminal summary, HTML with charts).

Modules: stages (the three phases and the server process), monitor (psutil + /proc),
analysis (the rules, pure functions), container (cgroup, rlimit, network namespace),
report (outputs).
"""
from .analysis import Thresholds
from .container import Container, ContainerSpec
from .stages import RunConfig, Runner, ServerProcess

__all__ = ["RunConfig", "Runner", "ServerProcess", "Thresholds", "Container", "ContainerSpec"]
