"""A "container" made from kernel parts: a cgroup (v1 or v2) with a CPU quota and a
memory limit, RLIMIT_NOFILE, and a network namespace of its own with its own sysctls.

Each part is applied where the host permits (root, a writable cgroup hierarchy) and
otherwise reported in `notes` with the reason; the run goes on without that part
rather than failing, and the report says which limits were really in force.

The network namespace holds the whole capacity run (server, load generator, monitor),
since they talk over its loopback: host.net.enter_netns unshares the calling process, so
it must run in the main thread before any other thread or child process starts.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from typing import Callable

from ..config import parse_size
from ..host.cgroup import Cgroup

__all__ = ["ContainerSpec", "Container", "ContainerError", "SYSCTL_ALIASES"]

SYSCTL_ALIASES = {
    "somaxconn": "net.core.somaxconn",
    "tcp_max_syn_backlog": "net.ipv4.tcp_max_syn_backlog",
    "syncookies": "net.ipv4.tcp_syncookies",
    "port_range": "net.ipv4.ip_local_port_range",
}


class ContainerError(ValueError):
    """A malformed --container specification."""


@dataclass
class ContainerSpec:
    cpus: float | None = None
    memory: int | None = None
    nofile: int | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    netns: bool = False

    @classmethod
    def parse(cls, text: str | None) -> "ContainerSpec":
        """'cpus=0.5,memory=256M,nofile=4096,somaxconn=128[,net.ipv4.x=y][,netns]'."""
        spec = cls()
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            if part == "netns":
                spec.netns = True
                continue
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ContainerError(f"--container: expected key=value, got {part!r}")
            if key not in ("cpus", "memory", "nofile") and key not in SYSCTL_ALIASES and not key.startswith("net."):
                raise ContainerError(f"--container: unknown key {key!r} (cpus, memory, nofile, "
                                     f"{', '.join(SYSCTL_ALIASES)}, net.*, netns)")
            try:
                if key == "cpus":
                    spec.cpus = float(value)
                    if not 0.001 <= spec.cpus <= 4096:
                        raise ValueError
                elif key == "memory":
                    spec.memory = parse_size(value)
                    if spec.memory < (4 << 20):
                        raise ValueError
                elif key == "nofile":
                    spec.nofile = int(value)
                    if spec.nofile < 16:
                        raise ValueError
                else:
                    spec.sysctls[SYSCTL_ALIASES.get(key, key)] = value.replace(":", " ")
                    spec.netns = True    # net sysctls are per namespace: never touch the host's
            except ValueError:
                raise ContainerError(f"--container: bad value for {key}: {value!r}") from None
        return spec

    def describe(self) -> dict:
        return {"cpus": self.cpus, "memory": self.memory, "nofile": self.nofile, "sysctls": dict(self.sysctls),
                "netns": self.netns}


class Container:
    """The cgroup and rlimit parts; `preexec` puts a child into them before it execs."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.notes: list[str] = []
        self.applied: dict[str, object] = {}
        self.cgroup: Cgroup | None = None
        self.cpu_quota: float | None = None
        self.memory_limit: int | None = None
        self.version: str | None = None

    def setup(self) -> "Container":
        if self.spec.cpus is not None or self.spec.memory is not None:
            try:
                self.cgroup = Cgroup.create(f"fastc1k-capacity-{os.getpid()}", cpus=self.spec.cpus,
                                            memory=self.spec.memory)
            except OSError as exc:
                self.notes.append(f"cgroup not applied ({exc.strerror or exc}; needs root and a writable "
                                  f"/sys/fs/cgroup): the server runs without a CPU quota or memory limit")
            else:
                self.version = self.cgroup.version
                self.cpu_quota = self.memory_limit = None
                if self.spec.cpus is not None:
                    self.cpu_quota = self.applied["cpus"] = self.spec.cpus
                if self.spec.memory is not None:
                    self.memory_limit = self.applied["memory"] = self.spec.memory
        if self.spec.nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if self.spec.nofile > hard and os.geteuid() != 0:
                self.notes.append(f"nofile={self.spec.nofile} is over the hard limit {hard} and raising it needs "
                                  f"root: the server gets {hard}")
                self.applied["nofile"] = hard
            else:
                self.applied["nofile"] = self.spec.nofile
        return self

    def preexec(self) -> Callable[[], None] | None:
        """For subprocess.Popen(preexec_fn=...): join the cgroups and set RLIMIT_NOFILE in
        the child, before it execs, so the server and every worker it forks start inside."""
        join = self.cgroup.preexec() if self.cgroup else None
        nofile = self.applied.get("nofile")
        if join is None and nofile is None:
            return None

        def enter() -> None:
            if join:
                join()
            if nofile is not None:
                hard = max(int(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1]) if os.geteuid() == 0 \
                    else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                n = min(int(nofile), hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        return enter

    def memory_used(self) -> int | None:
        """What the memory limit is enforced against (RSS plus page cache and kernel
        memory charged to the group), in bytes."""
        return self.cgroup.memory_used() if self.cgroup and self.memory_limit else None

    def throttled(self) -> int | None:
        """Periods in which the quota throttled the server (cpu.stat nr_throttled)."""
        return self.cgroup.throttled() if self.cgroup and self.cpu_quota else None

    def outside(self, pids: list[int]) -> list[int]:
        """The server's processes that are not inside the cgroup (none, unless something
        moved them out): their CPU and memory are not under the container's limits."""
        return self.cgroup.outside(pids) if self.cgroup else []

    def oom_kills(self) -> int | None:
        return self.cgroup.oom_kills() if self.cgroup and self.memory_limit else None

    def cleanup(self) -> None:
        """Remove the cgroups (once the server has exited; retried briefly while the
        kernel finishes reaping)."""
        if self.cgroup:
            self.notes += [f"could not remove {d}" for d in self.cgroup.remove()]
