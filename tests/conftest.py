"""Engine fixtures: every engine test runs once per engine in FASTC1K_TEST_ENGINES.

`engine` is "python" or "c", and in the suites of URING_SUITES also "c-uring": the C
engine with its io_uring backend (skipped where this kernel cannot run it, with the reason).
A C engine that did not load fails the test (a broken build must not pass as skips)
unless FASTC1K_NO_EXTENSIONS=1 says no extension was built.
`make_server(routes=None, **config_overrides)` starts `fastc1k.running_server` on
127.0.0.1:0 with the test routes and short timeouts; at teardown it checks the server
still answers (bad input must not have broken it) and holds no connection the test's
clients have closed (no leak), then stops it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/_client.py, whatever the rootdir

import fastc1k  # noqa: E402
from fastc1k import Routes, ServerConfig  # noqa: E402

from _client import RawClient, build_request  # noqa: E402

ENGINES = [e.strip() for e in os.environ.get("FASTC1K_TEST_ENGINES", "python,c,c-uring").split(",") if e.strip()]
for _e in ENGINES:
    if _e not in ("python", "c", "c-uring"):
        raise pytest.UsageError(f"FASTC1K_TEST_ENGINES must list python, c and/or c-uring, got {_e!r}")
# The suites of the HTTP behaviour and of hostile input, which also run on the io_uring backend.
URING_SUITES = ("test_conformance", "test_bodies", "test_limits", "test_hostile", "test_robustness", "test_wsgi",
               "test_wsgi_write")


def engine_and_backend(mode: str) -> tuple[str, str]:
    """"c-uring" -> ("c", "io_uring"); "python", "c" -> (mode, "epoll")."""
    return ("c", "io_uring") if mode == "c-uring" else (mode, "epoll")


def pytest_generate_tests(metafunc):
    own = any("engine" in str(m.args[0]).replace(" ", "").split(",")
              for m in metafunc.definition.iter_markers("parametrize"))
    if "engine" in metafunc.fixturenames and not own:  # (a test may name its engines itself)
        uring = metafunc.module.__name__.rpartition(".")[2] in URING_SUITES
        metafunc.parametrize("engine", [e for e in ENGINES if e != "c-uring" or uring], indirect=True)

# Short timeouts keep a stuck connection from stalling the suite; tests that exercise a
# timer set their own (0.3 s and so on).
TEST_DEFAULTS = dict(host="127.0.0.1", port=0, header_timeout=3.0, idle_timeout=5.0, send_timeout=5.0,
                     graceful_timeout=0.5)

BIG_BODY = b"x" * (2 << 20)


def _echo(req):
    """The body's length and md5, so a test can tell decoding from counting."""
    return b"%d:%s" % (len(req.body), hashlib.md5(req.body).hexdigest().encode())


def _inspect(req):
    return 200, {"Content-Type": "application/json"}, json.dumps({
        "method": req.method, "path": req.path, "query": req.query, "version": req.version,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
        "body_len": len(req.body)})


def _raise(req):
    raise RuntimeError("handler failure (expected by the test)")


def _padded(req):
    """The query, padded to 1 KiB: ordered, sizeable responses for the pipelining tests."""
    return req.query.encode().ljust(1024, b".")


# FASTC1K_TEST_WSGI=1: every test server also mounts a WSGI app (it answers the paths no
# route takes, with the engine's own 404), so the conformance and hostile suites run with
# the WSGI path live (tests/test_wsgi_suites.py does that run).
WSGI_MOUNTED = os.environ.get("FASTC1K_TEST_WSGI") == "1"


def _wsgi_not_found(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


def make_routes() -> Routes:
    routes = Routes(wsgi=_wsgi_not_found if WSGI_MOUNTED else None, builtin_prefix="" if WSGI_MOUNTED else None)
    routes.static("/static", b"hello\n")
    routes.handler("/echo", _echo, methods=["GET", "POST", "PUT"])
    routes.handler("/inspect", _inspect, methods=["GET", "POST"])
    routes.handler("/bytes", lambda req: b"bytes-body")
    routes.handler("/str", lambda req: "str-body \u00fc")
    routes.handler("/tuple", lambda req: (201, {"X-Test": "yes", "Content-Type": "application/x-test"}, b"created"))
    routes.handler("/raise", _raise, methods=["GET", "POST"])
    routes.handler("/bad-return", lambda req: 42)
    routes.handler("/bad-status", lambda req: (299, {}, b"odd"))
    routes.handler("/inject", lambda req: (200, {"X-Evil": "a\r\nInjected: 1"}, b"body"))
    routes.handler("/int-header", lambda req: (200, {"X-Num": 5}, b"body"))
    routes.handler("/padded", _padded)
    routes.handler("/big", lambda req: BIG_BODY)
    return routes


@pytest.fixture
def engine(request) -> str:
    name = request.param
    if name == "c-uring" and fastc1k.c_available():
        from fastc1k import _core
        why = _core.uring_unavailable()
        if why:
            pytest.skip(f"io_uring unavailable here: {why}")
    if name != "python" and not fastc1k.c_available():
        if os.environ.get("FASTC1K_NO_EXTENSIONS") == "1":
            pytest.skip("C engine not built (FASTC1K_NO_EXTENSIONS=1)")
        pytest.fail("the C engine did not load (fastc1k.c_available() is False) and "
                    "FASTC1K_NO_EXTENSIONS is not set: the build is broken")
    return name


def _answers(server, within: float = 2.0) -> str:
    """'' when a fresh connection gets 200 from /api/health within `within` s, else why not."""
    deadline = time.monotonic() + within
    why = ""
    while time.monotonic() < deadline:
        try:
            with RawClient(server.address, timeout=1.0) as c:
                c.send(build_request(), ["GET"])
                status = c.read_response().status
            if status == 200:
                return ""
            why = f"status {status}"  # e.g. 503 while closed connections are still counted
        except (AssertionError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    return why


def _active_after_clients_left(server, within: float = 3.0) -> int:
    """0 once the engine has released every connection (the tests have closed theirs)."""
    deadline = time.monotonic() + within
    while (n := server.counters()["active"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return n


@pytest.fixture
def make_server(engine):
    servers = []
    with contextlib.ExitStack() as stack:
        name, backend = engine_and_backend(engine)

        def make(routes: Routes | None = None, **overrides):
            cfg = ServerConfig(**{**TEST_DEFAULTS, "backend": backend, **overrides})
            srv = stack.enter_context(fastc1k.running_server(cfg, make_routes() if routes is None else routes,
                                                             engine=name))
            assert srv.engine_name == name
            servers.append(srv)
            return srv

        yield make
        # no silent fallback: each server really ran on the backend asked for
        assert all(getattr(s.worker, "backend", "epoll") == backend for s in servers)
        broken = [why for why in map(_answers, servers) if why]
        leaked = [] if broken else [n for n in map(_active_after_clients_left, servers) if n]
    # Leaving the stack stopped the servers and re-raised any engine-thread exception.
    assert not broken, f"server stopped answering after the test: {broken}"
    assert not leaked, f"connections still counted active after every client closed: {leaked}"


@pytest.fixture
def server(make_server):
    """A server with the default test configuration."""
    return make_server()
