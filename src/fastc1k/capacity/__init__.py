"""The capacity suite: `python -m fastc1k.capacity ramp|scaleout|probe ...`.

Three tools over shared modules, each tool a subpackage (its cli, its run, its own
analysis and report where it has them); the fastc1k.host layer does the machine's part.

    ramp/       one server: stages, resource ramp, blast and recovery (the default tool)
    scaleout/   1, 2, 4 ... replicas behind HAProxy, nginx or nftables; a replica killed
    probe/      how many concurrent keep-alive connections this host holds (C1M)

    stages      RunConfig, ServerProcess and the Runner's phases (ramp and scaleout drive it)
    monitor     the server's processes and the kernel's counters every 100 ms
    analysis    the rules: breaking point, degradation, USL fit, first bottleneck, recovery
    report      JSON, terminal summary, charts, HTML (scaleout's report builds on it)
    container   --container: cgroup limits, RLIMIT_NOFILE, own namespace and sysctls
    podman      the same limits on a real container (the fastc1k image run by podman)
    console     the Tool record, the progress line, shared argument types
    cli         the command line: subcommands, and today's flag forms routed to them
"""
from .analysis import Thresholds
from .container import Container, ContainerSpec
from .stages import RunConfig, Runner, ServerProcess

__all__ = ["RunConfig", "Runner", "ServerProcess", "Thresholds", "Container", "ContainerSpec"]
