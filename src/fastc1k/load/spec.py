"""What a load run is: the spec (target, connections, rate, mix) and its prebuilt requests."""
from __future__ import annotations

import math
import socket
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from ..host.net import parse_source_ips

PER_PROCESS = 15_000        # connections one worker takes before another is added


# ---------------------------------------------------------------------------- the spec

@dataclass
class LoadSpec:
    """What to run. ``rate=None`` is closed loop (like wrk); a rate (requests/s, all
    processes together) is open loop with coordinated-omission-corrected latency."""
    url: str
    connections: int = 1000
    duration: float | None = None          # seconds; None: until stop()
    rate: float | None = None
    pipeline: int = 1
    processes: int | None = None           # None: one per 15,000 connections
    source_ips: object = None              # "127.0.0.1-127.0.0.8" or a list of addresses
    ramp: float = 0.0                      # seconds to open all connections (0: at once)
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    requests: list | None = None           # [(method, path, body, weight)]
    max_connections: int | None = None     # sizes the process count for set_connections
    reconnect_delay: float = 0.1           # after a failed connect or an error status with close
    headers: dict = field(default_factory=dict)

    def __post_init__(self):
        u = urlsplit(self.url)
        if u.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {self.url!r}")
        if not u.hostname:
            raise ValueError(f"no host in {self.url!r}")
        try:
            port = u.port or 80
        except ValueError:
            raise ValueError(f"bad port in {self.url!r}") from None
        if ":" in u.hostname:
            raise ValueError(f"IPv6 targets are not supported (yet): {self.url!r}")
        try:
            infos = socket.getaddrinfo(u.hostname, port, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ValueError(f"cannot resolve {u.hostname!r} to an IPv4 address: {e}") from None
        self._addr = (infos[0][4][0], port)
        self._hostport = u.netloc.rsplit("@", 1)[-1]
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        for name in ("connections", "pipeline"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {v!r}")
        if not 1 <= self.pipeline <= 256:
            raise ValueError("pipeline must be 1..256")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be > 0 seconds (or None)")
        if self.rate is not None and not self.rate >= 0:
            raise ValueError("rate must be >= 0 requests/s (or None for closed loop)")
        for name in ("ramp", "reconnect_delay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("connect_timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.processes is not None and not (isinstance(self.processes, int) and self.processes >= 1):
            raise ValueError("processes must be >= 1")
        self._sources = parse_source_ips(self.source_ips)
        self._requests, self._mix = build_requests(self)

    def process_count(self) -> int:
        if self.processes:
            return self.processes
        most = max(self.connections, self.max_connections or 0)
        return max(1, math.ceil(most / PER_PROCESS))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["requests"] = [[m, p, (b.decode("latin-1") if isinstance(b, bytes) else b), w]
                         for m, p, b, w in (self.requests or [])] or None
        return d


def build_requests(spec: LoadSpec):
    """Prebuilt request bytes and a mix table (request indices, in weight proportion,
    interleaved so that any window of the table has the right proportions)."""
    mix = spec.requests or [("GET", spec._path, None, 1)]
    reqs = []
    weights = []
    for item in mix:
        try:
            method, path, body, weight = item
        except (TypeError, ValueError):
            raise ValueError("requests items are (method, path, body, weight)") from None
        if path is None:
            path = spec._path
        if not isinstance(method, str) or not method.isalpha():
            raise ValueError(f"bad method {method!r}")
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError(f"bad path {path!r}")
        if isinstance(body, str):
            body = body.encode()
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise ValueError(f"bad weight {weight!r}")
        head = [f"{method} {path} HTTP/1.1", f"Host: {spec._hostport}"]
        for k, v in spec.headers.items():
            k, v = str(k), str(v)
            if not k or any(c in k for c in " \t\r\n:") or any(c in v for c in "\r\n\0"):
                raise ValueError(f"bad header {k!r}: {v!r}")
            head.append(f"{k}: {v}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        reqs.append((raw, method == "HEAD"))
        weights.append(float(weight))
    # smooth weighted round robin over 1000 slots
    table, credit, total = [], [0.0] * len(weights), sum(weights)
    for _ in range(1000 if len(weights) > 1 else 1):
        for i, w in enumerate(weights):
            credit[i] += w
        i = max(range(len(weights)), key=credit.__getitem__)
        credit[i] -= total
        table.append(i)
    return reqs, table
