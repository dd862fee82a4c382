"""`python -m fastc1k.serve`: run the pre-fork server; `python -m fastc1k.serve stats`: watch one.

Every ServerConfig field is a flag (`--max-body 1M`) and an environment variable
(`FASTC1K_MAX_BODY=1M`), both derived from config.FIELDS; a flag beats the environment,
which beats the default. Options that are not ServerConfig fields (`--engine`, `--app`,
`--wsgi`, `--builtin-prefix`, `--listen`, `--pin`, `--log-level`) have environment variables too.

Exit codes: 0 stopped by a signal; 1 an unexpected failure (or, for `stats`, the server
could not be reached); 2 bad input - unknown flag, bad value, unknown engine, app that
cannot be loaded, address in use, permission denied - always one line on stderr.
"""
from __future__ import annotations

import argparse
import errno
import http.client
import importlib
import logging
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

from . import __version__
from ._cli import ArgumentParser, UsageError
from ._compat import ENGINES, EngineError, load_engine
from ._readme import replace_block
from .config import FD_RESERVE, FIELDS, ConfigError, ServerConfig
from .metrics import parse_prometheus_text
from .routes import Routes
from .supervisor import LISTEN_MODES, ListenError, Supervisor

__all__ = ["main", "build_parser", "load_app", "load_wsgi", "config_table", "readme_with_table", "parse_metrics", "stats_table",
           "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

PROG = "fastc1k.serve"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
ENV_PREFIX = "FASTC1K_"
# CLI options that are not ServerConfig fields, and their environment variables.
_EXTRA_ENV = {"engine": "FASTC1K_ENGINE", "app": "FASTC1K_APP", "wsgi": "FASTC1K_WSGI",
              "builtin_prefix": "FASTC1K_BUILTIN_PREFIX", "listen": "FASTC1K_LISTEN",
              "pin": "FASTC1K_PIN", "log_level": "FASTC1K_LOG_LEVEL"}


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _metavar(f) -> str:
    if f.choices:
        return "{" + ",".join(f.choices) + "}"
    return {"bytes": "SIZE", "seconds": "SECONDS"}.get(f.unit, "HOST" if f.type is str else "N")


def _default_workers() -> int:
    return len(os.sched_getaffinity(0))


def _default_text(f) -> str:
    if f.name == "workers":
        return "one per core"
    if f.unit == "bytes":
        return _human_size(f.default)
    if f.unit == "seconds":
        return f"{f.default:g}s"
    return str(f.default)


def _human_size(n: int) -> str:
    for mult, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{suffix}"
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=f"python -m {PROG}", description="Run the fastc1k pre-fork HTTP/1.1 server. "
                "`python -m fastc1k.serve stats --help` shows the live stats viewer.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Signals to the master: TERM/INT graceful stop (twice: immediate), QUIT immediate stop, "
                       "HUP rolling reload (re-imports --app or --wsgi), TTIN/TTOU add/remove a worker.\n"
                       "Exit codes: 0 stopped by a signal, 1 unexpected failure, 2 bad input "
                       "(flag, value, app, address in use, permission denied).")
    g = p.add_argument_group("server settings (ServerConfig; sizes take k/M/G, durations ms/s/m)")
    for f in FIELDS:
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar=_metavar(f), default=None,
                       help=f"{f.help} [default {_default_text(f)}; env {_env_name(f.name)}]")
    o = p.add_argument_group("process and application")
    o.add_argument("--engine", choices=ENGINES, default=None,
                   help="c (the Cython engine) or python; default: c when built [env FASTC1K_ENGINE]")
    o.add_argument("--app", metavar="MODULE:NAME", default=None,
                   help="routes to serve: a fastc1k.Routes object or a callable returning one "
                        "(NAME defaults to 'routes'); default: the built-in routes [env FASTC1K_APP]")
    o.add_argument("--wsgi", metavar="MODULE:NAME", default=None,
                   help="serve a WSGI (PEP 3333) app: every path no built-in route takes goes to it "
                        "(NAME defaults to 'application') [env FASTC1K_WSGI]")
    o.add_argument("--builtin-prefix", metavar="PATH", default=None,
                   help="with --wsgi: serve /api/health, /api/data and /metrics under PATH (e.g. /_fastc1k); "
                        "default: none, the app has every path [env FASTC1K_BUILTIN_PREFIX]")
    o.add_argument("--listen", choices=LISTEN_MODES, default=None,
                   help="reuseport: one SO_REUSEPORT socket per worker; shared: one socket for all; "
                        "auto: reuseport where available [default auto; env FASTC1K_LISTEN]")
    o.add_argument("--pin", action="store_true", default=None,
                   help="pin worker i to CPU i mod cores [env FASTC1K_PIN=1]")
    o.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None,
                   help="master and worker log level on stderr [default info; env FASTC1K_LOG_LEVEL]")
    o.add_argument("--stats", nargs="?", type=float, const=1.0, default=None, metavar="SECONDS",
                   help="print the live stats table to stderr every SECONDS (default 1)")
    p.add_argument("--version", action="version", version=f"fastc1k {__version__}")
    return p


def build_stats_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=f"python -m {PROG} stats",
                description="Live per-worker table of a running server, scraped from its /metrics.")
    p.add_argument("--host", default=None, help="server address [default 127.0.0.1; env FASTC1K_HOST]")
    p.add_argument("--port", type=int, default=None, help="server port [default 8080; env FASTC1K_PORT]")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period [default 1]")
    p.add_argument("--count", type=int, default=0, metavar="N", help="print N tables, then exit (0: until ^C)")
    return p


# --- configuration --------------------------------------------------------------------------------
def _env_choice(args: argparse.Namespace, name: str, choices: Sequence[str], env: dict) -> str | None:
    value = getattr(args, name)
    if value is None and _EXTRA_ENV[name] in env:
        value = env[_EXTRA_ENV[name]].strip().lower()
        if value not in choices:
            raise UsageError(f"{_EXTRA_ENV[name]} must be one of {', '.join(choices)}, got {value!r}")
    return value


def resolve_config(args: argparse.Namespace, env: dict | None = None) -> ServerConfig:
    """Flags over FASTC1K_* variables over defaults; workers default to one per core."""
    env = dict(os.environ if env is None else env)
    flags = {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name) is not None}
    if "workers" not in flags and _env_name("workers") not in env:
        flags["workers"] = _default_workers()
    try:
        return ServerConfig.from_env(env, **flags)
    except ConfigError as exc:
        name = str(exc).split(" ", 1)[0]
        source = f"--{name.replace('_', '-')}" if name in flags else \
            (_env_name(name) if _env_name(name) in env else "")
        raise UsageError(f"{exc}" + (f" (from {source})" if source else "")) from None


def _import_attr(spec: str, flag: str, default: str, reload: bool) -> Any:
    """'module:name' -> the object it names (the module re-imported on reload). Errors: UsageError."""
    module_name, _, attr = spec.partition(":")
    attr = attr or default
    if not module_name or not re.fullmatch(r"[A-Za-z_][\w.]*", module_name) or not attr.isidentifier():
        raise UsageError(f"{flag} must be MODULE:NAME (e.g. myapp:{default}), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: apps in the current directory
    try:
        if reload and module_name in sys.modules:
            module = importlib.reload(sys.modules[module_name])
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:
        where = ""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and module_name.split(".")[0] in tb.tb_frame.f_code.co_filename:
            where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        raise UsageError(f"cannot import app module {module_name!r}: {type(exc).__name__}: {exc}{where}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"app module {module_name!r} has no attribute {attr!r}") from None


def load_app(spec: str, reload: bool = False) -> Routes:
    """'module:name' -> the Routes it names (or that calling it returns). Errors: UsageError."""
    obj = _import_attr(spec, "--app", "routes", reload)
    if not isinstance(obj, Routes) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise UsageError(f"app factory {spec!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, Routes):
        raise UsageError(f"app {spec!r} must be a fastc1k.Routes or a callable returning one, "
                         f"got {type(obj).__name__}")
    return obj


def load_wsgi(spec: str, builtin_prefix: str | None = None, reload: bool = False) -> Routes:
    """'module:name' -> Routes serving the WSGI app it names. Errors: UsageError."""
    app = _import_attr(spec, "--wsgi", "application", reload)
    if not callable(app):
        raise UsageError(f"WSGI app {spec!r} is not callable (got {type(app).__name__})")
    try:
        return Routes(wsgi=app, builtin_prefix=builtin_prefix)
    except ValueError as exc:
        raise UsageError(f"--builtin-prefix: {exc}") from None


def config_table() -> str:
    """The README's configuration table, generated from config.FIELDS."""
    rows = ["| flag | environment | default | range | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        if f.choices:
            rng = " / ".join(f.choices)
        elif f.lo is None:
            rng = ""
        elif f.unit == "bytes":
            rng = f"{_human_size(int(f.lo))}..{_human_size(int(f.hi))}"
        elif f.type is int:
            rng = f"{int(f.lo)}..{int(f.hi)}" + (" or auto" if f.auto else "")
        else:
            rng = f"{f.lo:g}..{f.hi:g} s"
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{_env_name(f.name)}` | {_default_text(f)} | {rng} "
                    f"| {f.help.replace('|', '/')} |")
    return "\n".join(rows)


# --- stats ------------------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text -> {worker pid or "total": {series: value}} (series = name + other labels)."""
    out: dict[str, dict[str, float]] = {}
    for name, labels, value in parse_prometheus_text(text):
        lab = dict(labels)
        who = lab.pop("worker", "total")
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(lab.items())) + "}" if lab else "")
        out.setdefault(who, {})[key] = value
    return out


_COLUMNS = ("worker", "conns", "accepted", "requests", "req/s", "4xx", "5xx", "ev/wait", "lag p99",
            "cpu %", "rss MB", "fds/limit")


def _errors(series: dict[str, float], first: str) -> int:
    return int(sum(v for k, v in series.items()
                   if k.startswith('fastc1k_responses_total{status="' + first)))


def stats_table(text: str, previous: tuple[float, dict] | None = None, now: float | None = None) -> str:
    """One table (a row per worker, then the total) from a /metrics scrape; rates need `previous`."""
    now = time.monotonic() if now is None else now
    data = parse_metrics(text)
    prev_t, prev = previous if previous else (now, {})
    dt = now - prev_t
    rows = [_COLUMNS]
    workers = sorted((k for k in data if k != "total"), key=int)
    for who in workers + ["total"]:
        s = data[who]
        p = prev.get(who, {})
        req = s.get("fastc1k_requests_total", 0)
        rate = (req - p.get("fastc1k_requests_total", req)) / dt if dt > 0 else 0.0
        cpu_now = s.get("fastc1k_worker_cpu_seconds_total")
        cpu_prev = p.get("fastc1k_worker_cpu_seconds_total", cpu_now)
        cpu = f"{100 * (cpu_now - cpu_prev) / dt:.0f}" if cpu_now is not None and dt > 0 else "-"
        rss = s.get("fastc1k_worker_resident_memory_bytes")
        fds, lim = s.get("fastc1k_worker_open_fds"), s.get("fastc1k_worker_max_fds")
        if who == "total":
            rss = sum(data[w].get("fastc1k_worker_resident_memory_bytes", 0) for w in workers) or None
            fds = sum(data[w].get("fastc1k_worker_open_fds", 0) for w in workers) or None
            cpu_vals = [data[w].get("fastc1k_worker_cpu_seconds_total", 0) - prev.get(w, {}).get(
                "fastc1k_worker_cpu_seconds_total", data[w].get("fastc1k_worker_cpu_seconds_total", 0))
                for w in workers]
            cpu = f"{100 * sum(cpu_vals) / dt:.0f}" if dt > 0 else "-"
            lim = None
        lag = s.get("fastc1k_loop_lag_p99_us")
        ev = s.get("fastc1k_loop_events_per_wait")
        if who == "total":
            waits = s.get("fastc1k_loop_waits_total", 0)
            ev = s.get("fastc1k_loop_events_total", 0) / waits if waits else 0.0
            lag = max((data[w].get("fastc1k_loop_lag_p99_us", 0) for w in workers), default=0)
        rows.append((
            who, f"{s.get('fastc1k_active', 0):.0f}", f"{s.get('fastc1k_accepted_total', 0):.0f}",
            f"{req:.0f}", f"{rate:.0f}", str(_errors(s, "4")), str(_errors(s, "5")),
            "-" if ev is None else f"{ev:.2f}", "-" if lag is None else f"{lag:.0f}us", cpu,
            "-" if rss is None else f"{rss / 1e6:.1f}",
            "-" if fds is None else (f"{fds:.0f}/{lim:.0f}" if lim else f"{fds:.0f}"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def _scrape(host: str, port: int, timeout: float = 5.0) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"/metrics answered {resp.status}")
        return body.decode("utf-8", "replace")
    finally:
        conn.close()


def stats_main(argv: Sequence[str]) -> int:
    args = build_stats_parser().parse_args(argv)
    host = args.host or os.environ.get("FASTC1K_HOST", "127.0.0.1")
    port = args.port
    if port is None:
        try:
            port = int(os.environ.get("FASTC1K_PORT", "8080"))
        except ValueError:
            raise UsageError(f"FASTC1K_PORT must be int, got {os.environ['FASTC1K_PORT']!r}") from None
    if not 0 < port < 65536:
        raise UsageError(f"port must be 1..65535, got {port}")
    if args.interval <= 0:
        raise UsageError(f"interval must be > 0, got {args.interval:g}")
    previous = None
    shown = 0
    while True:
        try:
            text = _scrape(host, port)
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            print(f"{PROG} stats: error: cannot read http://{host}:{port}/metrics: {reason}", file=sys.stderr)
            return EXIT_FAILURE
        now = time.monotonic()
        print(time.strftime("%H:%M:%S"), f"http://{host}:{port}")
        print(stats_table(text, previous, now), flush=True)
        previous = (now, parse_metrics(text))
        shown += 1
        if args.count and shown >= args.count:
            return EXIT_OK
        time.sleep(args.interval)


# --- main -------------------------------------------------------------------------------------------
def _master_stats_printer() -> Callable[[bytes], None]:
    state: dict[str, Any] = {}

    def show(text: bytes) -> None:
        now = time.monotonic()
        t = text.decode()
        print(stats_table(t, state.get("prev"), now), file=sys.stderr, flush=True)
        state["prev"] = (now, parse_metrics(t))
    return show


def serve_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ
    config = resolve_config(args)
    level = args.log_level or env.get("FASTC1K_LOG_LEVEL", "info").strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"FASTC1K_LOG_LEVEL must be one of debug, info, warning, error, got {level!r}")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s fastc1k[%(process)d] %(levelname)s: %(message)s")
    listen = _env_choice(args, "listen", LISTEN_MODES, env) or "auto"
    pin = args.pin if args.pin is not None else env.get("FASTC1K_PIN", "") not in ("", "0")
    engine_name = args.engine or env.get("FASTC1K_ENGINE") or None
    if engine_name is not None and engine_name.strip().lower() == "c":
        try:  # an explicit request for C fails before anything else is done
            load_engine("c")
        except EngineError as exc:
            raise UsageError(str(exc)) from None
    app = args.app or env.get("FASTC1K_APP") or None
    wsgi = args.wsgi or env.get("FASTC1K_WSGI") or None
    prefix = args.builtin_prefix or env.get("FASTC1K_BUILTIN_PREFIX") or None
    if app and wsgi:
        raise UsageError("--app and --wsgi are exclusive: serve a route table or a WSGI app")
    if prefix and not wsgi:
        raise UsageError("--builtin-prefix applies to --wsgi only")
    if wsgi:
        routes = load_wsgi(wsgi, prefix)
        reload_routes = lambda: load_wsgi(wsgi, prefix, reload=True)  # noqa: E731
    else:
        routes = load_app(app) if app else Routes()
        reload_routes = (lambda: load_app(app, reload=True)) if app else None
    if args.stats is not None and args.stats <= 0:
        raise UsageError(f"--stats must be > 0 seconds, got {args.stats:g}")
    sup = Supervisor(config, routes, None, listen=listen, pin=pin, reload_routes=reload_routes,
                     stats=_master_stats_printer() if args.stats else None, stats_interval=args.stats or 1.0)
    try:
        sup.open()
    except ListenError as exc:
        raise UsageError(str(exc)) from None
    try:  # last, so that bad input is reported before the fallback warning (if any)
        sup.engine = load_engine(engine_name)
    except EngineError as exc:
        sup.close()
        raise UsageError(str(exc)) from None
    if sup.fd_limit < config.max_connections + FD_RESERVE:
        logging.getLogger("fastc1k").warning(
            "fd limit %d per worker is below max_connections %d: accept pauses on EMFILE before the 503s",
            sup.fd_limit, config.max_connections)
    sup.resolve_backend()
    print(sup.startup_line(), flush=True)
    return sup.run()


def readme_with_table(text: str) -> str:
    """`text` (the README) with the configuration table between its markers regenerated."""
    try:
        return replace_block(text, "config-table", config_table())
    except ValueError as exc:
        raise UsageError(f"the README has {exc}") from None


def table_main(argv: Sequence[str]) -> int:
    """`config-table` prints the README's configuration table; `config-table --write README.md` updates it."""
    p = ArgumentParser(prog=f"python -m {PROG} config-table", description=table_main.__doc__)
    p.add_argument("--write", metavar="README", help="replace the table between the markers in this file")
    args = p.parse_args(argv)
    if not args.write:
        print(config_table())
        return EXIT_OK
    try:
        with open(args.write, encoding="utf-8") as f:
            text = f.read()
        new = readme_with_table(text)
        if new != text:
            with open(args.write, "w", encoding="utf-8") as f:
                f.write(new)
    except OSError as exc:
        raise UsageError(f"{args.write}: {exc.strerror}") from None
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv[:1] in (["stats"], ["config-table"]) else ""
    try:
        if sub == "stats":
            return stats_main(argv[1:])
        if sub == "config-table":
            return table_main(argv[1:])
        return serve_main(argv)
    except UsageError as exc:
        print(f"{PROG}{' ' + sub if sub else ''}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK if sub else EXIT_FAILURE
    except OSError as exc:  # e.g. fork or pipe failing for lack of resources: still one line
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM):
            print(f"{PROG}: error: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    sys.exit(main())
