"""The Dask executor: the farm's processes on the workers of a Dask distributed cluster.

Strategy. Dask places and supervises; it carries no request. On each Dask worker that gets
farm processes, a ``Node`` (made by ``Client.run``) starts them as plain subprocesses
running the same ``farm._worker_main`` as the local farm (one C client each, one
socketpair each) and keeps their once-a-second reports until the coordinator takes them
(``Client.run`` every PULL_EVERY seconds: one pickled batch per worker); commands
(connections, rate, stop) go down the same way. The coordinator (``DaskExecutor``, behind
``farm.LoadFarm``) therefore merges exactly what the local farm merges. Only ``Client.run``
is used, so the scheduler itself needs nothing of fastc1k.

Before anything starts, the coordinator: checks each worker runs this fastc1k version
with its C extension (refused otherwise, naming the machine); reads each machine's limits
there (fd limit, ephemeral ports, the source addresses it declares in FASTC1K_SOURCE_IPS)
and refuses a plan that does not fit, with the numbers; measures each worker's wall-clock
offset (the sample with the shortest round trip) and refuses offsets over a bound. All
processes then begin second 0 at one wall-clock instant, each on its own machine's clock
corrected by its offset, so their seconds line up.

A worker that stops reporting (its machine lost, its process killed) is reported "lost"
after LOST_AFTER seconds of silence once the scheduler no longer lists it (or after
SILENT_MAX seconds whatever the scheduler says); a node whose coordinator falls silent
stops its processes after CONTACT_LOST seconds. Every run ends by itself.
"""
from __future__ import annotations

import os
import pickle
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from multiprocessing.connection import Connection, wait
from urllib.parse import urlsplit

from ..host import sysctl
from ..host.net import parse_source_ips
from . import farm as _farm

START_LEAD_S = 0.5          # second 0 begins this long after the start command is sent
LOST_AFTER = 3.0            # silence (s) after which a worker gone from the scheduler is lost
SILENT_MAX = 15.0           # silence (s) after which a worker is lost whatever the scheduler says
CONTACT_LOST = 20.0         # a node stops its processes after this long without the coordinator
PULL_EVERY = 0.5           # s between the coordinator's collections of reports
MAX_CLOCK_OFFSET = 0.050    # s; default bound on a worker's clock offset
CLOCK_SAMPLES = 5
SOURCES_ENV = "FASTC1K_SOURCE_IPS"     # the source addresses a load machine declares
PROCESSES_RESOURCE = "load-processes"  # Dask worker resource: farm processes on that worker


class ClusterError(RuntimeError):
    """The cluster cannot run this plan (unreachable, wrong version, too small, clocks)."""


# ---------------------------------------------------------------------------- on the worker

def machine_limits() -> dict:
    """What this machine can hold, read here: fd limit, ephemeral ports, declared sources."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lo, hi = sysctl.port_range() or sysctl.DEFAULT_PORT_RANGE
    ports = hi - lo + 1
    declared = os.environ.get(SOURCES_ENV, "")
    try:
        sources = parse_source_ips(declared)
    except ValueError as e:
        return {"why": f"{SOURCES_ENV}={declared!r}: {e}"}
    return {"fd_limit": hard, "ports": ports, "sources": sources,
            "cores": len(os.sched_getaffinity(0))}


def _probe_factory():
    # a closure, so Dask ships it by value: it must run where fastc1k does not import
    def probe():
        import socket
        import sys
        out = {"host": socket.gethostname(), "python": sys.version.split()[0]}
        try:
            import fastc1k
            out["version"] = getattr(fastc1k, "__version__", "unknown")
        except Exception as e:                          # noqa: BLE001 - reported, not raised
            out["why"] = f"fastc1k is not importable ({type(e).__name__}: {e})"
            return out
        try:
            from fastc1k.load import _client             # noqa: F401
            from fastc1k.load.cluster import machine_limits
        except Exception as e:                          # noqa: BLE001
            out["no_c"] = f"{type(e).__name__}: {e}"
            return out
        out.update(machine_limits())
        return out
    return probe


def child_main(fd: int) -> None:
    """A farm process on a worker machine: the local farm's worker loop over a socketpair."""
    conn = Connection(fd)
    _farm._worker_main(conn, conn.recv())


class Node:
    """The farm processes on one Dask worker; their reports wait here to be taken."""

    def __init__(self, machine: str):
        self._machine = machine
        self._conns = {}          # farm process index -> Connection
        self._procs = {}
        self._done = set()
        self._out = []            # reports not yet taken by the coordinator
        self._lock = threading.Lock()
        self._contact = time.monotonic()
        self._shift = 0           # local monotonic -> coordinator monotonic
        self._relay = None

    def launch(self, items: list) -> list:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = "import sys; from fastc1k.load.cluster import child_main; child_main(int(sys.argv[1]))"
        for i, cfg in items:
            ours, theirs = socket.socketpair()
            self._procs[i] = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())],
                                              pass_fds=(theirs.fileno(),), env=env,
                                              stdin=subprocess.DEVNULL)
            theirs.close()
            self._conns[i] = Connection(ours.detach())
            self._conns[i].send(cfg)
        caps = []
        for i, conn in self._conns.items():
            if not conn.poll(30):
                self.close()
                raise RuntimeError(f"load process {i} on {self._machine} did not start")
            msg = conn.recv()
            if msg[0] == "error":
                self.close()
                raise RuntimeError(f"load process {i} on {self._machine} failed: {msg[1]}")
            caps.append((i, msg[2]))
        self._relay = threading.Thread(target=self._relay_loop, daemon=True,
                                       name="fastc1k-load-relay")
        self._relay.start()
        return caps

    def start(self, wall_start: float, coordinator_start_ns: int) -> None:
        from ._client import monotonic_ns
        local = monotonic_ns() + int((wall_start - time.time()) * 1e9)
        self._shift = coordinator_start_ns - local
        self.send({i: ("start", local) for i in self._conns})

    def send(self, msgs: dict) -> None:
        self._contact = time.monotonic()
        for i, msg in msgs.items():
            if i in self._conns:
                try:
                    self._conns[i].send(msg)
                except OSError:
                    pass          # gone: the relay reports it

    def take(self) -> bytes:
        self._contact = time.monotonic()
        with self._lock:
            out, self._out = self._out, []
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)

    def close(self) -> None:
        self.send({i: ("stop",) for i in self._conns})
        for p in self._procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self._relay is not None:
            self._relay.join(5)

    def _relay_loop(self) -> None:
        live = dict(self._conns)
        index = {id(c): i for i, c in live.items()}
        while live:
            batch = []
            for conn in wait(list(live.values()), timeout=0.5):
                i = index[id(conn)]
                try:
                    while conn.poll():
                        msg = conn.recv()
                        if msg[0] in ("tick", "final", "fine"):   # its clock -> the coordinator's
                            msg = (*msg[:-1], msg[-1] + self._shift)
                        batch.append((i, msg))
                        if msg[0] in ("final", "error"):
                            self._done.add(i)
                except (EOFError, OSError):
                    del live[i]
                    if i not in self._done:
                        rc = self._procs[i].wait()
                        batch.append((i, ("lost", f"load process {i} on {self._machine} "
                                                  f"exited (code {rc})")))
            if batch:
                with self._lock:
                    self._out.extend(batch)
            if time.monotonic() - self._contact > CONTACT_LOST:
                self.send({i: ("stop",) for i in live})   # the coordinator is gone: end here


# Called by the coordinator through Client.run, which needs nothing of fastc1k on the
# scheduler (a submitted task would: the scheduler unpickles task graphs).
_NODES: dict = {}


async def _node_launch(run: str, machine: str, items: list) -> list:
    import asyncio
    node = _NODES[run] = Node(machine)
    return await asyncio.get_running_loop().run_in_executor(None, node.launch, items)


def _node_start(run: str, walls: dict, coordinator_start_ns: int, dask_worker=None) -> None:
    node = _NODES.get(run)
    if node is not None:
        node.start(walls[dask_worker.address], coordinator_start_ns)


def _node_send(run: str, msgs: dict) -> None:
    node = _NODES.get(run)
    if node is not None:
        node.send(msgs)


def _node_take(run: str):
    node = _NODES.get(run)
    return None if node is None else node.take()


async def _node_close(run: str) -> None:
    import asyncio
    node = _NODES.pop(run, None)
    if node is not None:
        await asyncio.get_running_loop().run_in_executor(None, node.close)


# ---------------------------------------------------------------------------- the coordinator

def _host(address: str) -> str:
    return urlsplit(address).hostname or address


class DaskExecutor:
    """Runs the farm's processes on the workers of the Dask cluster at ``address``.

    ``processes``: farm processes in all (default: one per worker thread, Dask's count
    of a worker's cores; a worker resource ``load-processes=N`` sets its own).
    """
    on_lost = "continue"

    def __init__(self, address: str, processes: int | None = None,
                 max_clock_offset: float = MAX_CLOCK_OFFSET, timeout: float = 5.0):
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError("a Dask cluster needs distributed: pip install 'fastc1k[cluster]'") from None
        self.address = address
        self._processes = processes
        self._max_offset = max_clock_offset
        u = urlsplit(address)
        if u.scheme == "tcp" and u.hostname and u.port:
            try:        # refused at once, not after Dask's connect retries
                socket.create_connection((u.hostname, u.port), timeout=timeout).close()
            except OSError as e:
                raise ClusterError(f"cannot reach the Dask scheduler at {address}: "
                                   f"{e.strerror or e}") from None
        try:
            self._client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        self._nodes = []           # workers with farm processes
        self._run_id = None
        self._where = []           # farm process -> worker address
        self._last_heard = {}
        self._gone = set()
        self._pulling = {}          # worker -> its take in flight (one at a time, in order)
        self._puller = None
        self._clock = {}
        self._offsets = {}
        self._next_pull = 0.0

    # -- planning

    def _workers(self) -> dict:
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            raise ClusterError(f"the Dask cluster at {self.address} has no workers")
        return workers

    def _check(self, workers: dict) -> dict:
        import fastc1k
        found = self._client.run(_probe_factory(), workers=list(workers), on_error="return")
        bad, info = [], {}
        for addr in workers:
            got = found.get(addr)
            if isinstance(got, BaseException) or got is None:
                bad.append(f"worker {addr} on {_host(addr)}: probe failed ({got!r})")
                continue
            where = f"worker {addr} on {_host(addr)} (host {got['host']}, Python {got['python']})"
            if "why" in got:
                bad.append(f"{where}: {got['why']}")
            elif got["version"] != fastc1k.__version__:
                bad.append(f"{where}: fastc1k {got['version']}, the coordinator runs "
                           f"{fastc1k.__version__}")
            elif "no_c" in got:
                bad.append(f"{where}: fastc1k {got['version']} without its C extension "
                           f"fastc1k.load._client ({got['no_c']})")
            else:
                info[addr] = got
        if bad:
            raise ClusterError("refused: " + "; ".join(bad))
        return info

    def _measure_clocks(self, workers) -> None:
        best = {}
        for _ in range(CLOCK_SAMPLES):
            t0 = time.time()
            got = self._client.run(time.time, workers=list(workers))
            t1 = time.time()
            for addr, tw in got.items():
                if addr not in best or t1 - t0 < best[addr][1] * 2:
                    best[addr] = (tw - (t0 + t1) / 2, (t1 - t0) / 2)
        self._clock = {a: {"machine": _host(a), "offset_ms": round(o * 1e3, 3),
                           "error_ms": round(e * 1e3, 3)} for a, (o, e) in best.items()}
        self._offsets = {a: o for a, (o, _) in best.items()}
        over = [f"{a} on {_host(a)}: {o * 1e3:+.1f} ms (+/- {e * 1e3:.1f} ms)"
                for a, (o, e) in best.items() if abs(o) + e > self._max_offset]
        if over:
            raise ClusterError(f"refused: worker clocks differ from this one by more than "
                               f"{self._max_offset * 1e3:g} ms: " + "; ".join(over)
                               + " (synchronise them, e.g. with chrony, or raise "
                                 "--max-clock-offset)")

    def place(self, spec) -> list[dict]:
        if spec._sources:
            raise ClusterError("on a cluster each load machine declares its own source "
                               f"addresses ({SOURCES_ENV} in its worker's environment)")
        workers = self._workers()
        info = self._check(workers)
        # farm processes per worker: its resource, else its threads; a total spread by threads
        want = {a: int(w.get("resources", {}).get(PROCESSES_RESOURCE, 0)) or w["nthreads"]
                for a, w in workers.items()}
        most = max(spec.connections, spec.max_connections or 0)
        counts = _proportional(self._processes or spec.processes or sum(want.values()), want)
        # limits: fds per process; ports (x declared sources) per machine, shared by its processes
        per_machine = {}
        for a, n in counts.items():
            per_machine[_host(a)] = per_machine.get(_host(a), 0) + n
        places, lines, holds = [], [], 0
        for a in sorted(counts):
            n, got = counts[a], info[a]
            if not n:
                continue
            m = _host(a)
            slots = min(_farm.MAX_SLOTS, got["fd_limit"] - _farm.FD_RESERVE)
            ports = got["ports"] * max(1, len(got["sources"])) // per_machine[m]
            limit = max(0, min(slots, ports))
            holds += n * limit
            lines.append(f"{a} on {m}: {n} processes x {limit:,} (fd limit {got['fd_limit']:,}, "
                         f"{got['ports']:,} ports x {max(1, len(got['sources']))} source "
                         f"address(es) shared by {per_machine[m]} processes)")
            for _ in range(n):
                places.append({"machine": m, "worker": a, "limit": limit,
                               "sources": got["sources"]})
                self._where.append(a)
        if most > holds:
            raise ClusterError(f"refused: the plan needs {most:,} connections and the cluster "
                               f"holds {holds:,}: " + "; ".join(lines)
                               + " (more workers, --processes or declared source addresses "
                                 "hold more)")
        self._measure_clocks([a for a, n in counts.items() if n])   # the workers that run processes
        return places

    # -- running

    def _run(self, fn, *args, workers=None) -> dict:
        """fn on ``workers`` (default: every worker the scheduler lists now, so that a
        worker already gone costs no connect timeout); {worker: result or exception}."""
        if not self._nodes:
            return {}
        return self._client.run(fn, *args, workers=workers, on_error="return", wait=True)

    def launch(self, cfgs: list[dict]) -> list[int]:
        self._run_id = uuid.uuid4().hex[:12]
        by_worker = {}
        for i, a in enumerate(self._where):
            by_worker.setdefault(a, []).append((i, cfgs[i]))
        self._nodes = list(by_worker)
        caps, bad = {}, []
        # one Client.run per worker, all in flight together (their items differ)
        with ThreadPoolExecutor(len(by_worker)) as pool:
            futs = {a: pool.submit(self._run, _node_launch, self._run_id, _host(a), items,
                                   workers=[a]) for a, items in by_worker.items()}
        for a, f in futs.items():
            got = f.result().get(a)
            if isinstance(got, BaseException) or got is None:
                bad.append(f"Dask worker {a} on {_host(a)}: {got}")
            else:
                caps.update(dict(got))
        if bad:
            raise RuntimeError("; ".join(bad))
        return [caps[i] for i in range(len(cfgs))]

    def start(self) -> tuple[int, float]:
        from ._client import monotonic_ns
        wall = time.time() + START_LEAD_S
        started_ns = monotonic_ns() + int(START_LEAD_S * 1e9)
        walls = {a: wall + self._offsets[a] for a in self._nodes}
        for a, got in self._run(_node_start, self._run_id, walls, started_ns).items():
            if isinstance(got, BaseException):
                raise RuntimeError(f"Dask worker {a} on {_host(a)} did not start: {got}")
        now = time.monotonic()
        self._last_heard = {a: now for a in self._nodes}
        self._next_pull = now + PULL_EVERY
        return started_ns, wall

    def send(self, msgs: dict) -> None:
        try:
            self._run(_node_send, self._run_id, msgs)
        except Exception:                               # noqa: BLE001 - the scheduler is gone:
            pass                                        # poll() reports the processes lost

    def poll(self, timeout: float) -> list:
        time.sleep(max(0.0, min(timeout, self._next_pull - time.monotonic())))
        self._next_pull = time.monotonic() + PULL_EVERY
        out = []
        # One take per worker, each its own Client.run: a worker that died while the
        # scheduler still lists it holds only its own take (up to Dask's connect time-out),
        # never the others', which would then look silent and be called lost too.
        if self._puller is None:
            self._puller = ThreadPoolExecutor(max(1, len(self._nodes)))
        for a in self._nodes:
            if a not in self._gone and a not in self._pulling:
                self._pulling[a] = self._puller.submit(self._run, _node_take, self._run_id, workers=[a])
        wait_futures(list(self._pulling.values()), timeout=PULL_EVERY)
        now = time.monotonic()
        for a, f in list(self._pulling.items()):
            if not f.done():
                continue
            del self._pulling[a]
            try:
                batch = f.result().get(a)
            except Exception:                           # noqa: BLE001 - lost, or the scheduler is gone
                batch = None
            if isinstance(batch, bytes):
                self._last_heard[a] = now
                out.extend(pickle.loads(batch))
        silent = [a for a, t in self._last_heard.items()
                  if a not in self._gone and now - t > LOST_AFTER]
        if silent:
            try:
                listed, scheduler = set(self._workers()), True
            except Exception:                           # noqa: BLE001 - the scheduler is gone
                listed, scheduler = set(), False
            for a in silent:
                quiet = now - self._last_heard[a]
                if a in listed and quiet < SILENT_MAX:
                    continue
                self._gone.add(a)
                why = ("left the Dask cluster" if a not in listed and scheduler
                       else f"has not answered for {quiet:.0f} s" if scheduler
                       else f"is out of reach: the Dask scheduler {self.address} does not answer "
                            f"(its load processes stop by themselves within {CONTACT_LOST:.0f} s)")
                out.extend((i, ("lost", f"load machine {_host(a)} (Dask worker {a}) {why}"))
                           for i, where in enumerate(self._where) if where == a)
        return out

    def close(self) -> None:
        try:
            if self._nodes:
                self._run(_node_close, self._run_id)
        except Exception:                               # noqa: BLE001 - lost meanwhile
            pass
        self._nodes = []
        if self._puller is not None:
            self._puller.shutdown(wait=False, cancel_futures=True)
            self._puller = None
        try:
            self._client.close(timeout=5)
        except Exception:                               # noqa: BLE001
            pass

    def info(self) -> dict:
        return {"executor": "dask", "scheduler": self.address,
                "clock_offsets": self._clock,
                "max_clock_offset_ms": self._max_offset * 1e3}


def preflight(address: str, max_clock_offset: float = MAX_CLOCK_OFFSET) -> None:
    """ClusterError unless the scheduler answers and every worker could run the farm
    (this fastc1k version, its C extension, a clock within the bound)."""
    ex = DaskExecutor(address, max_clock_offset=max_clock_offset)
    try:
        workers = ex._workers()
        ex._check(workers)
        ex._measure_clocks(workers)
    finally:
        ex.close()


def _proportional(total: int, weights: dict) -> dict:
    """total split over keys in proportion to weights (largest remainder)."""
    w = sum(weights.values())
    exact = {k: total * v / w for k, v in weights.items()}
    out = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[:total - sum(out.values())]:
        out[k] += 1
    return out
