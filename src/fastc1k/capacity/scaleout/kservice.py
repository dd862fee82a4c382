"""The kernel balancer as the scale-out run drives a balancer: a Service in front of a
fleet whose replicas sit behind the node namespace (kernel_lb), with its readiness
prober (health) and its conntrack table watched.

`NodeSlot` is a replica's place behind the node (what the fleet asks of a replica's
network), `KernelService` the balancer face the run uses: its address, the endpoints'
state and connection counts (`servers`, like HAProxy's stats), its health, its conntrack
samples, and `stop`, which takes the probes, the rules and the conntrack size back.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .health import HealthChecker, ProbeSpec
from ...host import net as hnet
from .kernel_lb import Conntrack, Endpoint, KernelBalancer, ServiceNet

__all__ = ["NodeSlot", "KernelService", "ConntrackSampler"]


class NodeSlot:
    """Replica i's namespace behind the node; `ns_ip` is known before `setup` makes it."""

    def __init__(self, net: ServiceNet, i: int) -> None:
        self.net, self.i = net, i
        self.name = net.replica_ns_name(i)
        self.ns_ip = net.replica_ip(i)
        self.ns = self   # what the fleet reads as `net.ns`

    def setup(self, sysctls: dict[str, str]) -> list[str]:
        return self.net.attach(self.i, sysctls)

    def setns_preexec(self) -> Callable[[], None]:
        name = self.name
        return lambda: hnet.enter(name)

    preexec_setns = setns_preexec

    def cleanup(self) -> None:
        """Nothing: the node's teardown deletes every replica namespace with it."""


class ConntrackSampler:
    """The node's conntrack count and drop counters every `interval` s, from a thread
    inside the node."""

    def __init__(self, node: str, interval: float = 0.25) -> None:
        self.node, self.interval = node, interval
        self.rows: list[tuple[float, dict[str, int]]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="conntrack-sampler", daemon=True)

    def start(self) -> "ConntrackSampler":
        self._t.start()
        return self

    def _loop(self) -> None:
        try:
            hnet.enter(self.node)
            while not self._stop.is_set():
                self.rows.append((time.monotonic(), Conntrack.read_here()))
                self._stop.wait(self.interval)
        except OSError as exc:
            self.error = str(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(2)

    def window(self, t0: float, t1: float) -> dict[str, Any] | None:
        """Peak count, the max, and drops (full table: drop, early_drop, insert_failed) in [t0, t1]."""
        inside = [r for t, r in self.rows if t0 - 0.3 <= t <= t1 + 0.3]
        if not inside:
            return None
        a, b = inside[0], inside[-1]
        return {"peak": max(r["count"] for r in inside), "max": b["max"],
                "drops": sum(b.get(k, 0) - a.get(k, 0) for k in ("drop", "early_drop", "insert_failed"))}


class KernelService:
    """nftables rules + readiness prober + conntrack for one fleet behind `net`."""

    kind = "kernel"

    def __init__(self, net: ServiceNet, endpoints: list[Endpoint], pick: str = "random",
                 probe: ProbeSpec | None = None, conntrack_max: int = 65536, conntrack_exact: bool = False) -> None:
        self.net = net
        self.lb = KernelBalancer(net, endpoints, pick)
        self.checker = HealthChecker(endpoints, self.lb.set_endpoints, probe, net.node)
        self.conntrack = Conntrack(net.node)
        self.conntrack_want, self.conntrack_exact = conntrack_max, conntrack_exact
        self.conntrack_sizing: dict[str, Any] = {}
        self.sampler = ConntrackSampler(net.node)
        self.notes: list[str] = []
        self.pid = None          # no process: the kernel does the work
        self._started = False

    @property
    def url(self) -> str:
        return self.lb.url

    def start(self) -> "KernelService":
        self.conntrack_sizing = self.conntrack.size(self.conntrack_want, self.conntrack_exact)
        self._started = True
        self.lb.start()
        self.checker.start()
        self.sampler.start()
        return self

    def pids(self) -> list[int]:
        return []

    def cpu_seconds(self) -> float:
        return 0.0   # sampled instead: kcpu

    def alive(self) -> bool:
        return self._started

    def output(self) -> str:
        return "; ".join(self.checker.errors)

    def servers(self) -> dict[str, dict[str, Any]]:
        """{endpoint: status (UP: in the rules, DOWN: taken out), requests (connections
        DNATed to it: an L4 balancer sees no requests), check (last probe failure)}."""
        try:
            counts = self.lb.counters()
        except OSError:
            return {}
        active = set(self.lb.active)
        return {ep.name: {"status": "UP" if ep.name in active else "DOWN", "requests": counts.get(ep.name, 0),
                          "current": None, "check": self.checker.state[ep.name].last_reason or ""}
                for ep in self.lb.endpoints}

    def wait_healthy(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.checker.state.values()
            if all(s.ready and s.probes > s.failed and s.probes > 0 for s in st):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.checker.stop()
        self.sampler.stop()
        self.lb.stop()
        note = self.conntrack.restore()
        if note:
            self.notes.append(note)
        self._started = False
