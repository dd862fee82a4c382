"""Run one worker in-process: `Server(config, routes).serve_forever()` / `.stop()`.

`Server(config, wsgi=app)` serves a WSGI app (PEP 3333; see fastc1k.wsgi) instead of a
route table; `builtin_prefix="/_fastc1k"` keeps /api/health and /metrics under it.

For tests and embedding. `running_server()` starts one on 127.0.0.1:0 in a thread and
yields it (its `.address` is where it listens); both engines release the thread that
calls `stop()` within 100 ms. The multi-process server is fastc1k.supervisor.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Callable, Iterator

from . import _compat, metrics
from .config import ServerConfig
from .routes import Routes

__all__ = ["Server", "running_server", "make_listener"]


def make_listener(host: str, port: int, backlog: int, reuseport: bool = False, defer_accept: int = 0) -> socket.socket:
    """A non-blocking listening TCP socket (IPv6 if host has a colon); defer_accept > 0:
    TCP_DEFER_ACCEPT (the engines then read a new connection's first bytes at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if defer_accept:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """One worker: a listening socket and an engine loop over it.

    `sock` may be given (an already listening socket, e.g. a supervisor's slot); otherwise
    one is made from config.host/port. `counters` is this worker's metrics slot (a
    memoryview of uint64); `metrics_area` lets /metrics show every worker's slot.
    """

    def __init__(self, config: ServerConfig | None = None, routes: Routes | None = None,
                 engine: str | None = None, sock: socket.socket | None = None,
                 metrics_area: metrics.MetricsArea | None = None, slot: int = 0, *,
                 wsgi: Callable | None = None, builtin_prefix: str | None = None) -> None:
        if wsgi is not None:
            if routes is not None:
                raise ValueError("give routes or wsgi, not both (a WSGI Routes holds both: Routes(wsgi=app))")
            routes = Routes(wsgi=wsgi, builtin_prefix=builtin_prefix)
        self.routes = routes if routes is not None else Routes()
        self.engine = _compat.load_engine(engine)
        self.config = _compat.resolve_backend(self.engine, config or ServerConfig())
        self._own_sock = sock is None
        self.sock = sock if sock is not None else make_listener(self.config.host, self.config.port,
                                                              self.config.backlog,
                                                              defer_accept=self.config.defer_accept)
        self.metrics_area = metrics_area or metrics.MetricsArea(1)
        self.worker = self.engine.Worker(self.sock, self.config, self.routes, self.metrics_area, slot)

    @property
    def engine_name(self) -> str:
        return self.engine.ENGINE_NAME

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def counters(self) -> dict[str, int]:
        return self.worker.counters()

    def serve_forever(self) -> None:
        self.worker.run()

    def stop(self, graceful: bool = True) -> None:
        """Ask the loop to return (thread- and signal-safe); graceful finishes in-flight requests."""
        self.worker.stop(graceful)

    def close(self) -> None:
        """Release the engine's resources and (if this Server made it) the listening socket."""
        close = getattr(self.worker, "close", None)
        if close is not None:
            close()
        if self._own_sock:
            self.sock.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop(False)
        self.close()


@contextlib.contextmanager
def running_server(config: ServerConfig | None = None, routes: Routes | None = None,
                   engine: str | None = None, *, wsgi: Callable | None = None,
                   builtin_prefix: str | None = None, **overrides: Any) -> Iterator[Server]:
    """A Server on 127.0.0.1:0 (unless config/overrides say otherwise), run in a thread."""
    cfg = config or ServerConfig(host="127.0.0.1", port=0)
    if overrides:
        cfg = cfg.replace(**overrides)
    server = Server(cfg, routes, engine, wsgi=wsgi, builtin_prefix=builtin_prefix)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:  # surfaced in the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"fastc1k-{server.engine_name}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop(False)
        thread.join(5)
        server.close()
        if thread.is_alive():
            raise RuntimeError("server thread did not stop within 5 s")
        if errors:
            raise errors[0]
