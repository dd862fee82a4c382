"""`python -m fastc1k.serve`: flags and environment derived from config.FIELDS, one-line
errors with exit 2 for bad input, the start-up line, the stats viewer, the README table."""
from __future__ import annotations

import ctypes
import os
import pathlib
import resource
import socket
import subprocess
import sys
import time

import pytest

from _supervised import _PORT_RE, ServerProc, http_get, run_cli, serve_env
import fastc1k
from fastc1k import c_available
from fastc1k.config import FIELDS
from fastc1k.serve import build_parser, config_table, readme_with_table

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.timeout(60)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fastc1k.serve"), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert r.stdout == ""  # no start-up line: nothing was started
    return lines[0]


BAD_ARGS = [
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    (["--port", "70000"], {}, "port must be 0..65535, got 70000 (from --port)"),
    (["--port", "http"], {}, "port must be int"),
    (["--workers", "0"], {}, "workers must be 1..4096, got 0"),
    (["--max-body", "lots"], {}, "max_body must be int bytes, got 'lots'"),
    (["--max-connections", "most"], {}, "max_connections must be int or auto, got 'most'"),
    (["--header-timeout", "-1"], {}, "header_timeout must be"),
    (["--buffer-size", "1k"], {}, "buffer_size must be >= max_request_line + max_header_bytes + 2"),
    (["--engine", "rust"], {}, "argument --engine: invalid choice: 'rust'"),
    (["--listen", "magic"], {}, "argument --listen: invalid choice"),
    (["--log-level", "loud"], {}, "argument --log-level: invalid choice"),
    (["--stats", "0"], {}, "--stats must be > 0 seconds"),
    (["--app", "no_such_module_xyz:routes"], {}, "cannot import app module 'no_such_module_xyz'"),
    (["--app", "os:sep"], {}, "must be a fastc1k.Routes or a callable returning one, got str"),
    (["--app", "_supervisor_app:nothing"], {}, "has no attribute 'nothing'"),
    (["--app", "not a spec"], {}, "--app must be MODULE:NAME"),
    ([], {"FASTC1K_PORT": "abc"}, "port must be int, got 'abc' (from FASTC1K_PORT)"),
    ([], {"FASTC1K_MAX_BODY": "-5"}, "max_body must be 0..1099511627776, got -5 (from FASTC1K_MAX_BODY)"),
    ([], {"FASTC1K_LISTEN": "sideways"}, "FASTC1K_LISTEN must be one of auto, reuseport, shared"),
    ([], {"FASTC1K_ENGINE": "rust"}, "engine must be one of c, python"),
    (["--host", "192.0.2.1", "--port", "0"], {}, "cannot listen on 192.0.2.1:0: address not available"),
    (["--host", "no-such-host.invalid", "--port", "0"], {}, "cannot resolve host"),
    (["stats", "--port", "x"], {}, "argument --port: invalid int value"),
    (["stats", "--interval", "0"], {}, "interval must be > 0"),
]


@pytest.mark.parametrize("args,env,message", BAD_ARGS, ids=[" ".join(a) or next(iter(e)) for a, e, _ in BAD_ARGS])
def test_bad_input_is_one_line_and_exit_2(args, env, message):
    _one_line_error(run_cli(*args, env=env), message)


def test_bad_app_module_reports_where_without_traceback(tmp_path):
    (tmp_path / "broken_app.py").write_text("x = 1\nraise ValueError('nope')\n")
    line = _one_line_error(run_cli("--app", "broken_app:routes", cwd=str(tmp_path)))
    assert "ValueError: nope at broken_app.py:2" in line


def test_c_engine_requested_but_missing_is_an_error():
    if c_available():
        pytest.skip("the C engine is built")
    _one_line_error(run_cli("--engine", "c", "--port", "0"), "C engine was requested but is not built")


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _one_line_error(run_cli("--engine", "python", "--port", str(port)),
                        f"cannot listen on 127.0.0.1:{port}: address already in use")


def test_port_in_use_by_another_fastc1k():
    """Two servers on one port would silently share it through SO_REUSEPORT; the second refuses."""
    with ServerProc(workers=1) as sp:
        _one_line_error(run_cli("--engine", "python", "--port", str(sp.port)), "address already in use")


def test_permission_denied():
    low = int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read())
    if low == 0:
        pytest.skip("every port is unprivileged here")
    kw = {}
    if os.geteuid() == 0:  # root: drop CAP_NET_BIND_SERVICE from the bounding set before exec
        kw["preexec_fn"] = lambda: ctypes.CDLL(None, use_errno=True).prctl(24, 10, 0, 0, 0)  # PR_CAPBSET_DROP
    r = subprocess.run([sys.executable, "-m", "fastc1k.serve", "--engine", "python", "--port", str(low - 1)],
                       env=serve_env(), capture_output=True, text=True, timeout=20, **kw)
    _one_line_error(r, f"cannot listen on 127.0.0.1:{low - 1}: permission denied")


def test_help_lists_every_config_field_and_its_env_var():
    r = run_cli("--help")
    assert r.returncode == 0
    for f in FIELDS:
        assert "--" + f.name.replace("_", "-") in r.stdout
        assert "FASTC1K_" + f.name.upper() in r.stdout
    assert "Exit codes" in r.stdout


def test_runs_from_inside_the_package_directory():
    """`python -m fastc1k.serve` with cwd = the package's own folder: sys.path[0] is then that
    folder, so a module named like a standard library one (http.py once) would hide it."""
    pkg = os.path.dirname(os.path.abspath(fastc1k.__file__))
    clash = sorted(p.stem for p in pathlib.Path(pkg).iterdir()
                   if p.stem.split(".")[0] in sys.stdlib_module_names)
    assert clash == [], f"modules that shadow the standard library from inside the package: {clash}"
    r = run_cli("--help", cwd=pkg)
    assert r.returncode == 0, r.stderr
    assert "--max-body" in r.stdout and "Traceback" not in r.stderr


def test_every_field_is_a_flag():
    dests = {a.dest for a in build_parser()._actions}
    assert {f.name for f in FIELDS} <= dests


def test_flags_beat_env_and_env_configures(tmp_path):
    """FASTC1K_MAX_BODY=10 makes an 11-byte body a 413; --max-body 20 then lets it through."""
    body = b"x" * 11
    req = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nConnection: close\r\n\r\n" + body)
    app = tmp_path / "echo_app.py"
    app.write_text("from fastc1k import Routes\nroutes = Routes()\n"
                   "routes.handler('/echo', lambda r: r.body, methods=['POST'])\n")

    def post(sp):
        with socket.create_connection(sp.address, timeout=5) as s:
            s.sendall(req)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split()[1])

    env = {"FASTC1K_MAX_BODY": "10", "FASTC1K_WORKERS": "1"}
    with ServerProc("--app", "echo_app:routes", workers=0, env=env, cwd=str(tmp_path)) as sp:
        assert "workers=1" in sp.line and "max_body=10 " in sp.line
        assert post(sp) == 413
    with ServerProc("--app", "echo_app:routes", "--max-body", "20", workers=0, env=env, cwd=str(tmp_path)) as sp:
        assert "max_body=20 " in sp.line
        assert post(sp) == 200


def test_max_connections_auto_is_sized_from_the_fd_limit():
    """`--max-connections auto` (or FASTC1K_MAX_CONNECTIONS=auto) under a hard fd limit of 256:
    the worker's cap is 256 - FD_RESERVE, so past it clients get a 503 and the worker never
    meets EMFILE (which would stall accept instead of answering)."""
    from fastc1k.config import FD_RESERVE, ServerConfig, fd_sized_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ServerConfig(max_connections="auto").max_connections == fd_sized_connections() == \
        min(hard - FD_RESERVE, 1 << 24)
    limit, cap = 256, 256 - FD_RESERVE
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastc1k.serve", "--port", "0", "--workers", "1", "--engine", "python"],
        env=serve_env({"FASTC1K_MAX_CONNECTIONS": "auto"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    socks = []
    try:
        line = proc.stdout.readline()
        assert f"max_connections/worker={cap} " in line and f"fd_limit/worker={limit} " in line, line
        port = int(_PORT_RE.search(line).group(1))
        statuses = []
        for _ in range(cap + 20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
            statuses.append(int(s.recv(4096).split()[1]))
            socks.append(s)
        assert statuses == [200] * cap + [503] * 20
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.communicate(timeout=10)


def test_default_workers_one_per_core():
    with ServerProc(workers=0) as sp:
        n = len(os.sched_getaffinity(0))
        assert f"workers={n} " in sp.line
        sp.wait_workers(n)


def test_stats_subcommand_reads_a_live_server():
    with ServerProc(workers=2) as sp:
        pids = sp.wait_workers(2)
        for _ in range(5):
            http_get(sp.address, "/api/health")
        r = run_cli("stats", "--port", str(sp.port), "--count", "2", "--interval", "0.2")
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()]
        assert rows[1][:3] == ["worker", "conns", "accepted"]
        tables = [i for i, row in enumerate(rows) if row[:1] == ["worker"]]
        assert len(tables) == 2
        body = rows[tables[1] + 1:]
        assert sorted(int(row[0]) for row in body if row[0] != "total") == pids
        total = next(row for row in body if row[0] == "total")
        assert int(total[3]) >= 5   # requests


def test_stats_unreachable_is_one_line_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # bound, not listening: refused
        r = run_cli("stats", "--port", str(port), "--count", "1")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_master_stats_flag_prints_the_table():
    with ServerProc("--stats", "0.2", workers=1) as sp:
        sp.wait_workers(1)
        http_get(sp.address, "/api/health")
        time.sleep(0.6)
        assert "worker  conns" in sp.stderr().replace("  worker", "worker")


def test_readme_config_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert readme_with_table(text) == text, (
        "README.md's configuration table is stale: run "
        "`PYTHONPATH=src python -m fastc1k.serve config-table --write README.md`")
    for f in FIELDS:
        assert f"`--{f.name.replace('_', '-')}`" in config_table()
