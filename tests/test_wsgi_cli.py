"""`python -m fastc1k.serve --wsgi module:app`: one-line errors (exit 2), serving an app
in pre-forked workers with the built-ins under --builtin-prefix, SIGHUP re-imports it."""
from __future__ import annotations

import signal
import time

import pytest

from _supervised import ServerProc, http_get, run_cli
from test_serve_cli import _one_line_error

pytestmark = pytest.mark.timeout(60)

BAD = [
    (["--wsgi", "no_such_module_xyz:app"], "cannot import app module 'no_such_module_xyz'"),
    (["--wsgi", "wsgi_apps:missing"], "has no attribute 'missing'"),
    (["--wsgi", "os:sep"], "WSGI app 'os:sep' is not callable (got str)"),
    (["--wsgi", "not a spec"], "--wsgi must be MODULE:NAME"),
    (["--wsgi", "wsgi_apps:plain", "--app", "_supervisor_app:routes"], "--app and --wsgi are exclusive"),
    (["--builtin-prefix", "/_f"], "--builtin-prefix applies to --wsgi only"),
    (["--wsgi", "wsgi_apps:plain", "--builtin-prefix", "no-slash"], "--builtin-prefix: route path must start"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_wsgi_input_is_one_line_and_exit_2(args, message):
    _one_line_error(run_cli(*args), message)


def test_app_that_fails_to_import_names_module_and_error(tmp_path):
    (tmp_path / "brokenapp.py").write_text("import flask\nraise RuntimeError('no database')\n")
    line = _one_line_error(run_cli("--wsgi", "brokenapp:app", cwd=str(tmp_path)),
                           "cannot import app module 'brokenapp'", "RuntimeError: no database", "brokenapp.py:2")
    assert "Traceback" not in line


APP = '''
VERSION = {v!r}

def application(environ, start_response):
    body = (VERSION + " " + environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.mark.parametrize("engine", ["python", "c"])
def test_serve_wsgi_builtins_under_prefix_and_sighup_reimports(tmp_path, engine):
    if engine == "c":
        import fastc1k
        if not fastc1k.c_available():
            pytest.skip("C engine not built")
    mod = tmp_path / "reloadapp.py"
    mod.write_text(APP.format(v="v1"))
    with ServerProc("--wsgi", "reloadapp:application", "--builtin-prefix", "/_fastc1k", "--workers", "2",
                    engine=engine, workers=0, cwd=str(tmp_path)) as srv:
        assert _until(srv, "/metrics") == b"v1 /metrics"  # the app's path, not the built-in
        status, body, _ = http_get(srv.address, "/_fastc1k/api/health")
        assert (status, body) == (200, b'{"status":"ok"}')
        assert b"fastc1k_requests_total" in http_get(srv.address, "/_fastc1k/metrics")[1]
        mod.write_text(APP.format(v="v2"))
        srv.proc.send_signal(signal.SIGHUP)
        assert _until(srv, "/x", b"v2 /x") == b"v2 /x"


def _until(srv, path, want: bytes | None = None, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    body = b""
    while time.monotonic() < deadline:
        try:
            status, body, _ = http_get(srv.address, path)
            if status == 200 and (want is None or body == want):
                return body
        except OSError:
            pass
        time.sleep(0.1)
    return body
