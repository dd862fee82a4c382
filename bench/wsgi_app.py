"""The WSGI apps every server of the WSGI bench serves (one worker each): `hello`, a
plain PEP 3333 app, and `flask_app`, Flask with one view; both answer every path (the
bench's /api/health included) with the same small JSON body. `NAME_timed` is NAME wrapped
by `timed` (the bench's `--in-situ` runs)."""
from __future__ import annotations

import json
import statistics
import threading
import time

HEALTH = b'{"status":"ok"}'
IN_SITU = "/_in_situ"
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(HEALTH)))]


def hello(environ, start_response):
    start_response("200 OK", _HEADERS)
    return [HEALTH]


def _make_flask():
    import flask
    app = flask.Flask("fastc1k_bench")

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def health(path):
        return flask.Response(HEALTH, mimetype="application/json")
    return app


def _timer_ns() -> int:
    """What one read of the thread's CPU clock adds to a span it ends (a system call, not
    the vDSO): the median of back-to-back reads."""
    clock = time.thread_time_ns
    return int(statistics.median(-clock() + clock() for _ in range(1001)))


def timed(app):
    """`app`, with the CPU time of its own work counted while a server runs it: the call,
    the iteration of its result and close(), by this thread's CPU clock (the app's share of
    a request in situ, next to its time alone). GET /_in_situ answers {"calls", "app_ns",
    "timer_ns"} (timer_ns: what one clock read adds to each call's span, to subtract) and
    starts the count again. The body is taken whole here: the server gets a list."""
    lock, count, timer = threading.Lock(), [0, 0], _timer_ns()
    clock = time.thread_time_ns

    def timed_app(environ, start_response):
        if environ.get("PATH_INFO") == IN_SITU:
            with lock:
                body = json.dumps({"calls": count[0], "app_ns": count[1], "timer_ns": timer}).encode()
                count[0] = count[1] = 0
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        t0 = clock()
        result = app(environ, start_response)
        try:
            body = list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        spent = clock() - t0
        with lock:  # (waitress and granian call apps from threads)
            count[0] += 1
            count[1] += spent
        return body
    return timed_app


def __getattr__(name):  # Flask is imported only by the servers that serve it
    if name == "flask_app":
        app = _make_flask()
    elif name.endswith("_timed"):
        app = timed(globals()[name[:-6]] if name[:-6] in globals() else __getattr__(name[:-6]))
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app


def main() -> None:
    """`python -m bench.wsgi_app fastpysgi|bjoern hello|flask_app PORT`: servers without a CLI."""
    import sys
    server, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = globals()[name] if name in globals() else __getattr__(name)
    if server == "fastpysgi":
        import fastpysgi
        fastpysgi.run(wsgi_app=app, host="127.0.0.1", port=port)
    else:
        import bjoern
        bjoern.run(app, "127.0.0.1", port)


if __name__ == "__main__":
    main()
