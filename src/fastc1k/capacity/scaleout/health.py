"""A readiness probe, as the kubelet runs one: GET the health path of each replica every
`interval_s`, a probe failing when it gets no `200` within `timeout_s`; after
`failures` failures in a row the replica is not ready and `on_change` gets the new
ready set (the kernel balancer takes it out of its rules), after `successes` in a row
it is ready again. Each replica has its own prober thread, inside the node's network
namespace when one is given (the kubelet probes from the node), so a hung replica
delays no other's probes. Every change is kept with its time, so the time from a
replica's death to its removal can be measured.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ...host import net
from .kernel_lb import Endpoint

__all__ = ["ProbeSpec", "HealthChecker", "probe_once"]

PROBER_NICE = -5


@dataclass(frozen=True)
class ProbeSpec:
    interval_s: float = 0.1    # periodSeconds
    # timeoutSeconds: twice the p99 a replica queues at its breaking point (100 ms), so a
    # loaded replica is not taken for a dead one before it is past breaking
    timeout_s: float = 0.2
    failures: int = 2          # failureThreshold
    successes: int = 1         # successThreshold
    path: str = "/api/health"

    def validate(self) -> "ProbeSpec":
        if not (0.01 <= self.interval_s <= 60 and 0.01 <= self.timeout_s <= 60):
            raise ValueError("probe interval and timeout must be 0.01..60 s")
        if self.failures < 1 or self.successes < 1:
            raise ValueError("probe failure and success thresholds must be >= 1")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError(f"bad probe path {self.path!r}")
        return self

    def worst_removal_s(self) -> float:
        """Longest from a death to the verdict: up to one interval to the next probe,
        then `failures` probes that each time out (a hung replica; a dead one refuses at
        once), the next one starting when the last gives up or an interval on."""
        return self.interval_s + (self.failures - 1) * max(self.interval_s, self.timeout_s) + self.timeout_s

    def describe(self) -> dict[str, float | int | str]:
        return {"interval_ms": round(self.interval_s * 1000), "timeout_ms": round(self.timeout_s * 1000),
                "failures_to_remove": self.failures, "successes_to_add": self.successes, "path": self.path,
                "worst_case_removal_ms": round(self.worst_removal_s() * 1000)}


_LINGER0 = struct.pack("ii", 1, 0)


def probe_once(ip: str, port: int, path: str, timeout: float) -> str | None:
    """None when the replica answers 200 within `timeout`, else why not. The probe's
    connection is reset on close, so neither side nor conntrack keeps a TIME_WAIT."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
            got = b""
            while b"\r\n" not in got:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                s.settimeout(left)
                b = s.recv(256)
                if not b:
                    return "closed without a response"
                got += b
            status = got.split(b"\r\n", 1)[0]
            return None if status.split(b" ")[1:2] == [b"200"] else f"answered {status.decode(errors='replace')}"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return exc.strerror or str(exc)


@dataclass
class _State:
    ready: bool = True
    fails: int = 0
    oks: int = 0
    probes: int = 0
    failed: int = 0
    first_fail_at: float | None = None
    last_reason: str | None = None


@dataclass
class Event:
    t: float                 # time.monotonic() once the change was applied
    name: str
    ready: bool
    reason: str
    first_fail_at: float | None = None
    apply_s: float = 0.0     # how long on_change took (the nft transaction)
    ready_after: list[str] = field(default_factory=list)


class HealthChecker:
    def __init__(self, endpoints: Sequence[Endpoint], on_change: Callable[[list[str]], None],
                 spec: ProbeSpec | None = None, netns: str | None = None) -> None:
        self.spec = (spec or ProbeSpec()).validate()
        self.endpoints = list(endpoints)
        self.on_change = on_change
        self.netns = netns
        self.state = {ep.name: _State() for ep in self.endpoints}
        self.events: list[Event] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(ep,), name=f"probe-{ep.name}", daemon=True)
                         for ep in self.endpoints]

    def start(self) -> "HealthChecker":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():   # (a start that failed part-way is stopped too)
                t.join(self.spec.timeout_s + 2)

    def ready(self) -> list[str]:
        with self._lock:
            return [ep.name for ep in self.endpoints if self.state[ep.name].ready]

    def removed_at(self, name: str, after: float = 0.0) -> Event | None:
        return next((e for e in self.events if e.name == name and not e.ready and e.t >= after), None)

    def _loop(self, ep: Endpoint) -> None:
        try:
            if self.netns:
                net.enter(self.netns)   # this thread only
        except OSError as exc:
            self.errors.append(f"{ep.name}: {exc}")
            return
        try:   # CPU reserved for it, as a node reserves some for its kubelet (best effort)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROBER_NICE)
        except OSError:
            pass
        sp = self.spec
        nxt = time.monotonic()
        while not self._stop.is_set():
            why = probe_once(ep.ip, ep.port, sp.path, sp.timeout_s)
            self._record(ep.name, why, time.monotonic())
            nxt += sp.interval_s
            now = time.monotonic()
            if nxt < now:           # a slow probe: the next one starts now, none are bunched
                nxt = now
            self._stop.wait(nxt - now)

    def _record(self, name: str, why: str | None, now: float) -> None:
        with self._lock:
            st = self.state[name]
            st.probes += 1
            if why is None:
                st.oks, st.fails = st.oks + 1, 0
                st.first_fail_at = None
                flip = not st.ready and st.oks >= self.spec.successes
            else:
                st.failed += 1
                st.fails, st.oks = st.fails + 1, 0
                st.last_reason = why
                if st.first_fail_at is None:
                    st.first_fail_at = now
                flip = st.ready and st.fails >= self.spec.failures
            if not flip:
                return
            st.ready = not st.ready
            ready = [ep.name for ep in self.endpoints if self.state[ep.name].ready]
            t0 = time.monotonic()
            try:
                self.on_change(ready)
            except Exception as exc:   # reported with the run; the prober goes on
                self.errors.append(f"updating the rules for {name}: {exc}")
            t1 = time.monotonic()
            self.events.append(Event(t1, name, st.ready, "ready" if st.ready else (why or ""),
                                     st.first_fail_at if not st.ready else None, round(t1 - t0, 4), ready))

    def summary(self) -> dict[str, object]:
        with self._lock:
            return {"probe": self.spec.describe(),
                    "replicas": {n: {"ready": s.ready, "probes": s.probes, "failed": s.failed,
                                     "last_failure": s.last_reason} for n, s in self.state.items()},
                    "errors": list(self.errors)}
