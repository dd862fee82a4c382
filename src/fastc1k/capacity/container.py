"""A "container" made from kernel parts: a cgroup (v1 or v2) with a CPU quota and a
memory limit, RLIMIT_NOFILE, and a network namespace of its own with its own sysctls.

Each part is applied where the host permits (root, a writable cgroup hierarchy) and
otherwise reported in `notes` with the reason; the run goes on without that part
rather than failing, and the report says which limits were really in force.

The network namespace holds the whole capacity run (server, load generator, monitor),
since they talk over its loopback: `enter_netns` unshares the calling process, so it
must run in the main thread before any other thread or child process starts.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from ..config import parse_size

__all__ = ["ContainerSpec", "Container", "ContainerError", "enter_netns", "SYSCTL_ALIASES"]

CPU_PERIOD_US = 10_000   # 10 ms: bench/METHOD.md's quota period (short, so throttling is smooth)
CLONE_NEWNET = 0x40000000
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


def _own_cgroup_v1(controller: str) -> str | None:
    """This process's cgroup path in a v1 hierarchy (new groups go under it)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
    except OSError:
        pass
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Container:
    """The cgroup and rlimit parts; `preexec` puts a child into them before it execs."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.notes: list[str] = []
        self.applied: dict[str, object] = {}
        self.cgroup_dirs: list[str] = []
        self._procs_files: list[str] = []
        self._cpu_stat: str | None = None
        self._mem_usage: str | None = None
        self.cpu_quota: float | None = None
        self.memory_limit: int | None = None
        self.version: str | None = None

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> "Container":
        if self.spec.cpus is not None or self.spec.memory is not None:
            try:
                if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                    self._setup_v2()
                else:
                    self._setup_v1()
            except OSError as exc:
                self.notes.append(f"cgroup not applied ({exc.strerror or exc}; needs root and a writable "
                                  f"/sys/fs/cgroup): the server runs without a CPU quota or memory limit")
                self.cleanup()
                self.cpu_quota = self.memory_limit = None
                self.applied.pop("cpus", None)
                self.applied.pop("memory", None)
        if self.spec.nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if self.spec.nofile > hard and os.geteuid() != 0:
                self.notes.append(f"nofile={self.spec.nofile} is over the hard limit {hard} and raising it needs "
                                  f"root: the server gets {hard}")
                self.applied["nofile"] = hard
            else:
                self.applied["nofile"] = self.spec.nofile
        return self

    def _setup_v2(self) -> None:
        self.version = "v2"
        with open("/proc/self/cgroup") as f:
            own = next((ln.split("::", 1)[1].strip() for ln in f if ln.startswith("0::")), "/")
        base = "/sys/fs/cgroup" + own.rstrip("/")
        d = f"{base}/fastc1k-capacity-{os.getpid()}"
        os.mkdir(d)
        self.cgroup_dirs.append(d)
        try:  # controllers must be enabled in the parent for the child to have the files
            _write(f"{base}/cgroup.subtree_control", "+cpu +memory")
        except OSError:
            pass
        if self.spec.cpus is not None:
            _write(f"{d}/cpu.max", f"{int(self.spec.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            self.cpu_quota = self.spec.cpus
            self.applied["cpus"] = self.spec.cpus
            self._cpu_stat = f"{d}/cpu.stat"
        if self.spec.memory is not None:
            _write(f"{d}/memory.max", str(self.spec.memory))
            self._mem_usage = f"{d}/memory.current"
            try:
                _write(f"{d}/memory.swap.max", "0")
            except OSError:
                pass
            self.memory_limit = self.spec.memory
            self.applied["memory"] = self.spec.memory
        self._procs_files = [f"{d}/cgroup.procs"]

    def _setup_v1(self) -> None:
        self.version = "v1"
        for ctrl, want in (("cpu", self.spec.cpus), ("memory", self.spec.memory)):
            if want is None:
                continue
            root = f"/sys/fs/cgroup/{ctrl}"
            own = _own_cgroup_v1(ctrl)
            if own is None or not os.path.isdir(root):
                raise OSError(f"no cgroup v1 {ctrl} hierarchy")
            d = f"{root}{own.rstrip('/')}/fastc1k-capacity-{os.getpid()}"
            os.mkdir(d)
            self.cgroup_dirs.append(d)
            if ctrl == "cpu":
                _write(f"{d}/cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(f"{d}/cpu.cfs_quota_us", str(int(self.spec.cpus * CPU_PERIOD_US)))
                self.cpu_quota = self.spec.cpus
                self.applied["cpus"] = self.spec.cpus
                self._cpu_stat = f"{d}/cpu.stat"
            else:
                _write(f"{d}/memory.limit_in_bytes", str(self.spec.memory))
                self._mem_usage = f"{d}/memory.usage_in_bytes"
                self.memory_limit = self.spec.memory
                self.applied["memory"] = self.spec.memory
            self._procs_files.append(f"{d}/cgroup.procs")

    # -- use ----------------------------------------------------------------------------------
    def preexec(self) -> Callable[[], None] | None:
        """For subprocess.Popen(preexec_fn=...): join the cgroups and set RLIMIT_NOFILE in
        the child, before it execs, so the server and every worker it forks start inside."""
        files = list(self._procs_files)
        nofile = self.applied.get("nofile")
        if not files and nofile is None:
            return None

        def enter() -> None:
            for p in files:
                with open(p, "w") as f:
                    f.write("0")  # "0": the writing process itself
            if nofile is not None:
                hard = max(int(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1]) if os.geteuid() == 0 \
                    else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                n = min(int(nofile), hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        return enter

    def memory_used(self) -> int | None:
        """What the memory limit is enforced against (RSS plus page cache and kernel
        memory charged to the group), in bytes."""
        if not self._mem_usage:
            return None
        try:
            with open(self._mem_usage) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def throttled(self) -> int | None:
        """Periods in which the quota throttled the server (cpu.stat nr_throttled)."""
        return read_nr_throttled(self._cpu_stat) if self._cpu_stat else None

    def cleanup(self) -> None:
        """Remove the cgroups (once the server has exited; retried briefly while the
        kernel finishes reaping)."""
        self.notes += [f"could not remove {d}" for d in remove_cgroups(self.cgroup_dirs)]
        self.cgroup_dirs.clear()
        self._procs_files.clear()


# Per-namespace TCP settings a tuned host may have changed: a new namespace starts from
# the kernel defaults, so these are copied in (then the --container sysctls apply).
INHERITED_SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
                     "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout",
                     "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_abort_on_overflow")


def _read_sysctl(key: str) -> str | None:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def enter_netns(sysctls: dict[str, str], inherit: bool = True) -> tuple[bool, list[str]]:
    """Move this process into a new network namespace with loopback up, the host's TCP
    settings copied in (`inherit`) and then `sysctls` set. Returns (entered, notes); on
    failure the process stays where it was."""
    notes: list[str] = []
    host = {k: v for k in INHERITED_SYSCTLS if (v := _read_sysctl(k)) is not None} if inherit else {}
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        notes.append(f"own network namespace not created ({os.strerror(err)}; needs root or CAP_SYS_ADMIN): "
                     f"running in the host's namespace without its sysctls {sysctls or ''}".rstrip())
        return False, notes
    r = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if r.returncode != 0:
        notes.append(f"loopback in the new namespace not brought up: {r.stderr.strip()}")
    for key, value in host.items():
        if key not in sysctls and _read_sysctl(key) != value:
            try:
                _write("/proc/sys/" + key.replace(".", "/"), value)
            except OSError as exc:
                notes.append(f"host's {key}={value} not copied into the namespace: {exc.strerror}")
    for key, value in sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            _write(path, value)
            with open(path) as f:
                got = f.read().split()
            if got != value.split():
                notes.append(f"sysctl {key}={value} reads back {' '.join(got)}")
        except OSError as exc:
            notes.append(f"sysctl {key}={value} not set: {exc.strerror}")
    return True, notes


def read_nr_throttled(cpu_stat: str) -> int | None:
    """nr_throttled from a cgroup's cpu.stat (v1 and v2 both have it); None if unreadable."""
    try:
        with open(cpu_stat) as f:
            for line in f:
                if line.startswith("nr_throttled"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def remove_cgroups(dirs: list[str], tries: int = 50) -> list[str]:
    """rmdir each cgroup, innermost last made first, retrying briefly while the kernel
    finishes reaping its tasks; returns the ones that would not go."""
    left = []
    for d in reversed(dirs):
        for _ in range(tries):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        else:
            left.append(d)
    return left
