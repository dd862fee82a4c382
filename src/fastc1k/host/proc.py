"""Readings of processes and of the kernel: psutil where it has the figure, /proc where
it does not (TCP counters, socket memory, slab, run-queue wait). Readers take a `root` where
the doctor needs to point them at another tree, and return empty/None rather than raise."""
from __future__ import annotations

import os
import platform
import resource
import socket
import struct
from typing import Any, Iterable

import psutil

from . import sysctl

__all__ = ["listen_queue", "tree", "cpu_times", "cpu_seconds", "rss", "num_fds", "schedstat", "task_schedstat", "meminfo", "mem_used_fraction",
           "sockstat", "netstat", "NETSTAT_KEYS", "host_busy_seconds", "ksoftirqd_pids", "host_info", "nofile_limits", "status", "cpu_model"]

NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPAbortOnMemory", "TCPAbortOnTimeout",
                "TCPAbortOnData", "TCPAbortOnClose", "TCPBacklogDrop", "TCPReqQFullDrop")


def _text(path: str, root: str | os.PathLike = "/") -> str:
    try:
        with open(os.path.join(root, path.lstrip("/"))) as f:
            return f.read()
    except (OSError, ValueError):
        return ""


# --- processes (psutil) -------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """pid and all its descendants (a pre-fork server: master and workers); [] if gone."""
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_times(pids: Iterable[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, all threads; gone ones count 0."""
    u = s = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        u, s = u + t.user, s + t.system
    return u, s


def cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_times(pids))


def rss(pids: Iterable[int]) -> int:
    """Resident bytes summed over these processes."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def num_fds(pids: Iterable[int]) -> int:
    """Open fds summed over these processes; gone (or unreadable) ones count 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).num_fds()
        except psutil.Error:
            pass
    return total


def task_schedstat(task: str = "self") -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of one task ("self": the calling
    process's main thread; a pid or "thread-self"); None if unreadable."""
    try:
        run, wait = map(int, _text(f"/proc/{task}/schedstat").split()[:2])
        return run, wait
    except ValueError:
        return None


def schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one), summed over the process's threads.
    The wait shows a server that is CPU-bound on a shared host although its CPU time is
    below a core: it never idled, it queued. (psutil has no run-queue wait.)"""
    run = wait = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        if ss := task_schedstat(f"{pid}/task/{tid}"):
            run += ss[0]
            wait += ss[1]
    return run, wait


def status(root: str | os.PathLike = "/") -> dict[str, str]:
    """/proc/self/status as {field: value}."""
    out = {}
    for line in _text("proc/self/status", root).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def nofile_limits(root: str | os.PathLike = "/", pid: int | None = None) -> tuple[int | None, int | None]:
    """(soft, hard) RLIMIT_NOFILE from /proc/self/limits (readable from a fake tree), or
    another process's (prlimit on another user's process needs CAP_SYS_RESOURCE, which
    root in a container lacks; its limits file does not); -1 for unlimited."""
    for line in _text(f"proc/{pid or 'self'}/limits", root).splitlines():
        if line.startswith("Max open files"):
            fields = line[len("Max open files"):].split()
            try:
                soft, hard = (-1 if v == "unlimited" else int(v) for v in fields[:2])
                return soft, hard
            except ValueError:   # too few fields, or not numbers
                break
    return None, None


# --- memory and sockets (/proc: psutil has neither slab detail nor sockstat) ---------------------

def meminfo(root: str | os.PathLike = "/") -> dict[str, int]:
    """/proc/meminfo in bytes (kB fields converted; bare counts as they are)."""
    out = {}
    for line in _text("proc/meminfo", root).splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        try:
            out[k] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
        except (ValueError, IndexError):
            pass
    return out


def mem_used_fraction() -> float:
    """RAM in use, counting reclaimable slab as used: MemAvailable counts it as free, but
    the socket inodes and dentries behind ~40% of a connection's slab cannot be reclaimed
    while the sockets are open."""
    m = meminfo()
    total = m.get("MemTotal", 1)
    return 1.0 - (m.get("MemAvailable", total) - m.get("SReclaimable", 0)) / total


def sockstat(pid: int | None = None) -> dict[str, int]:
    """TCP: inuse, orphan, tw, alloc, mem (pages), of this network namespace (or of the
    one process `pid` is in: a container's)."""
    for line in _text(f"/proc/{pid or 'self'}/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            return {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
    return {}


def netstat(keys: Iterable[str] = NETSTAT_KEYS, pid: int | None = None) -> dict[str, int]:
    """TcpExt counters of this network namespace (or of the one process `pid` is in)."""
    want = set(keys)
    out: dict[str, int] = {}
    lines = _text(f"/proc/{pid or 'self'}/net/netstat").splitlines()
    for names, values in zip(lines[0::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            for k, v in zip(names.split()[1:], values.split()[1:]):
                if k in want:
                    out[k] = int(v)
    return out


# --- the host ------------------------------------------------------------------------------------

def host_busy_seconds() -> tuple[float, float]:
    """CPU seconds the host spent not idle (all CPUs), and of those in interrupts and
    softirqs (packet processing, veth included). With tick accounting a softirq tick also
    counts in the system time of the process it interrupted: a part of the processes'
    figures, not an addition to them."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
    return busy, t.irq + t.softirq


def ksoftirqd_pids() -> list[int]:
    """The kernel's ksoftirqd/N threads (one a CPU). Softirq work (packet processing) the
    interrupted task cannot finish in its time budget is handed to them, as at high packet
    rates on loopback; they are in the root cgroup, so what they do is charged to no
    container and capped by no CPU quota."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    return sorted(p for p in pids if _text(f"/proc/{p}/comm").startswith("ksoftirqd/"))


def cpu_model() -> str:
    """The CPU's model name ("n/a" where /proc/cpuinfo has none)."""
    for line in _text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "n/a"


def host_info() -> dict[str, Any]:
    """What a report says about the machine it ran on."""
    ncpu = len(os.sched_getaffinity(0))
    load = os.getloadavg()
    mem = psutil.virtual_memory().total
    info = {"cpus": ncpu, "kernel": platform.release(), "memory": mem, "loadavg": load,
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "somaxconn": sysctl.read("net.core.somaxconn"),
            "port_range": sysctl.read("net.ipv4.ip_local_port_range"), "python": platform.python_version()}
    info["summary"] = (f"{ncpu} CPUs, {mem / 2**30:.1f} GiB, Linux {info['kernel']}, load average "
                       f"{load[0]:.2f} at start")
    return info


def listen_queue(port: int) -> list[int] | None:
    """[queued, backlog] of the fullest IPv4 listening socket on `port` in this namespace,
    from the kernel's sock_diag netlink (what `ss -ltn` shows as Recv-Q / Send-Q), without a
    subprocess: the 100 ms sampler calls it. None if unknown."""
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << 10) + b"\0" * 48  # TCPF_LISTEN
    msg = struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req   # SOCK_DIAG_BY_FAMILY, REQUEST|DUMP
    best: list[int] | None = None
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as s:   # NETLINK_SOCK_DIAG
            s.settimeout(1.0)
            s.send(msg)
            while True:
                data = s.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    ln, kind = struct.unpack_from("=IH", data, off)
                    if kind in (2, 3) or ln < 16:          # NLMSG_ERROR, NLMSG_DONE
                        return best
                    sport = struct.unpack_from("!H", data, off + 16 + 4)[0]
                    rq, wq = struct.unpack_from("=II", data, off + 16 + 56)
                    if sport == port and (best is None or rq / max(wq, 1) > best[0] / max(best[1], 1)):
                        best = [rq, wq]
                    off += (ln + 3) & ~3
    except OSError:
        return best
