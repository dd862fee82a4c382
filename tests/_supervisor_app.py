"""Routes for the supervisor and CLI tests (loaded by the server with --app _supervisor_app:routes).

/slow sleeps SLOW_SECONDS before answering (an in-flight request a graceful stop must
finish); /crash ends the worker process at once (a worker crash the master must survive).
"""
import os
import time

from fastc1k import Routes

SLOW_SECONDS = float(os.environ.get("FASTC1K_TEST_SLOW", "0.3"))


def _slow(request):
    time.sleep(SLOW_SECONDS)
    return b"slow done"


def _crash(request):
    os._exit(3)


def make_routes() -> Routes:
    routes = Routes()
    routes.handler("/slow", _slow)
    routes.handler("/crash", _crash)
    return routes


routes = make_routes()
