"""ServerConfig: every limit and timeout of the server, validated, in one place.

Each field is declared once in FIELDS with its default, its bounds and its help text;
the dataclass, the CLI flags (`--max-body`), the environment variables
(`FASTC1K_MAX_BODY`) and the README's configuration table are all derived from it.
"""
from __future__ import annotations

import dataclasses
import os
import resource
from typing import Any, Callable, Mapping

__all__ = ["ServerConfig", "ConfigError", "FIELDS", "Field", "parse_size", "parse_duration", "FD_RESERVE",
           "fd_sized_connections"]

# fds a worker keeps for itself (listener, epoll, pipes, the interpreter's own files): what
# `max_connections auto` leaves out of the fd limit, and the margin the doctor and serve's
# start-up check use.
FD_RESERVE = 64


class ConfigError(ValueError):
    """A configuration value is out of range or malformed; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: type
    default: Any
    lo: float | None
    hi: float | None
    help: str
    unit: str = ""  # "bytes" | "seconds" | "" (parsers accept 16k / 10s / 500ms)
    auto: Callable[[], Any] | None = None  # what the value "auto" stands for, computed when it is given
    choices: tuple[str, ...] = ()  # a str field's allowed values


def fd_sized_connections() -> int:
    """`max_connections auto`: the hard fd limit less FD_RESERVE, so that the worker answers
    503 at its cap before accept() meets EMFILE. The hard limit, because the serve master
    raises its soft limit to it before forking (an embedding program should do the same)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    return max(1, min(limit - FD_RESERVE, 1 << 24))

FIELDS: tuple[Field, ...] = (
    Field("host", str, "127.0.0.1", None, None, "address to listen on (0.0.0.0 for all IPv4)"),
    Field("port", int, 8080, 0, 65535, "TCP port (0 picks a free one)"),
    Field("workers", int, 1, 1, 4096, "worker processes (one SO_REUSEPORT listener each)"),
    Field("backlog", int, 4096, 1, 1 << 20, "listen() backlog per listener (capped by net.core.somaxconn)"),
    Field("defer_accept", int, 0, 0, 3600,
          "seconds the kernel may hold a new connection until its first bytes come (TCP_DEFER_ACCEPT, "
          "nginx's `deferred`; 0: off): the worker wakes once per connection instead of twice, and a silent "
          "client reaches it (and its header timeout) only after about this long"),
    Field("max_connections", int, 10000, 1, 1 << 24,
          "open connections per worker; past it: 503 + Retry-After, then close; "
          f"`auto`: the fd limit less {FD_RESERVE}", auto=fd_sized_connections),
    Field("max_request_line", int, 8192, 16, 1 << 20, "request line bytes, CRLF excluded; over it: 414", "bytes"),
    Field("max_header_bytes", int, 8192, 16, 1 << 22,
          "header field section bytes (after the request line, final CRLF included); over it: 431", "bytes"),
    Field("max_headers", int, 100, 1, 10000, "header fields per request; over it: 431"),
    Field("max_body", int, 1 << 20, 0, 1 << 40, "request body bytes (Content-Length or chunked); over it: 413", "bytes"),
    Field("header_timeout", float, 10.0, 0.001, 86400.0,
          "seconds from a request's first byte to its last header byte (not reset by trickled bytes); then 408",
          "seconds"),
    Field("idle_timeout", float, 60.0, 0.001, 86400.0, "seconds a keep-alive connection may sit idle", "seconds"),
    Field("send_timeout", float, 60.0, 0.001, 86400.0,
          "seconds a response may wait for the client to read; then close", "seconds"),
    Field("graceful_timeout", float, 10.0, 0.0, 86400.0,
          "seconds to finish in-flight requests on SIGTERM/stop() before closing", "seconds"),
    Field("buffer_size", int, 24576, 1024, 1 << 24,
          "read buffer size; must hold max_request_line + max_header_bytes + 2", "bytes"),
    Field("pool_size", int, 1024, 1, 1 << 22,
          "read buffers preallocated per worker (one per connection with an unfinished request)"),
    Field("pool_max", int, 16384, 1, 1 << 24,
          "buffers the pool may grow to before it sheds load (503 and close)"),
    Field("backend", str, "epoll", None, None,
          "C engine I/O: epoll or io_uring; where io_uring cannot start (kernel, seccomp, not built in) "
          "one line says so and epoll serves", choices=("epoll", "io_uring")),
)

_BY_NAME = {f.name: f for f in FIELDS}


def parse_size(text: str | int) -> int:
    """'16384', '16k', '1M', '1G' -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().rstrip("b")
    mult = 1
    if s and s[-1] in "kmg":
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[s[-1]]
        s = s[:-1]
    return int(float(s) * mult) if "." in s else int(s) * mult


def parse_duration(text: str | float) -> float:
    """'10', '10s', '500ms', '2m', '1h' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    for suffix, mult in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


def _coerce(f: Field, value: Any) -> Any:
    if f.auto is not None and isinstance(value, str) and value.strip().lower() == "auto":
        return f.auto()
    try:
        if f.type is str:
            if not isinstance(value, str) or not value:
                raise ValueError
            return value
        if f.unit == "bytes":
            return parse_size(value)
        if f.unit == "seconds":
            return parse_duration(value)
        if isinstance(value, bool):
            raise ValueError
        if f.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return f.type(value)
    except (TypeError, ValueError):
        kind = f"{f.type.__name__}{' ' + f.unit if f.unit else ''}{' or auto' if f.auto else ''}"
        raise ConfigError(f"{f.name} must be {kind}, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = _BY_NAME["host"].default
    port: int = _BY_NAME["port"].default
    workers: int = _BY_NAME["workers"].default
    backlog: int = _BY_NAME["backlog"].default
    defer_accept: int = _BY_NAME["defer_accept"].default
    max_connections: int = _BY_NAME["max_connections"].default
    max_request_line: int = _BY_NAME["max_request_line"].default
    max_header_bytes: int = _BY_NAME["max_header_bytes"].default
    max_headers: int = _BY_NAME["max_headers"].default
    max_body: int = _BY_NAME["max_body"].default
    header_timeout: float = _BY_NAME["header_timeout"].default
    idle_timeout: float = _BY_NAME["idle_timeout"].default
    send_timeout: float = _BY_NAME["send_timeout"].default
    graceful_timeout: float = _BY_NAME["graceful_timeout"].default
    buffer_size: int = _BY_NAME["buffer_size"].default
    pool_size: int = _BY_NAME["pool_size"].default
    pool_max: int = _BY_NAME["pool_max"].default
    backend: str = _BY_NAME["backend"].default

    def __post_init__(self) -> None:
        for f in FIELDS:
            v = _coerce(f, getattr(self, f.name))
            if f.lo is not None and not (f.lo <= v <= f.hi):
                lo = int(f.lo) if f.type is int else f.lo
                hi = int(f.hi) if f.type is int else f.hi
                raise ConfigError(f"{f.name} must be {lo}..{hi}, got {v}")
            if f.choices and v not in f.choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(f.choices)}, got {v!r}")
            object.__setattr__(self, f.name, v)
        need = self.max_request_line + self.max_header_bytes + 2
        if self.buffer_size < need:
            raise ConfigError(
                f"buffer_size must be >= max_request_line + max_header_bytes + 2 = {need}, got {self.buffer_size}"
            )
        if self.pool_max < self.pool_size:
            raise ConfigError(f"pool_max must be >= pool_size ({self.pool_size}), got {self.pool_max}")

    def replace(self, **changes: Any) -> "ServerConfig":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ServerConfig":
        unknown = set(values) - set(_BY_NAME)
        if unknown:
            raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServerConfig":
        """Defaults, then FASTC1K_<FIELD> environment variables, then overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in FIELDS:
            key = "FASTC1K_" + f.name.upper()
            if key in env:
                values[f.name] = _coerce(f, env[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values)
