"""cgroups, v1 and v2: make a group of our own, limit it, put processes in, read it, remove it.

Strategy. A `Cgroup` is one group under this process's own one: on v2 a single directory
(controllers enabled in the parent's subtree_control), on v1 one directory per controller
hierarchy (cpu, memory, freezer). Every writer and reader of /sys/fs/cgroup in the project
is here; `read_limits` reads the limits that apply to a process from any root (the doctor
points it at a fake tree in its tests).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cgroup", "CgroupLimits", "CPU_PERIOD_US", "version", "own_path", "read_limits", "remove_stale"]

ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 10_000   # 10 ms: a short period, so throttling is smooth
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything this large means none.
UNLIMITED = 1 << 60


def version(root: str = ROOT) -> str:
    """"v2" on a unified hierarchy, else "v1"."""
    return "v2" if os.path.exists(f"{root}/cgroup.controllers") else "v1"


def own_path(controller: str | None = None, proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's group: in the v1 hierarchy holding `controller`, or (None) the v2 one."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if controller is not None and controller in parts[1].split(","):
            return parts[2]
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _field(text: str | None, key: str) -> int | None:
    """`key N` from a flat keyed file (cpu.stat, memory.events, memory.oom_control)."""
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            try:
                return int(v)
            except ValueError:
                return None
    return None


class Cgroup:
    """A group of our own named `name`, with the limits asked for. `create` raises OSError
    (and leaves nothing behind) when the host does not permit it."""

    def __init__(self, name: str, root: str = ROOT) -> None:
        self.name, self.root = name, root
        self.version = version(root)
        self.dirs: list[str] = []                 # made here, removed by remove()
        self._dir: dict[str, str] = {}            # controller -> directory ("" on v2: the one)
        self.period_us = CPU_PERIOD_US
        self.cpus: float | None = None
        self.memory: int | None = None

    @classmethod
    def create(cls, name: str, cpus: float | None = None, memory: int | None = None, freezer: bool = False,
               period_us: int = CPU_PERIOD_US, root: str = ROOT, under_own: bool = True) -> "Cgroup":
        """A group with a CPU quota of `cpus` cores, a memory limit (no swap) and a freezer.
        `under_own`: below this process's own group (else at the hierarchy's top)."""
        cg = cls(name, root)
        cg.period_us = period_us
        try:
            if cg.version == "v2":
                base = root + ((own_path() or "/").rstrip("/") if under_own else "")
                want = [c for c, on in (("cpu", cpus is not None), ("memory", memory is not None)) if on]
                if want:
                    try:   # the parent must hand the controllers down for the child to have their files
                        _write(f"{base}/cgroup.subtree_control", " ".join("+" + c for c in want))
                    except OSError:
                        pass
                d = cg._mk(f"{base}/{name}")
                for c in ("cpu", "memory", "freezer"):
                    cg._dir[c] = d
            else:
                for c, on in (("cpu", cpus is not None), ("memory", memory is not None), ("freezer", freezer)):
                    own = own_path(c) if under_own else "/"
                    if not on:
                        continue
                    if own is None or not os.path.isdir(f"{root}/{c}"):
                        if c == "freezer":   # optional: can_freeze says whether there is one
                            continue
                        raise OSError(f"no cgroup v1 {c} hierarchy")
                    cg._dir[c] = cg._mk(f"{root}/{c}{own.rstrip('/')}/{name}")
            if cpus is not None:
                cg.set_cpu(cpus)
            if memory is not None:
                cg.set_memory(memory)
        except OSError:
            cg.remove()
            raise
        return cg

    @classmethod
    def of_process(cls, pid: int, root: str = ROOT) -> "Cgroup":
        """The group another process is in (a container's, made by its runtime), to read:
        `remove` leaves it alone (nothing of it is in `dirs`)."""
        cg = cls(f"pid-{pid}", root)
        for c in ("cpu", "cpuacct", "memory", "freezer"):
            path = own_path(None if cg.version == "v2" else c, f"/proc/{pid}/cgroup")
            if path is not None:
                cg._dir[c] = root + path.rstrip("/") if cg.version == "v2" else f"{root}/{c}{path.rstrip('/')}"
        return cg

    def _mk(self, d: str) -> str:
        os.makedirs(d, exist_ok=True)
        self.dirs.append(d)
        return d

    def _file(self, controller: str, v1: str, v2: str) -> str | None:
        d = self._dir.get(controller)
        return None if d is None else f"{d}/{v2 if self.version == 'v2' else v1}"

    # -- limits -------------------------------------------------------------------------------
    def set_cpu(self, cpus: float | None) -> None:
        """A quota of `cpus` cores per period; None lifts it."""
        q = -1 if cpus is None else max(1000, int(cpus * self.period_us))
        if self.version == "v2":
            _write(f"{self._dir['cpu']}/cpu.max", f"{'max' if q < 0 else q} {self.period_us}")
        else:
            _write(f"{self._dir['cpu']}/cpu.cfs_period_us", str(self.period_us))
            _write(f"{self._dir['cpu']}/cpu.cfs_quota_us", str(q))
        self.cpus = cpus

    def set_memory(self, limit: int) -> None:
        if self.version == "v2":
            _write(f"{self._dir['memory']}/memory.max", str(limit))
            try:
                _write(f"{self._dir['memory']}/memory.swap.max", "0")
            except OSError:
                pass
        else:
            _write(f"{self._dir['memory']}/memory.limit_in_bytes", str(limit))
        self.memory = limit

    @property
    def can_freeze(self) -> bool:
        return "freezer" in self._dir

    def freeze(self, on: bool = True) -> None:
        """Stop (or resume) every process of the group; their sockets stay open."""
        if not self.can_freeze:
            raise OSError("no freezer for this group (needs root and the freezer controller)")
        if self.version == "v2":
            _write(f"{self._dir['freezer']}/cgroup.freeze", "1" if on else "0")
        else:
            _write(f"{self._dir['freezer']}/freezer.state", "FROZEN" if on else "THAWED")

    # -- members ------------------------------------------------------------------------------
    @property
    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self.dirs]

    def add(self, pid: int = 0) -> None:
        """Move `pid` (0: the calling process) into the group, in every hierarchy."""
        for p in self.procs_files:
            _write(p, str(pid))

    def preexec(self) -> "callable":
        """For Popen(preexec_fn=...): the child joins before it execs, so it and all it forks
        are inside from their first instruction."""
        files = self.procs_files

        def enter() -> None:
            for p in files:
                _write(p, "0")
        return enter

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` started through a shell that joins the group first (for a caller that
        cannot pass preexec_fn)."""
        if not self.dirs:
            return cmd
        joins = " && ".join(f'echo $$ > "{p}"' for p in self.procs_files)
        return ["sh", "-c", f'{joins} && exec "$@"', "sh", *cmd]

    # -- readings -----------------------------------------------------------------------------
    def memory_used(self) -> int | None:
        """Bytes charged to the group (RSS, page cache, kernel memory): what the limit counts."""
        t = _read(self._file("memory", "memory.usage_in_bytes", "memory.current"))
        try:
            return int(t) if t is not None else None
        except ValueError:
            return None

    def throttled(self) -> int | None:
        """Periods in which the quota throttled the group (cpu.stat nr_throttled)."""
        return _field(_read(self._file("cpu", "cpu.stat", "cpu.stat")), "nr_throttled")

    def oom_kills(self) -> int | None:
        """Processes the memory limit's OOM killer killed in the group."""
        return _field(_read(self._file("memory", "memory.oom_control", "memory.events")), "oom_kill")

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the group has held (cpuacct.usage; v2: cpu.stat usage_usec)."""
        if self.version == "v2":
            us = _field(_read(self._file("cpu", "", "cpu.stat")), "usage_usec")
            return None if us is None else us / 1e6
        t = _read(self._file("cpuacct", "cpuacct.usage", ""))
        return int(t) / 1e9 if t and t.strip().isdigit() else None

    def quota(self) -> tuple[float | None, int | None]:
        """(CPU quota in cores, memory limit in bytes) as the group has them; None: none."""
        if self.version == "v2":
            q, _, per = (_read(self._file("cpu", "", "cpu.max")) or "max").partition(" ")
            cpus = int(q) / int(per) if q.strip().isdigit() and per.strip().isdigit() else None
            m = (_read(self._file("memory", "", "memory.max")) or "max").strip()
            return cpus, int(m) if m.isdigit() else None
        q, per = (_read(self._file("cpu", f, "")) for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        cpus = int(q) / int(per) if q and per and int(q) > 0 else None
        m = _read(self._file("memory", "memory.limit_in_bytes", ""))
        return cpus, int(m) if m and int(m) < UNLIMITED else None

    def pids(self) -> list[int]:
        """The processes in the group now."""
        t = _read(self._file("memory", "cgroup.procs", "cgroup.procs")) or \
            _read(self._file("cpu", "cgroup.procs", "cgroup.procs")) or ""
        return [int(x) for x in t.split()]

    def outside(self, pids: list[int]) -> list[int]:
        """Those of `pids` that are not in this group in every hierarchy it has (a process
        that escaped it escapes its quota or its memory limit)."""
        inside = None
        for d in sorted(set(self._dir.values())):
            members = {int(x) for x in (_read(f"{d}/cgroup.procs") or "").split()}
            inside = members if inside is None else inside & members
        return [] if inside is None else [p for p in pids if p not in inside]

    def remove(self, tries: int = 50) -> list[str]:
        """Thaw, then rmdir each directory (retried while the kernel finishes reaping the
        group's tasks); returns the ones that would not go."""
        if self.can_freeze and self.dirs:
            try:
                self.freeze(False)   # a frozen task cannot die
            except OSError:
                pass
        left = []
        for d in reversed(self.dirs):
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
        self.dirs.clear()
        self._dir.clear()
        return left


def remove_stale(prefix: str, root: str = ROOT) -> None:
    """Remove empty groups `<prefix>...-<pid>` at the top of the cpu hierarchy whose pid is
    gone (left by a run that was killed)."""
    for top in (f"{root}/cpu", root):
        try:
            names = [n for n in os.listdir(top) if n.startswith(prefix)]
        except OSError:
            continue
        for n in names:
            pid = n.rsplit("-", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                try:
                    os.rmdir(f"{top}/{n}")
                except OSError:
                    pass


# --- the limits a process runs under, from any root (the doctor) ---------------------------------

@dataclass
class CgroupLimits:
    version: int | None = None       # 1 or 2: the hierarchy holding the cpu/memory controllers
    cpu: float | None = None         # CPU quota in cores
    memory: int | None = None        # bytes
    memory_used: int | None = None   # bytes (only with a memory limit)


def _int(p: Path) -> int | None:
    try:
        return int(p.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _v1_dir(base: Path, controller: str, path: str) -> tuple[Path, Path] | None:
    """(mount, group dir) of a v1 controller; mounts are named 'cpu' or 'cpu,cpuacct'."""
    try:
        mounts = [p for p in base.iterdir() if controller in p.name.split(",") and p.is_dir()]
    except OSError:
        return None
    if not mounts:
        return None
    d = mounts[0] / path.lstrip("/")
    return mounts[0], (d if d.is_dir() else mounts[0])


def _walk_up(top: Path, d: Path):
    """d, its parent, ... up to top: a limit set on any ancestor applies too."""
    while True:
        yield d
        if d == top or top not in d.parents:
            return
        d = d.parent


def read_limits(root: str | os.PathLike = "/") -> CgroupLimits:
    """The tightest CPU quota and memory limit on this process's groups (and ancestors)."""
    root = Path(root)
    base = root / "sys/fs/cgroup"
    v1: dict[str, str] = {}
    v2 = None
    try:
        text = (root / "proc/self/cgroup").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        for c in parts[1].split(","):
            if c:
                v1[c] = parts[2]
    out = CgroupLimits()
    usage = None
    if "memory" in v1 and (m := _v1_dir(base, "memory", v1["memory"])):
        top, d = m
        out.version = 1
        limits = [x for p in _walk_up(top, d) if (x := _int(p / "memory.limit_in_bytes")) is not None
                  and x < UNLIMITED]
        out.memory = min(limits) if limits else None
        usage = _int(d / "memory.usage_in_bytes")
    if "cpu" in v1 and (c := _v1_dir(base, "cpu", v1["cpu"])):
        top, d = c
        out.version = 1
        for p in _walk_up(top, d):
            q, per = _int(p / "cpu.cfs_quota_us"), _int(p / "cpu.cfs_period_us")
            if q is not None and q > 0 and per:
                out.cpu = min(out.cpu, q / per) if out.cpu else q / per
    if out.version is None and v2 is not None and (base / "cgroup.controllers").exists():
        d = base / v2.lstrip("/")
        d = d if d.is_dir() else base   # a cgroup namespace shows "/" or a path outside it
        out.version = 2
        for p in _walk_up(base, d):
            try:
                m2 = (p / "memory.max").read_text().split()
            except OSError:
                m2 = []
            if m2 and m2[0].isdigit() and int(m2[0]) < UNLIMITED:
                out.memory = min(out.memory, int(m2[0])) if out.memory else int(m2[0])
            try:
                c2 = (p / "cpu.max").read_text().split()
            except OSError:
                c2 = []
            if len(c2) == 2 and c2[0].isdigit() and c2[1].isdigit() and int(c2[1]):
                quota = int(c2[0]) / int(c2[1])
                out.cpu = min(out.cpu, quota) if out.cpu else quota
        usage = _int(d / "memory.current")
    out.memory_used = usage if out.memory is not None else None
    return out
