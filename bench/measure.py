"""What the bench measures on the server side, per bench/METHOD.md.

- CPU quota: each server alone in its own cpu cgroup (0.5 CPU, 10 ms period) so that it is
  the bottleneck and CPU per request is taken at full batching. cgroup v1 (`cpu` hierarchy)
  or v2 (`cpu.max`); without root or without a cpu controller the quota is skipped and
  every result says so (`quota: none`).
- Server CPU: user + system time (fastc1k.host.proc), summed over the server's processes
  (nginx master + worker), user part kept apart.
- Memory: RSS summed over the server's processes; kernel slab (/proc/meminfo) and TCP
  socket memory (/proc/net/sockstat) beside it.
- Syscalls: `strace -c -f -p PID...` around a short load run, parsed into {name: calls}.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import shutil
import subprocess
import time

from fastc1k.host import cgroup, proc, sysctl

__all__ = [
    "Quota", "CpuSample", "cpu_sample", "rss_bytes", "server_pids",
    "kernel_memory", "Strace", "strace_available", "QUOTA_CPUS", "QUOTA_PERIOD_US",
]

QUOTA_CPUS = 0.5
QUOTA_PERIOD_US = 10_000


class Quota:
    """A cpu cgroup of its own with a CPU quota; `wrap(cmd)` starts cmd inside it.

    The command is started through a shell that joins the group and execs it, so the
    server and every process it forks are in the group from their first instruction.
    `set(on)` switches the quota on and off; `close()` removes the group (after the
    server has exited). `self.kind` is "v1", "v2" or "none" (with `self.why`).
    """

    def __init__(self, name: str, cpus: float = QUOTA_CPUS, period_us: int = QUOTA_PERIOD_US,
                 enabled: bool = True) -> None:
        self.cpus, self.period_us = cpus, period_us
        self.group: cgroup.Cgroup | None = None
        self.kind, self.why = "none", ""
        if not enabled:
            self.why = "quota disabled"
            return
        if os.geteuid() != 0:
            self.why = "not root: no cgroup quota"
            return
        cgroup.remove_stale("fastc1k-bench-")
        try:
            self.group = cgroup.Cgroup.create(name, cpus=cpus, period_us=period_us, under_own=False)
            self.kind = self.group.version
        except OSError as exc:
            self.why = f"cgroup: {exc}"

    @property
    def label(self) -> str:
        return f"{self.cpus:g} CPU ({self.kind})" if self.kind != "none" else f"none ({self.why})"

    def wrap(self, cmd: list[str]) -> list[str]:
        return self.group.wrap(cmd) if self.group else cmd

    def set(self, on: bool) -> None:
        """The quota on (self.cpus) or off, without restarting what runs inside."""
        if self.group:
            self.group.set_cpu(self.cpus if on else None)

    def throttled(self) -> int:
        """How many periods the group was throttled (proof the quota bites)."""
        return (self.group.throttled() if self.group else None) or 0

    def close(self) -> None:
        if self.group:
            self.group.remove()
            self.group = None


def server_pids(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master + worker)."""
    return proc.tree(pid)


@dataclasses.dataclass
class CpuSample:
    user: float  # seconds
    sys: float
    when: float

    def __sub__(self, other: "CpuSample") -> "CpuSample":
        return CpuSample(self.user - other.user, self.sys - other.sys, self.when - other.when)


def cpu_sample(pids: list[int]) -> CpuSample:
    """user/system CPU of the given processes (all their threads), in seconds."""
    u, s = proc.cpu_times(pids)
    return CpuSample(u, s, time.monotonic())


def rss_bytes(pids: list[int]) -> int:
    return proc.rss(pids)


def kernel_memory() -> dict[str, int]:
    """Slab bytes (/proc/meminfo) and TCP socket counts and memory (/proc/net/sockstat)."""
    m, s = proc.meminfo(), proc.sockstat()
    return {"slab": m.get("Slab", 0), "sunreclaim": m.get("SUnreclaim", 0), "tcp_inuse": s.get("inuse", 0),
            "tcp_mem": s.get("mem", 0) * os.sysconf("SC_PAGE_SIZE")}


def strace_available() -> str | None:
    """None when `strace -c -p` can work here, else why not."""
    if shutil.which("strace") is None:
        return "strace not installed"
    if (sysctl.read_int("kernel.yama.ptrace_scope") or 0) > 0 and os.geteuid() != 0:
        return "ptrace not allowed (yama ptrace_scope)"
    return None


class Strace:
    """`strace -c -f -p ...` over a block: `with Strace(pids) as st: run load`; st.calls."""

    _ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Strace":
        args = ["strace", "-c", "-f", "-qq"]
        for p in self.pids:
            args += ["-p", str(p)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # let it attach to every thread before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        for line in err.splitlines():
            m = self._ROW.match(line)
            if m and m.group(3) != "total":
                self.calls[m.group(3)] = int(m.group(1))
                if m.group(2):
                    self.errors[m.group(3)] = int(m.group(2))
