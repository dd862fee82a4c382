"""How many concurrent keep-alive connections this host holds: the probe's run.

Every connection is answered twice: once right after it opens, once after all of them
have been held for --hold seconds; a connection counts as held only if both answers are
200 and the server never closed it. Opening stops early (and the connections already
open are still held and checked) when used memory passes --max-memory (85% by default),
when the clients meet an error they cannot get past (EADDRNOTAVAIL: ports; EMFILE: fds),
or at --open-timeout; the report names that limit with its figure.

The clients are processes of their own (client.py). The server is
`python -m fastc1k.serve` (started here unless --target is given), one SO_REUSEPORT
worker per --workers.

Reported: connections held, opening time and rate, kernel memory per connection (Slab
and the TCP page pool from /proc/meminfo and /proc/net/sockstat, before/after), server
user-space memory per connection (workers' RSS delta), and what stopped the next step.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

from ...config import FD_RESERVE
from ...doctor import KERNEL_BYTES_PER_LOOPBACK_PAIR as KERNEL_BYTES_PER_PAIR
from ...host import conntrack, proc, sysctl
from ..stages import server_env
from .client import C_DONE, C_FAILED, C_LOST, C_OPENED, C_VERIFIED, C_VERIFY_FAILED, CLOSE, HOLD, N_COUNTERS, \
    N_ERRNO, OPEN, REQUEST, VERIFY, client_process, response_done

__all__ = ["ProbeSpec", "ProbeResult", "run_probe", "host_limits", "auto_connections", "summary", "snapshot",
           "KERNEL_BYTES_PER_PAIR"]


@dataclass
class ProbeSpec:
    connections: int = 10_000
    workers: int = 2                   # server workers (ignored with target)
    clients: int = 2                   # client processes
    source_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    target: tuple[str, int] | None = None
    server_pids: list[int] = field(default_factory=list)
    engine: str | None = None
    hold: float = 5.0
    open_timeout: float = 240.0
    verify_timeout: float = 60.0
    in_flight: int = 256               # outstanding handshakes per client process
    # a connection not answered this long after connect() failed (ETIMEDOUT): a SYN that a
    # full conntrack table dropped is retried by the kernel for two minutes, in SYN-SENT
    connect_timeout: float = 10.0
    max_memory: float = 0.85           # stop opening past this fraction of RAM in use
    quiet: bool = False
    conntrack: str = "notrack"         # where tracking is active: exempt the port, or "raise" the max


@dataclass
class ProbeResult:
    target_connections: int
    opened: int = 0
    held: int = 0                       # answered when opened and again after the hold
    failed_open: int = 0
    lost_during_hold: int = 0
    failed_verify: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    open_seconds: float = 0.0
    open_rate: float = 0.0
    verify_seconds: float = 0.0
    hold_seconds: float = 0.0
    kernel_bytes_per_conn: float = 0.0  # Slab + TCP pages, per client+server pair
    slab_bytes_per_conn: float = 0.0
    tcp_mem_bytes_per_conn: float = 0.0
    server_rss_bytes_per_conn: float = 0.0
    server_rss_before: int = 0
    server_rss_after: int = 0
    client_rss_bytes_per_conn: float = 0.0
    mem_used_fraction_peak: float = 0.0
    stopped_by: str = ""
    next_limit: str = ""
    limits: dict[str, Any] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    workers: int = 0
    clients: int = 0
    engine: str = ""
    conntrack: str = ""                 # what was done about nf_conntrack_max, and why


# --- host facts ---------------------------------------------------------------------------------
def snapshot() -> dict[str, int]:
    m, s = proc.meminfo(), proc.sockstat()
    return {"mem_total": m.get("MemTotal", 0), "mem_available": m.get("MemAvailable", 0),
            "slab": m.get("Slab", 0), "sunreclaim": m.get("SUnreclaim", 0),
            "tcp_inuse": s.get("inuse", 0), "tcp_alloc": s.get("alloc", 0), "tcp_mem_pages": s.get("mem", 0),
            "tcp_tw": s.get("tw", 0), "tcp_orphan": s.get("orphan", 0)}


def host_limits() -> dict[str, Any]:
    lo, hi = sysctl.port_range() or sysctl.DEFAULT_PORT_RANGE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ct = conntrack.active(watch_s=0.3)
    m = proc.meminfo()
    return {
        "nofile_soft": soft, "nofile_hard": hard,
        "file_max": sysctl.read_int("fs.file-max") or 0,
        "file_nr": sysctl.read_int("fs.file-nr") or 0,
        "ports_per_source": hi - lo + 1,
        "somaxconn": sysctl.read_int("net.core.somaxconn") or 0,
        "tcp_mem_pages": [int(x) for x in (sysctl.read("net.ipv4.tcp_mem") or "0 0 0").split()],
        # tracked here (a NAT or ct rule, or the count moving): else the count is stale entries
        "conntrack_active": ct.get("active"), "conntrack_why": ct.get("why"),
        "nf_conntrack_max": ct.get("max"), "nf_conntrack_count": ct.get("count"),
        "mem_total": m.get("MemTotal", 0),
        "mem_available": m.get("MemAvailable", 0),
        "cpus": os.cpu_count(),
    }


def auto_connections(spec: ProbeSpec, lim: dict[str, Any]) -> tuple[int, str]:
    """The most this host should hold, and the limit that sets it."""
    per_proc = lim["nofile_hard"] - FD_RESERVE
    caps = {
        "server fds (workers x RLIMIT_NOFILE)": spec.workers * per_proc if spec.target is None else 1 << 40,
        "client fds (clients x RLIMIT_NOFILE)": spec.clients * per_proc,
        "fs.file-max (two fds per connection)": (lim["file_max"] - lim["file_nr"]) // 2,
        "ports (source addresses x port range)": len(spec.source_ips) * lim["ports_per_source"],
        f"memory ({spec.max_memory:.0%} of RAM at ~9 KiB kernel per connection)":
            int(lim["mem_available"] - lim["mem_total"] * (1 - spec.max_memory)) // KERNEL_BYTES_PER_PAIR,
    }
    name = min(caps, key=caps.get)
    return max(0, caps[name]), name


# --- the server -----------------------------------------------------------------------------------
def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_answering(addr: tuple[str, int], timeout: float, srv: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv is not None and srv.poll() is not None:
            raise RuntimeError(f"the server exited with {srv.returncode} before answering")
        try:
            with socket.create_connection(addr, timeout=1.0) as s:
                s.sendall(REQUEST)
                buf = b""
                while response_done(buf) == 0:
                    data = s.recv(4096)
                    if not data:
                        break
                    buf += data
                if response_done(buf) == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {addr[0]}:{addr[1]} did not answer within {timeout}s")


def start_server(spec: ProbeSpec, per_worker: int) -> tuple[subprocess.Popen, tuple[str, int], list[int]]:
    host = "127.0.0.1"
    port = _free_port(host)
    cmd = [sys.executable, "-m", "fastc1k.serve", "--host", host, "--port", str(port),
           "--workers", str(spec.workers), "--max-connections", str(per_worker),
           "--idle-timeout", str(int(spec.hold + spec.open_timeout + spec.verify_timeout + 120)) + "s",
           "--header-timeout", "60s", "--backlog", "65535", "--listen", "reuseport"]
    if spec.engine:
        cmd += ["--engine", spec.engine]
    srv = subprocess.Popen(cmd, env=server_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        _wait_answering((host, port), 30.0, srv)
        deadline = time.monotonic() + 10
        pids = proc.tree(srv.pid)[1:]
        while len(pids) < spec.workers and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = proc.tree(srv.pid)[1:]
    except BaseException:
        stop_server(srv)
        raise
    return srv, (host, port), pids


def stop_server(srv: subprocess.Popen) -> None:
    if srv.poll() is None:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


# --- the controller ---------------------------------------------------------------------------------
def _say(spec: ProbeSpec, msg: str) -> None:
    if not spec.quiet:
        print(f"[probe {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


CONNTRACK_SPARE = 65536   # entries left for the host's other connections while the probe holds its own
CONNTRACK_WAYS = ("notrack", "raise", "leave")


def run_probe(spec: ProbeSpec) -> ProbeResult:
    """The probe. Where conntrack tracks this namespace (a NAT or ct rule: any container
    engine's published port), every connection costs a table entry and nf_conntrack_max
    caps them with silently dropped SYNs: the server's port is exempted from tracking for
    the run (spec.conntrack "notrack"; "raise": nf_conntrack_max raised to hold every
    connection; "leave": the host as it is), undone afterwards; the result says which."""
    lim = host_limits()
    done: list[Any] = []
    with ExitStack() as stack:
        def untrack(port: int) -> None:
            if not lim.get("conntrack_active") or spec.conntrack == "leave":
                return
            if spec.conntrack == "notrack":
                ct = stack.enter_context(conntrack.notrack_port(port))
                done.append(ct)
                if ct.made:   # nothing of the run is tracked: the table is no limit of it
                    lim.update(conntrack_active=False, conntrack_why=f"port {port} exempted (notrack)")
                    _say(spec, ct.how)
                    return
            ct = stack.enter_context(conntrack.raised_max((lim.get("nf_conntrack_count") or 0) + spec.connections
                                                          + CONNTRACK_SPARE))
            done.append(ct)
            lim["nf_conntrack_max"] = max(lim.get("nf_conntrack_max") or 0, ct.set_to or 0)
            _say(spec, ct.how)
        why = lim.get("conntrack_why")
        res = _run_probe(spec, lim, untrack)
    if done:
        res.conntrack = "; ".join(ct.how for ct in done) + f" (tracking was active: {why})"
    elif lim.get("conntrack_active"):
        res.conntrack = f"conntrack: left as it is (--conntrack leave; tracking active: {why})"
    else:
        res.conntrack = f"conntrack: nothing done, {'not active' if lim.get('conntrack_active') is False else 'unknown'}" \
                        f" here ({why})"
    return res


def _run_probe(spec: ProbeSpec, lim: dict[str, Any], untrack: Callable[[int], None]) -> ProbeResult:
    res = ProbeResult(spec.connections, limits=lim, clients=spec.clients)
    per_client = -(-spec.connections // spec.clients)
    if per_client > lim["nofile_hard"] - FD_RESERVE:
        raise ValueError(f"{per_client} connections per client process is over the fd limit "
                         f"({lim['nofile_hard']} - {FD_RESERVE} reserved): use --clients "
                         f"{-(-spec.connections // (lim['nofile_hard'] - FD_RESERVE))} or more")
    srv = None
    try:
        if spec.target is None:
            # SO_REUSEPORT spreads by hash, not evenly: leave each worker room over its share.
            share = spec.connections / spec.workers
            per_worker = min(lim["nofile_hard"] - FD_RESERVE, int(share + 6 * share ** 0.5 + 100))
            srv, target, pids = start_server(spec, per_worker)
            res.workers = len(pids)
            _say(spec, f"server pid {srv.pid}, {len(pids)} workers, max {per_worker} connections each, "
                       f"on {target[0]}:{target[1]}")
        else:
            target, pids = spec.target, list(spec.server_pids)
            res.workers = len(pids)
        untrack(target[1])
        res.engine = spec.engine or os.environ.get("FASTC1K_ENGINE", "default")
        time.sleep(0.5)
        res.before = snapshot()
        ct0, net0 = conntrack.read() or {}, proc.netstat()
        res.server_rss_before = proc.rss(pids)

        ctx = mp.get_context("fork")
        phase = ctx.Value("i", OPEN, lock=False)
        stop_open = ctx.Value("i", 0, lock=False)
        counters = ctx.Array("q", spec.clients * N_COUNTERS, lock=False)
        errs = ctx.Array("q", spec.clients * N_ERRNO, lock=False)
        clients = []
        left = spec.connections
        for i in range(spec.clients):
            n = min(per_client, left)
            left -= n
            p = ctx.Process(target=client_process, args=(i, n, spec.source_ips, target, spec.in_flight, phase, counters, errs,
                                                  stop_open, spec.connect_timeout), daemon=True)
            p.start()
            clients.append(p)
        client_pids = [p.pid for p in clients]
        client_rss0 = proc.rss(client_pids)

        def total(k: int) -> int:
            return sum(counters[i * N_COUNTERS + k] for i in range(spec.clients))

        # -- open
        t0 = time.monotonic()
        last = 0.0
        while total(C_DONE) < spec.clients:
            now = time.monotonic()
            used = proc.mem_used_fraction()
            res.mem_used_fraction_peak = max(res.mem_used_fraction_peak, used)
            if not stop_open.value:
                if used > spec.max_memory:
                    stop_open.value = 1
                    res.stopped_by = f"memory: {used:.1%} of RAM in use (limit {spec.max_memory:.0%})"
                elif now - t0 > spec.open_timeout:
                    stop_open.value = 1
                    res.stopped_by = f"time: opening took over {spec.open_timeout:.0f}s"
            if not all(p.is_alive() for p in clients):
                raise RuntimeError("a client process died while opening")
            if now - last >= 5:
                last = now
                _say(spec, f"open {total(C_OPENED)}/{spec.connections} failed {total(C_FAILED)} "
                           f"mem {used:.1%} ({now - t0:.0f}s)")
            time.sleep(0.1)
        res.open_seconds = time.monotonic() - t0
        res.opened = total(C_OPENED)
        res.failed_open = total(C_FAILED)
        res.open_rate = res.opened / res.open_seconds if res.open_seconds else 0.0
        _say(spec, f"opened {res.opened} in {res.open_seconds:.1f}s ({res.open_rate:.0f}/s), "
                   f"failed {res.failed_open}; holding {spec.hold:.0f}s")

        # -- hold
        phase.value = HOLD
        t1 = time.monotonic()
        time.sleep(spec.hold)
        res.after = snapshot()
        res.server_rss_after = proc.rss(pids)
        client_rss1 = proc.rss(client_pids)
        res.hold_seconds = time.monotonic() - t1
        res.mem_used_fraction_peak = max(res.mem_used_fraction_peak, proc.mem_used_fraction())

        # -- verify
        phase.value = VERIFY
        t2 = time.monotonic()
        while total(C_DONE) < 2 * spec.clients and (left := spec.verify_timeout - (time.monotonic() - t2)) > 0:
            time.sleep(min(0.05, left))   # the timeout as given, not rounded up to a poll
        res.verify_seconds = time.monotonic() - t2
        phase.value = CLOSE
        # each client counts its connections still unanswered as failed once it sees CLOSE:
        # read the counters after that, not before (a verify cut by the timeout read 0 failures)
        t3 = time.monotonic()
        while min(counters[i * N_COUNTERS + C_DONE] for i in range(spec.clients)) < 2 \
                and any(p.is_alive() for p in clients) and time.monotonic() - t3 < 30:
            time.sleep(0.02)
        res.held = total(C_VERIFIED)
        res.lost_during_hold = total(C_LOST)
        res.failed_verify = total(C_VERIFY_FAILED)
        names = ("EADDRNOTAVAIL", "EMFILE", "ENFILE", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "ENOBUFS",
                 "other")
        res.errors = {names[k]: sum(errs[i * N_ERRNO + k] for i in range(spec.clients))
                      for k in range(N_ERRNO)}
        res.errors = {k: v for k, v in res.errors.items() if v}
        _say(spec, f"held {res.held} (verified in {res.verify_seconds:.1f}s), lost {res.lost_during_hold}, "
                   f"verify failures {res.failed_verify}, errors {res.errors or 'none'}")
        for p in clients:
            p.join(30)
            if p.is_alive():
                p.kill()

        # -- figures
        n = max(1, res.opened)
        dslab = (res.after["slab"] - res.before["slab"])
        dtcp = (res.after["tcp_mem_pages"] - res.before["tcp_mem_pages"]) * 4096
        res.slab_bytes_per_conn = dslab / n
        res.tcp_mem_bytes_per_conn = dtcp / n
        res.kernel_bytes_per_conn = (dslab + dtcp) / n
        res.server_rss_bytes_per_conn = (res.server_rss_after - res.server_rss_before) / n
        res.client_rss_bytes_per_conn = (client_rss1 - client_rss0) / n
        if not res.stopped_by:
            if res.errors.get("EADDRNOTAVAIL"):
                res.stopped_by = f"ports: EADDRNOTAVAIL x{res.errors['EADDRNOTAVAIL']} " \
                                 f"({len(spec.source_ips)} source addresses x {lim['ports_per_source']} ports)"
            elif res.errors.get("EMFILE") or res.errors.get("ENFILE"):
                res.stopped_by = f"fds: EMFILE/ENFILE (RLIMIT_NOFILE {lim['nofile_hard']}, " \
                                 f"fs.file-max {lim['file_max']})"
            elif res.opened >= spec.connections:
                res.stopped_by = "target reached"
            elif res.errors.get("ETIMEDOUT"):
                # conntrack only with the evidence that it dropped packets during the run
                now, net = conntrack.read() or {}, proc.netstat()
                drops = sum(now.get(k, 0) - ct0.get(k, 0) for k in ("drop", "insert_failed"))
                unanswered = f"{res.errors['ETIMEDOUT']:,} connections unanswered {spec.connect_timeout:g} s after connect()"
                if lim.get("conntrack_active") and drops > 0:
                    res.stopped_by = (f"conntrack: {unanswered} (SYNs dropped: {drops:,} conntrack drops and insert "
                                      f"failures during the run, table {now.get('count', 0):,} of nf_conntrack_max "
                                      f"{now.get('max', 0):,})")
                else:
                    lo = net.get("ListenOverflows", 0) - net0.get("ListenOverflows", 0)
                    res.stopped_by = (f"timeouts: {unanswered} ({lo:,} listen queue overflows during the run, "
                                      "host-wide; no conntrack drop)")
            else:
                res.stopped_by = f"errors: {res.errors}"
        res.next_limit = _next_limit(spec, res, lim)
        return res
    finally:
        if srv is not None:
            stop_server(srv)


def _next_limit(spec: ProbeSpec, res: ProbeResult, lim: dict[str, Any]) -> str:
    """The host limit the next step meets first, with its figure."""
    per_conn_mem = res.kernel_bytes_per_conn + res.server_rss_bytes_per_conn + res.client_rss_bytes_per_conn
    caps = {}
    if per_conn_mem > 0:
        usable = lim["mem_total"] * spec.max_memory - (res.before["mem_total"] - res.before["mem_available"])
        caps[f"memory: {per_conn_mem / 1024:.1f} KiB per connection (kernel + server + client) "
             f"x N <= {spec.max_memory:.0%} of {lim['mem_total'] / 2**30:.1f} GiB"] = int(usable / per_conn_mem)
    caps[f"fs.file-max {lim['file_max']:,} (client and server fd per connection, "
         f"{lim['file_nr']:,} in use before)"] = (lim["file_max"] - lim["file_nr"]) // 2
    caps[f"ports: {len(spec.source_ips)} source addresses x {lim['ports_per_source']}"] = \
        len(spec.source_ips) * lim["ports_per_source"]
    # (per-process fd limits are not listed: more workers and clients lift them)
    if lim.get("conntrack_active") and lim.get("nf_conntrack_max"):
        # every connection is one entry: what is left of the table, less what this run holds
        room = lim["nf_conntrack_max"] - (lim.get("nf_conntrack_count") or 0)
        caps[f"nf_conntrack_max {lim['nf_conntrack_max']:,} (conntrack {lim['conntrack_why']})"] = max(0, room)
    name = min(caps, key=caps.get)
    return f"{name} -> about {caps[name]:,} connections"


def summary(res: ProbeResult) -> str:
    mib = 1 << 20
    return "\n".join([
        f"connections held   {res.held:,} of {res.target_connections:,} "
        f"(opened {res.opened:,}, failed {res.failed_open:,}, lost while held {res.lost_during_hold:,}, "
        f"second answer failed {res.failed_verify:,})",
        f"opening            {res.open_seconds:.1f} s ({res.open_rate:,.0f} connections/s); "
        f"second answers in {res.verify_seconds:.1f} s; held {res.hold_seconds:.0f} s",
        f"kernel memory      {res.kernel_bytes_per_conn:,.0f} B per connection (client + server socket): "
        f"Slab {res.slab_bytes_per_conn:,.0f} B + TCP pages {res.tcp_mem_bytes_per_conn:,.0f} B "
        f"(Slab {res.before.get('slab', 0) / mib:,.0f} -> {res.after.get('slab', 0) / mib:,.0f} MiB)",
        f"server user space  {res.server_rss_bytes_per_conn:,.0f} B per connection "
        f"({res.workers} workers, RSS {res.server_rss_before / mib:,.0f} -> {res.server_rss_after / mib:,.0f} MiB, "
        f"{res.server_rss_after / max(1, res.opened):,.0f} B per connection all told)",
        f"client user space  {res.client_rss_bytes_per_conn:,.0f} B per connection ({res.clients} processes)",
        f"memory in use      peak {res.mem_used_fraction_peak:.1%} of {res.limits.get('mem_total', 0) / 2**30:.1f} GiB",
        f"errors             {res.errors or 'none'}",
        f"stopped by         {res.stopped_by}",
        f"next limit         {res.next_limit}",
        f"conntrack          {res.conntrack}",
    ])
