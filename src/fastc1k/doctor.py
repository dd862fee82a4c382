"""`python -m fastc1k.doctor`: this host's limits, and how many connections they allow.

Strategy: read every limit into one `Facts` record (the readers take a root path, so tests
and a container's mounted /proc can be pointed at another tree), then work out, for the
server and for the load generator apart, what each limit allows; the smallest one caps,
and the report names it with the flag or setting that lifts it. Nothing here changes the
host: sysctl/apply.sh does that, as root.

    python -m fastc1k.doctor [--target 100k] [--json] [--root /]
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from ._cli import ArgumentParser, UsageError
from .config import FD_RESERVE, FIELDS
from .host import cgroup, conntrack, proc, sysctl

__all__ = ["Facts", "read_facts", "diagnose", "render", "main", "parse_count", "parse_cpu_list",
           "FD_RESERVE", "KERNEL_BYTES_PER_LOOPBACK_PAIR", "RECOMMENDED"]

# fds a process keeps besides its connections: config.FD_RESERVE, the margin serve's start-up
# check and `--max-connections auto` leave between the fd limit and max_connections.
# Kernel slab per loopback connection pair (both ends), measured here: ~8.9 KB
# (bench/METHOD.md, the anchors). Half of it for a server whose clients are elsewhere.
KERNEL_BYTES_PER_LOOPBACK_PAIR = 9 * 1024
# A port left by an active close stays in TIME_WAIT this long (fixed in Linux, not a sysctl).
TIME_WAIT_SECONDS = 60
CAP_SYS_RESOURCE = 24
# The values sysctl/99-fastc1k.conf sets (tests/test_packaging.py keeps the two equal).
RECOMMENDED = {
    "fs.file-max": 2097152,
    "fs.nr_open": 1048576,
    "net.core.somaxconn": 65535,
    "net.ipv4.tcp_max_syn_backlog": 65535,
    "net.core.netdev_max_backlog": 65536,
    "net.ipv4.ip_local_port_range": "10000 65535",
    "net.ipv4.tcp_tw_reuse": 1,
    "net.ipv4.tcp_fin_timeout": 15,
}
_DEFAULTS = {f.name: f.default for f in FIELDS}


@dataclasses.dataclass
class Facts:
    """What the kernel says; None where a file was missing or unreadable."""
    nofile_soft: int | None = None
    nofile_hard: int | None = None
    can_raise_hard: bool | None = None      # CAP_SYS_RESOURCE: may raise the hard fd limit
    nr_open: int | None = None
    file_max: int | None = None
    files_in_use: int | None = None
    somaxconn: int | None = None
    epoll_watches: int | None = None         # fs.epoll.max_user_watches: fds one user may watch
    tcp_max_syn_backlog: int | None = None
    port_range: tuple[int, int] | None = None
    tcp_tw_reuse: int | None = None
    tcp_fin_timeout: int | None = None
    netdev_max_backlog: int | None = None
    tcp_syncookies: int | None = None
    mem_total: int | None = None             # bytes
    mem_available: int | None = None         # bytes
    cores: int | None = None                 # CPUs this process may run on
    cgroup_version: int | None = None        # 1 or 2: the hierarchy holding the cpu/memory controllers
    cgroup_cpu: float | None = None          # CPU quota in cores
    cgroup_mem_limit: int | None = None      # bytes
    cgroup_mem_usage: int | None = None      # bytes
    conntrack: dict | None = None            # host.conntrack.active(): active, why, count, max, drop...

    @property
    def ephemeral_ports(self) -> int | None:
        return None if self.port_range is None else self.port_range[1] - self.port_range[0] + 1

    @property
    def memory_for_connections(self) -> tuple[int | None, str]:
        """Bytes new connections may use, and which limit says so."""
        avail, by = self.mem_available, "memory"
        if self.cgroup_mem_limit is not None:
            room = max(0, self.cgroup_mem_limit - (self.cgroup_mem_usage or 0))
            if avail is None or room < avail:
                avail, by = room, "cgroup memory limit"
        return avail, by

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ephemeral_ports"] = self.ephemeral_ports
        return d


# --- readers: each returns None rather than raising on a missing or odd file ---------------

def parse_cpu_list(text: str) -> int | None:
    """'0-3,8-11' -> 8 (the kernel's cpulist format)."""
    try:
        n = 0
        for part in text.strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return n or None
    except ValueError:
        return None


def read_facts(root: str | os.PathLike = "/") -> Facts:
    root = Path(root)
    f = Facts()
    f.nr_open = sysctl.read_int("fs.nr_open", root)
    soft, hard = proc.nofile_limits(root)
    if hard == -1:  # RLIM_INFINITY: the kernel still stops at fs.nr_open
        hard = f.nr_open
    if soft == -1:
        soft = hard
    f.nofile_soft, f.nofile_hard = soft, hard
    status = proc.status(root)
    try:
        f.can_raise_hard = bool(int(status["CapEff"], 16) >> CAP_SYS_RESOURCE & 1)
    except (KeyError, ValueError):
        pass
    f.cores = parse_cpu_list(status.get("Cpus_allowed_list", ""))
    f.file_max = sysctl.read_int("fs.file-max", root)
    f.files_in_use = sysctl.read_int("fs.file-nr", root)
    f.somaxconn = sysctl.read_int("net.core.somaxconn", root)
    f.epoll_watches = sysctl.read_int("fs.epoll.max_user_watches", root)
    f.tcp_max_syn_backlog = sysctl.read_int("net.ipv4.tcp_max_syn_backlog", root)
    f.tcp_tw_reuse = sysctl.read_int("net.ipv4.tcp_tw_reuse", root)
    f.tcp_fin_timeout = sysctl.read_int("net.ipv4.tcp_fin_timeout", root)
    f.netdev_max_backlog = sysctl.read_int("net.core.netdev_max_backlog", root)
    f.tcp_syncookies = sysctl.read_int("net.ipv4.tcp_syncookies", root)
    f.port_range = sysctl.port_range(root)
    meminfo = proc.meminfo(root)
    f.mem_total, f.mem_available = meminfo.get("MemTotal"), meminfo.get("MemAvailable")
    cg = cgroup.read_limits(root)
    f.cgroup_version, f.cgroup_cpu, f.cgroup_mem_limit, f.cgroup_mem_usage = cg.version, cg.cpu, cg.memory, cg.memory_used
    if Path(root).resolve() == Path("/"):   # a live reading (the rules, the count moving): not from a copied tree
        f.conntrack = conntrack.active(watch_s=0.3)
    return f


def conntrack_room(ct: dict | None) -> int | None:
    """Connections the conntrack table still takes in this namespace (None: not tracked
    here, or unknown). One entry per connection, loopback included; closed ones stay in
    TIME_WAIT 120 s."""
    if not ct or not ct.get("active") or ct.get("max") is None:
        return None
    return max(0, ct["max"] - ct.get("count", 0))


# --- arithmetic ----------------------------------------------------------------------------

def parse_count(text: str) -> int:
    """'100k' -> 100000, '1M' -> 1000000 (decimal: these are connections, not bytes)."""
    s = str(text).strip().lower()
    mult = {"k": 10**3, "m": 10**6}.get(s[-1:], 1)
    try:
        n = float(s[:-1] if mult > 1 else s) * mult
        if not math.isfinite(n) or n < 1 or n > 1e9:
            raise ValueError
    except ValueError:
        raise ValueError(f"a connection count like 100k or 1M, got {text!r}") from None
    return int(n)


def _ip_range(n: int) -> str:
    first = ipaddress.IPv4Address("127.0.0.1")
    return f"{first}-{first + n - 1}"


def _cap(limits: dict[str, int | None]) -> tuple[int | None, str]:
    known = {k: v for k, v in limits.items() if v is not None}
    if not known:
        return None, "unknown"
    name = min(known, key=lambda k: known[k])
    return known[name], name


def diagnose(f: Facts, target: int = 100_000) -> dict[str, Any]:
    """What the server and the load generator can hold here, what caps each, and the fixes."""
    per_proc = None if f.nofile_hard is None else max(0, f.nofile_hard - FD_RESERVE)
    files_free = None if f.file_max is None else max(0, f.file_max - (f.files_in_use or 0))
    mem, mem_by = f.memory_for_connections
    notes: list[str] = []
    hard = f"{f.nofile_hard:,}" if f.nofile_hard is not None else "?"

    # Server: each worker is a process, so the fd limit caps a worker, not the server.
    workers = math.ceil(target / per_proc) if per_proc else None
    server_mem = None if mem is None else mem // (KERNEL_BYTES_PER_LOOPBACK_PAIR // 2)
    ct_room = conntrack_room(f.conntrack)
    # every connection is one epoll watch, counted per user across all its processes
    watches = f.epoll_watches
    host_max, host_by = _cap({"fs.file-max": files_free, mem_by: server_mem, "nf_conntrack_max": ct_room,
                              "fs.epoll.max_user_watches": watches})
    server_fix = None
    if workers and workers > 1:
        share = math.ceil(target / workers)
        server_fix = (f"fd limit {hard} per process: --workers {workers} --max-connections {share} "
                      f"holds {target:,}")
    elif per_proc and target > _DEFAULTS["max_connections"]:
        server_fix = f"--max-connections {target} (default {_DEFAULTS['max_connections']:,} per worker)"
    server = {
        "per_process": per_proc, "per_process_capped_by": "fd limit" if per_proc is not None else "unknown",
        "workers_needed": workers, "host_max": host_max, "host_capped_by": host_by, "fix": server_fix,
        "accept_queue": None if f.somaxconn is None else min(f.somaxconn, _DEFAULTS["backlog"]),
        "target_fits": None if host_max is None else target <= host_max,
    }

    # Load generator: one source address reaches one server ip:port from each ephemeral port.
    ports = f.ephemeral_ports
    sources = math.ceil(target / ports) if ports else None
    procs = workers
    # More processes lift the fd limit; only more source addresses lift the port range.
    load_per, load_by = _cap({"ephemeral ports": ports, "fd limit": per_proc})
    load_host, load_host_by = _cap({"fs.file-max": files_free, mem_by: server_mem, "nf_conntrack_max": ct_room})
    fixes = []
    if sources and sources > 1:
        fixes.append(f"{ports:,} ephemeral ports per source address: --source-ips {_ip_range(sources)} "
                     f"for {target:,}")
    if procs and procs > 1:
        fixes.append(f"fd limit {hard} per process: --processes {procs}")
    load = {"per_source_ip": ports, "capped_by": "ephemeral ports" if ports else "unknown",
            "per_process": per_proc, "one_process_one_address": load_per, "one_process_capped_by": load_by,
            "host_max": load_host, "host_capped_by": load_host_by,
            "source_ips_needed": sources, "processes_needed": procs, "fix": "; ".join(fixes) or None,
            "target_fits": None if load_host is None else target <= load_host}

    # Both ends on this host (a loopback test): every connection is two fds and ~9 KB of kernel.
    pairs_mem = None if mem is None else mem // KERNEL_BYTES_PER_LOOPBACK_PAIR
    lo_max, lo_by = _cap({"fs.file-max": None if files_free is None else files_free // 2,
                          mem_by: pairs_mem, "nf_conntrack_max": ct_room,
                          "fs.epoll.max_user_watches": None if watches is None else watches // 2})
    loopback = {"memory_pairs": pairs_mem, "max_pairs": lo_max, "capped_by": lo_by,
                "target_fits": None if lo_max is None else target <= lo_max}

    # Limits that do not cap the count but shape a test.
    if f.nofile_soft is not None and f.nofile_hard is not None and f.nofile_soft < f.nofile_hard:
        notes.append(f"soft fd limit {f.nofile_soft:,} is below the hard {f.nofile_hard:,}: "
                     f"`ulimit -n {f.nofile_hard}` (or let the process raise its own soft limit)")
    if f.can_raise_hard and f.nr_open and f.nofile_hard and f.nofile_hard < f.nr_open:
        notes.append(f"this process may raise its hard fd limit up to fs.nr_open {f.nr_open}: "
                     f"`ulimit -Hn {f.nr_open}`, `prlimit --nofile={f.nr_open}`, "
                     f"or docker --ulimit nofile={f.nr_open}")
    elif f.can_raise_hard is False:
        notes.append("no CAP_SYS_RESOURCE: the hard fd limit cannot be raised from here; "
                     "more processes (--workers, --processes) is the way past it")
    if ports and f.tcp_tw_reuse == 0:
        notes.append(f"tcp_tw_reuse=0: each closed client port waits in TIME_WAIT {TIME_WAIT_SECONDS} s, "
                     f"so reconnects are capped near {ports // TIME_WAIT_SECONDS:,}/s per source address")
    if f.somaxconn is not None and f.somaxconn < _DEFAULTS["backlog"]:
        notes.append(f"net.core.somaxconn {f.somaxconn} caps the accept queue below --backlog "
                     f"{_DEFAULTS['backlog']}: a connect burst overflows it (ListenOverflows); "
                     f"sysctl/apply.sh sets {RECOMMENDED['net.core.somaxconn']}")
    if watches is not None and watches < target:
        notes.append(f"fs.epoll.max_user_watches {watches:,} is below the target: past it a worker cannot "
                     f"watch a new connection (closed at once, counted as accept_unwatched); "
                     f"sysctl -w fs.epoll.max_user_watches={max(target * 2, 1 << 20)}")
    if f.tcp_max_syn_backlog is not None and f.tcp_max_syn_backlog < 4096 and f.tcp_syncookies != 1:
        notes.append(f"tcp_max_syn_backlog {f.tcp_max_syn_backlog} with syncookies off: "
                     "half-open connections past it are dropped during a connect burst")
    if f.cgroup_cpu is not None:
        notes.append(f"CPU quota {f.cgroup_cpu:g} cores (cgroup v{f.cgroup_version}): "
                     f"more workers than {math.ceil(f.cgroup_cpu)} add fds, not CPU")
    ct = f.conntrack
    if ct is not None:
        ct = {**ct, "room": ct_room, "fix": conntrack.fix() if ct.get("active") else None}
        if ct.get("active") and ct_room is not None and ct_room < target:
            notes.append(f"conntrack tracks this namespace's connections ({ct['why']}): "
                         f"{ct_room:,} more fit under nf_conntrack_max {ct['max']:,}; past it SYNs are dropped "
                         f"and clients time out while the server idles")
    return {"target": target, "facts": f.as_dict(), "server": server, "load": load,
            "loopback": loopback, "conntrack": ct, "notes": notes}


# --- report --------------------------------------------------------------------------------

def _n(v: Any) -> str:
    return "unknown" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def _bytes(v: int | None) -> str:
    return "unknown" if v is None else f"{v / (1 << 30):.1f} GiB"


def _fix_lines(section: dict[str, Any], target: int) -> list[str]:
    if section["target_fits"] is False:  # more processes cannot get past a host-wide limit
        return [f"  target {target:,} does not fit: {section['host_capped_by']} is the wall"]
    return [f"  fix: {section['fix']}"] if section["fix"] else []


def render(d: dict[str, Any]) -> str:
    f, s, g, lo = d["facts"], d["server"], d["load"], d["loopback"]
    ports = f["port_range"]
    nofile = (f"{f['nofile_soft']} / {f['nofile_hard']}" if f["nofile_hard"] is not None else "unknown")
    cg_cpu = "none" if f["cgroup_cpu"] is None else f"{f['cgroup_cpu']:g} cores (v{f['cgroup_version']})"
    cg_mem = "none" if f["cgroup_mem_limit"] is None else (
        f"{_bytes(f['cgroup_mem_limit'])}, {_bytes(f['cgroup_mem_usage'])} used (v{f['cgroup_version']})")
    rows = [
        ("RLIMIT_NOFILE soft / hard", nofile, f"{_n(s['per_process'])} connections per process "
                                              f"(server worker or load process; {FD_RESERVE} fds kept back)"),
        ("fs.nr_open", _n(f["nr_open"]), "the highest hard fd limit root can set"),
        ("fs.file-max (in use)", f"{_n(f['file_max'])} ({_n(f['files_in_use'])})",
         "open files, all processes"),
        ("net.ipv4.ip_local_port_range", "unknown" if ports is None else f"{ports[0]}-{ports[1]}",
         f"{_n(f['ephemeral_ports'])} connections per source address to one server ip:port"),
        ("net.ipv4.tcp_tw_reuse", _n(f["tcp_tw_reuse"]),
         f"0: closed client ports wait {TIME_WAIT_SECONDS} s; 1: reuse; 2: loopback only"),
        ("net.core.somaxconn", _n(f["somaxconn"]), f"accept queue per listener: {_n(s['accept_queue'])} "
                                                   f"with --backlog {_DEFAULTS['backlog']}"),
        ("fs.epoll.max_user_watches", _n(f["epoll_watches"]),
         "fds one user may watch with epoll, all its processes: one per connection"),
        ("net.ipv4.tcp_max_syn_backlog", _n(f["tcp_max_syn_backlog"]),
         f"half-open connections per listener (syncookies {_n(f['tcp_syncookies'])})"),
        ("memory total / available", f"{_bytes(f['mem_total'])} / {_bytes(f['mem_available'])}",
         f"{_n(lo['memory_pairs'])} loopback connection pairs at ~9 KB of kernel memory each"),
        ("cores", _n(f["cores"]), "one busy worker or load process per core"),
        ("cgroup CPU quota", cg_cpu, ""),
        ("cgroup memory limit", cg_mem, ""),
    ]
    ct = d.get("conntrack")
    if ct and ct.get("max") is not None:
        state = {True: "active here", False: "not active here", None: "active: unknown"}[ct.get("active")]
        rows.append(("nf_conntrack_max (count)", f"{_n(ct['max'])} ({_n(ct.get('count'))})",
                     f"conntrack {state}: {ct['why']}"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"fastc1k doctor: what this host's limits allow (target {d['target']:,} connections)", ""]
    out += [f"  {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    out += ["", "server (fastc1k.serve):",
            f"  {_n(s['per_process'])} connections per worker, "
            f"capped by the fd limit {_n(f['nofile_hard'])} per process",
            f"  the host, with enough workers: {_n(s['host_max'])}, capped by {s['host_capped_by']}"]
    out += _fix_lines(s, d["target"])
    out += ["", "load generator (fastc1k.load), to one server ip:port:",
            f"  {_n(g['per_source_ip'])} connections per source address, capped by the ephemeral ports "
            f"{'unknown' if ports is None else f'{ports[0]}-{ports[1]}'}",
            f"  {_n(g['per_process'])} per process, capped by the fd limit; one process from one address: "
            f"{_n(g['one_process_one_address'])} ({g['one_process_capped_by']})",
            f"  the host, with enough processes and addresses: {_n(g['host_max'])}, "
            f"capped by {g['host_capped_by']}"]
    out += _fix_lines(g, d["target"])
    out += ["", "both on this host (loopback test):",
            f"  {_n(lo['max_pairs'])} connection pairs, capped by {lo['capped_by']}"
            " (kernel memory only: add the processes' own memory)"]
    if lo["target_fits"] is not None:
        out.append(f"  target {d['target']:,}: " + ("fits, with the fixes above" if lo["target_fits"]
                                                    else f"does not fit: {lo['capped_by']} is the wall"))
    if ct and ct.get("active"):
        out += ["", "conntrack (every connection here is tracked, loopback included):",
                f"  {_n(ct['room'])} more connections fit under nf_conntrack_max {_n(ct['max'])} "
                f"(count {_n(ct.get('count'))}; drops so far {_n(ct.get('drop'))}, insert failures "
                f"{_n(ct.get('insert_failed'))})",
                f"  fix: {ct['fix']}"]
    if d["notes"]:
        out += ["", "notes:"] + [f"  - {n}" for n in d["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="python -m fastc1k.doctor",
        description="This host's limits and how many concurrent connections they allow.")
    ap.add_argument("--target", default="100k", help="connections to plan for (100k, 1M; default 100k)")
    ap.add_argument("--json", action="store_true", help="print the facts and conclusions as JSON")
    ap.add_argument("--root", default="/", help="read /proc and /sys under this directory (default /)")
    try:
        args = ap.parse_args(argv)
        try:
            target = parse_count(args.target)
        except ValueError as exc:
            raise UsageError(f"--target: {exc}") from None
        if not Path(args.root, "proc").is_dir():
            raise UsageError(f"--root: no proc/ under {args.root!r} (the doctor reads Linux /proc)")
    except UsageError as exc:
        print(f"fastc1k.doctor: error: {exc}", file=sys.stderr)
        return 2
    d = diagnose(read_facts(args.root), target)
    sys.stdout.write(json.dumps(d, indent=2) + "\n" if args.json else render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
