"""One fastc1k worker in this process, for the bench:
`serve_fastc1k.py --engine c|python [--backend epoll|io_uring] [--defer-accept S] --port P`.

A single process (no supervisor master), so the CPU the bench reads from /proc is the
engine's alone. Routes: the built-ins (/api/health, /api/data, /metrics) plus
/bench/handler, a Python handler with the same JSON body as /api/health (the handler
workload); or, with `--wsgi MODULE:NAME`, that WSGI app on every path (the WSGI bench).
SIGTERM/SIGINT stop it.
"""
from __future__ import annotations

import argparse
import signal
import sys

from fastc1k import Routes, Server, ServerConfig


def handler(request):
    return 200, {"Content-Type": "application/json"}, b'{"status":"ok"}'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("c", "python"), required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", choices=("epoll", "io_uring"), default="epoll")
    ap.add_argument("--max-connections", type=int, default=19000)
    ap.add_argument("--defer-accept", type=int, default=0, help="TCP_DEFER_ACCEPT seconds (0: off)")
    ap.add_argument("--wsgi", metavar="MODULE:NAME", default=None)
    args = ap.parse_args()
    if args.wsgi:
        from fastc1k.serve import load_wsgi
        routes = load_wsgi(args.wsgi)
    else:
        routes = Routes()
        routes.handler("/bench/handler", handler)
    cfg = ServerConfig(host="127.0.0.1", port=args.port, max_connections=args.max_connections,
                       idle_timeout=300.0, header_timeout=60.0, backlog=16384, backend=args.backend,
                       defer_accept=args.defer_accept)
    server = Server(cfg, routes, engine=args.engine)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop(False))
    print(f"ready {server.engine_name} {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
