"""The route table: exact-path routes, each static (prebuilt bytes) or a Python handler.

Static routes are built once into response bytes (see responses.py for the layout), so the
C engine can answer them without touching a Python object. Handler routes call a
Python callable with a Request and turn what it returns into a response.

Two built-in kinds are answered by the engines themselves: DATA (`/api/data`, a JSON
object with a counter, a timestamp in ms and the worker's pid, built in C by the C
engine) and METRICS (`/metrics`, the Prometheus text of the engine's counters).

A table may mount a WSGI app (`Routes(wsgi=app)`): every request no route matches goes
to it (fastc1k.wsgi). The built-ins then live under an opt-in prefix (`builtin_prefix=
"/_fastc1k"`: /_fastc1k/api/health, /_fastc1k/metrics) or not at all, so that they do not
shadow the app's own paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

from . import responses

__all__ = ["Routes", "Route", "Request", "STATIC", "HANDLER", "DATA", "METRICS", "WSGI", "default_routes",
           "HandlerResult", "render_result"]

STATIC, HANDLER, DATA, METRICS, WSGI = 0, 1, 2, 3, 4
KIND_NAMES = {STATIC: "static", HANDLER: "handler", DATA: "data", METRICS: "metrics", WSGI: "wsgi"}

HEALTH_BODY = b'{"status":"ok"}'
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Request:
    """What a handler receives. Header names are lower-cased bytes, values raw bytes."""
    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    version: str = "HTTP/1.1"

    def header(self, name: str | bytes, default: bytes | None = None) -> bytes | None:
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        for k, v in self.headers:
            if k == key:
                return v
        return default


HandlerResult = Union[bytes, str, tuple]
Handler = Callable[[Request], HandlerResult]


@dataclass(slots=True)
class Route:
    path: str
    kind: int
    methods: tuple[str, ...]
    allow: bytes                       # value of the Allow header for a 405
    content_type: bytes = JSON
    status: int = 200
    body: bytes = b""                  # STATIC only
    head: bytes = b""                  # STATIC only: responses.build_head(...) for body
    handler: Handler | None = None     # HANDLER only
    wants_body: bool = True            # HANDLER only: False discards the request body
    extra: tuple = field(default_factory=tuple)


def _allow(methods: Iterable[str]) -> bytes:
    return ", ".join(methods).encode()


def options_allow(methods: Iterable[str]) -> bytes:
    """Allow of an OPTIONS answer (RFC 9110 9.3.7): the methods, and OPTIONS itself."""
    return _allow(dict.fromkeys((*methods, "OPTIONS")))


def _methods(methods: Iterable[str]) -> tuple[str, ...]:
    ms = tuple(dict.fromkeys(m.upper() for m in methods))
    for m in ms:
        if not m or not m.isalpha():
            raise ValueError(f"invalid method {m!r}")
    if "GET" in ms and "HEAD" not in ms:
        ms += ("HEAD",)  # HEAD is GET without the body
    return ms


def _check_path(path: str) -> None:
    if not path.startswith("/") or "?" in path or any(c in path for c in " \r\n\t#"):
        raise ValueError(f"route path must start with '/' and hold no query, space or '#', got {path!r}")


class Routes:
    """An exact-path route table. Later additions replace earlier ones with the same path."""

    def __init__(self, builtins: bool = True, *, wsgi: Callable | None = None,
                 builtin_prefix: str | None = None) -> None:
        """The built-ins are on by default, but with `wsgi` only when builtin_prefix is given."""
        self._routes: dict[str, Route] = {}
        self.wsgi = wsgi
        if wsgi is not None and not callable(wsgi):
            raise TypeError(f"the WSGI app must be callable, got {type(wsgi).__name__}")
        prefix = (builtin_prefix or "").rstrip("/")
        if builtin_prefix:  # "" keeps them at the root, beside the app
            _check_path(builtin_prefix)
        if builtins and (wsgi is None or builtin_prefix is not None):
            self.static(prefix + "/api/health", HEALTH_BODY, JSON)
            self._add(Route(prefix + "/api/data", DATA, ("GET", "HEAD"), _allow(("GET", "HEAD")), JSON))
            self._add(Route(prefix + "/metrics", METRICS, ("GET", "HEAD"), _allow(("GET", "HEAD")), PROMETHEUS))

    def _add(self, route: Route) -> Route:
        _check_path(route.path)
        self._routes[route.path] = route
        return route

    def static(self, path: str, body: bytes | str, content_type: bytes | str = TEXT, status: int = 200,
               headers: Iterable[tuple[str, str]] = ()) -> Route:
        """A response built once and sent as is to every GET or HEAD of `path`."""
        if isinstance(body, str):
            body = body.encode()
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1")
        if status not in responses.REASONS:
            raise ValueError(f"unsupported status {status}")
        extra = tuple(headers)
        head = responses.build_head(status, content_type, len(body), extra)
        methods = ("GET", "HEAD")
        return self._add(Route(path, STATIC, methods, _allow(methods), content_type, status, body, head,
                               extra=extra))

    def handler(self, path: str, func: Handler, methods: Iterable[str] = ("GET",),
                content_type: bytes | str = TEXT, wants_body: bool = True) -> Route:
        """`func(request)` returns bytes/str (200), or (status, headers, body)."""
        if not callable(func):
            raise TypeError(f"handler for {path!r} is not callable")
        if isinstance(content_type, str):
            content_type = content_type.encode("latin-1")
        ms = _methods(methods)
        return self._add(Route(path, HANDLER, ms, _allow(ms), content_type, handler=func,
                               wants_body=wants_body))

    def route(self, path: str, methods: Iterable[str] = ("GET",), content_type: bytes | str = TEXT):
        """Decorator form of handler()."""
        def deco(func: Handler) -> Handler:
            self.handler(path, func, methods, content_type)
            return func
        return deco

    def server_allow(self) -> bytes:
        """Allow of `OPTIONS *`: every method some route takes, and OPTIONS."""
        return options_allow(m for r in self for m in r.methods)

    def get(self, path: str) -> Route | None:
        return self._routes.get(path)

    def __iter__(self):
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)


def default_routes() -> Routes:
    return Routes()


def render_result(route: Route, result: Any) -> tuple[int, bytes | None, list, bytes]:
    """A handler's return value -> (status, content_type, extra headers, body)."""
    status, headers, body = 200, (), result
    if isinstance(result, tuple):
        if len(result) != 3:
            raise TypeError("a handler returns bytes, str or (status, headers, body)")
        status, headers, body = result
    if isinstance(body, str):
        body = body.encode()
    elif isinstance(body, (dict, list)):
        body = json.dumps(body, separators=(",", ":")).encode()
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"handler body must be bytes or str, got {type(body).__name__}")
    if not isinstance(status, int) or status not in responses.REASONS:
        raise ValueError(f"unsupported status {status!r}")
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    content_type = route.content_type
    extra = []
    for name, value in headers:
        lname = name.lower() if isinstance(name, str) else name.decode("latin-1").lower()
        if lname == "content-type":
            content_type = value.encode("latin-1") if isinstance(value, str) else value
        elif lname in ("content-length", "date", "server", "connection", "transfer-encoding"):
            continue  # the engine owns these
        else:
            extra.append((name, value))
    return status, content_type, extra, bytes(body)
