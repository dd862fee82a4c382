"""What the bench measures on the server side, per bench/METHOD.md.

- CPU quota: each server alone in its own cpu cgroup (0.5 CPU, 10 ms period) so that it is
  the bottleneck and CPU per request is taken at full batching. cgroup v1 (`cpu` hierarchy)
  or v2 (`cpu.max`); without root or without a cpu controller the quota is skipped and
  every result says so (`quota: none`).
- Server CPU: utime + stime from /proc/PID/stat, summed over the server's processes
  (nginx master + worker), user part kept apart.
- Memory: RSS summed over the server's processes; kernel slab (/proc/meminfo) and TCP
  socket memory (/proc/net/sockstat) beside it.
- Syscalls: `strace -c -f -p PID...` around a short load run, parsed into {name: calls}.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

__all__ = [
    "CLK_TCK", "PAGE", "Quota", "CpuSample", "cpu_sample", "rss_bytes", "server_pids",
    "kernel_memory", "Strace", "strace_available", "QUOTA_CPUS", "QUOTA_PERIOD_US",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
QUOTA_CPUS = 0.5
QUOTA_PERIOD_US = 10_000
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")


class Quota:
    """A cpu cgroup of its own with a CPU quota; `wrap(cmd)` starts cmd inside it.

    The command is started through `sh -c 'echo $$ > cgroup.procs; exec ...'` so the
    server and every process it forks are in the group from their first instruction.
    `close()` removes the group (after the server has exited). `self.kind` is "v1",
    "v2" or "none" (with `self.why`).
    """

    def __init__(self, name: str, cpus: float = QUOTA_CPUS, period_us: int = QUOTA_PERIOD_US,
                 enabled: bool = True) -> None:
        self.cpus, self.period_us = cpus, period_us
        self.path: Path | None = None
        self.kind, self.why = "none", ""
        if not enabled:
            self.why = "quota disabled"
            return
        if os.geteuid() != 0:
            self.why = "not root: no cgroup quota"
            return
        quota_us = int(cpus * period_us)
        _remove_stale_groups()
        try:
            if (_V1 / "cpu.cfs_quota_us").exists():
                self.path = _V1 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
                self.kind = "v1"
            elif "cpu" in (_V2 / "cgroup.controllers").read_text().split():
                self.path = _V2 / name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.max").write_text(f"{quota_us} {period_us}")
                self.kind = "v2"
            else:
                self.why = "no cpu cgroup controller"
        except OSError as exc:
            self.why = f"cgroup: {exc}"
            self.close()
            self.kind = "none"

    @property
    def label(self) -> str:
        return f"{self.cpus:g} CPU ({self.kind})" if self.kind != "none" else f"none ({self.why})"

    def wrap(self, cmd: list[str]) -> list[str]:
        if self.path is None:
            return cmd
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def throttled(self) -> int:
        """How many periods the group was throttled (proof the quota bites)."""
        if self.path is None:
            return 0
        try:
            text = (self.path / "cpu.stat").read_text()
        except OSError:
            return 0
        m = re.search(r"^nr_throttled (\d+)", text, re.M)
        return int(m.group(1)) if m else 0

    def close(self) -> None:
        if self.path is None:
            return
        for _ in range(50):  # the last task may take a moment to leave after exit
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        self.path = None


def _remove_stale_groups() -> None:
    """Empty groups left by a bench that was killed (names end in the bench's pid)."""
    for root in (_V1, _V2):
        try:
            stale = list(root.glob("fastc1k-bench-*"))
        except OSError:
            continue
        for d in stale:
            pid = d.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    d.rmdir()
                except OSError:
                    pass


def server_pids(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master + worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


@dataclasses.dataclass
class CpuSample:
    user: float  # seconds
    sys: float
    when: float

    def __sub__(self, other: "CpuSample") -> "CpuSample":
        return CpuSample(self.user - other.user, self.sys - other.sys, self.when - other.when)


def _stat_times(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14, 15 of stat(5))


def cpu_sample(pids: list[int]) -> CpuSample:
    """utime/stime of the given processes (all their threads), in seconds."""
    u = s = 0
    for pid in pids:
        try:
            a, b = _stat_times(pid)
        except OSError:
            continue
        u, s = u + a, s + b
    return CpuSample(u / CLK_TCK, s / CLK_TCK, time.monotonic())


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def kernel_memory() -> dict[str, int]:
    """Slab bytes (/proc/meminfo) and TCP socket counts and memory (/proc/net/sockstat)."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("Slab:", "SUnreclaim:")):
                k, v = line.split()[:2]
                out[k.rstrip(":").lower()] = int(v) * 1024
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                kv = dict(zip(parts[::2], parts[1::2]))
                out["tcp_inuse"] = int(kv.get("inuse", 0))
                out["tcp_mem"] = int(kv.get("mem", 0)) * PAGE
    return out


def strace_available() -> str | None:
    """None when `strace -c -p` can work here, else why not."""
    if shutil.which("strace") is None:
        return "strace not installed"
    try:
        scope = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        scope = 0
    if scope > 0 and os.geteuid() != 0:
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
