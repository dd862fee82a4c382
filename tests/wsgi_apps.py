"""WSGI apps the tests serve: a plain PEP 3333 app (one path per behaviour), and Flask and
Falcon example apps. Importable by path (`--wsgi wsgi_apps:plain`) for the CLI tests."""
from __future__ import annotations

import hashlib
import json
import os
import sys

CLOSED: list[str] = []   # paths whose iterable's close() was called (in-process servers)
BIG = b"z" * 65536       # one block, yielded again and again: a stream that costs no memory
WRITE_ERRORS: list[OSError] = []  # what write() raised in /write-stream (in-process servers)


def numbered(i: int) -> bytes:
    """Block i of a numbered stream: 64 KiB that say their place (order is checkable)."""
    return b"%07d\n" % i * 8192


class Closing:
    """An iterable with close(): records that the server called it."""

    def __init__(self, path: str, chunks, fail_at: int = -1) -> None:
        self.path, self.chunks, self.fail_at = path, chunks, fail_at

    def __iter__(self):
        for i, c in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("stream failure (expected by the test)")
            yield c

    def close(self) -> None:
        CLOSED.append(self.path)


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


ENV_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
            "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "wsgi.version",
            "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
            "wsgi.input_terminated")


def plain(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/api/health":  # the test fixtures' liveness probe
        return _json(start_response, {"status": "ok"})
    if path.startswith("/env"):  # /env, /env/<anything>
        out = {k: environ.get(k) for k in ENV_KEYS}
        out["http"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        out["input"] = hasattr(environ["wsgi.input"], "read")
        out["errors"] = hasattr(environ["wsgi.errors"], "write")
        out["file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
        return _json(start_response, out)
    if path == "/echo":
        cl = environ.get("CONTENT_LENGTH")
        body = environ["wsgi.input"].read(int(cl) if cl else -1)  # validate wants one argument
        return _json(start_response, {"len": len(body), "md5": hashlib.md5(body).hexdigest(),
                                      "content_length": environ.get("CONTENT_LENGTH")})
    if path == "/read-empty":
        inp = environ["wsgi.input"]
        out = {"read": inp.read().decode(), "line": inp.readline().decode(), "lines": inp.readlines(),
               "iter": list(inp)}
        inp.close()
        return _json(start_response, out)
    if path.startswith("/slow"):  # a slow app (C engine: its response goes out at the end of the round)
        import time
        q = dict(kv.split("=", 1) for kv in environ.get("QUERY_STRING", "").split("&") if "=" in kv)
        time.sleep(int(q.get("ms", 2)) / 1000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = q.get("id", "").encode() + b"slow" + b"z" * int(q.get("n", 0))  # ?id=..&n=<padding bytes>
        return [body] if path == "/slow" else Closing(path, [b"slow ", b"stream"])
    if path == "/list":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello ", b"world"]
    if path == "/gen":
        return Closing(path, [b"one ", b"", b"two ", b"three"]) if _start(start_response) else None
    if path == "/gen-fail":
        return Closing(path, [b"first", b"second"], fail_at=1) if _start(start_response) else None
    if path == "/gen-fail-early":
        return Closing(path, [b"never"], fail_at=0) if _start(start_response) else None
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return Closing(path, [b"then ", b"iterated"])
    if path == "/write-big":  # 2 MiB through write() (tests lower wsgi.WRITE_MAX below it)
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for _ in range(32):
            write(BIG)
        return []
    if path == "/sleep":  # holds the worker ?<seconds>
        import time
        time.sleep(float(environ["QUERY_STRING"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    if path == "/write-stream":  # ?n=<64 KiB blocks through write()>&num&cl&tail=<items returned after>
        q = dict(p.partition("=")[::2] for p in environ["QUERY_STRING"].split("&") if p)
        n, tail = int(q.get("n", "1")), int(q.get("tail") or "0")
        items = [b"tail-%d " % i for i in range(tail)] if tail < 100 else [BIG] * tail
        headers = [("Content-Type", "application/octet-stream")]
        if "cl" in q:
            headers.append(("Content-Length", str(n * len(BIG) + sum(map(len, items)))))
        write = start_response("200 OK", headers)
        try:
            for i in range(n):
                write(numbered(i) if "num" in q else BIG)
            if "read" in q:  # the request body, read after the head went out
                write(b"read %d" % len(environ["wsgi.input"].read()))
            if "fail" in q:
                raise RuntimeError("app failure after write() (expected by the test)")
        except OSError as exc:
            WRITE_ERRORS.append(exc)
            if "catch" not in q:
                raise
        return Closing(path, items)
    if path == "/exc-info":
        try:
            raise ValueError("before any body")
        except ValueError:
            start_response("200 OK", [("Content-Type", "text/plain")])
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced"]
    if path == "/exc-info-late":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"committed")
        try:
            raise ValueError("after the body began (expected by the test)")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())  # must re-raise
        return [b"unreachable"]
    if path == "/raise":
        raise RuntimeError("app failure (expected by the test)")
    if path.startswith("/bad/"):
        bad = {
            "non-latin1": ("200 OK", [("X-Name", "\u20ac")]),
            "crlf": ("200 OK", [("X-Evil", "a\r\nInjected: 1")]),
            "hop": ("200 OK", [("Connection", "close")]),
            "te": ("200 OK", [("Transfer-Encoding", "chunked")]),
            "status": ("200", []),
            "status-digits": ("20 OK", []),
            "not-tuple": ("200 OK", [["X-A", "b"]]),
            "bytes-header": ("200 OK", [(b"X-A", "b")]),
            "twice": None,
        }[path[5:]]
        if bad is None:
            start_response("200 OK", [])
            start_response("200 OK", [])
        else:
            start_response(*bad)
        return [b"never sent"]
    if path == "/str-body":
        start_response("200 OK", [])
        return ["not bytes"]
    if path == "/no-start":
        return [b"no start_response"]
    if path == "/length":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return Closing(path, [b"12", b"345"])
    if path.startswith("/whole"):  # Content-Length reached, then the end (or a failure) a few items on
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return {"/whole": Closing(path, [b"", b"12345", b""]),
                "/whole-fail": Closing(path, [b"12345", b""], fail_at=1),
                "/whole-str": Closing(path, [b"12345", "not bytes"])}[path]
    if path == "/short":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return Closing(path, [b"12", b"345"])
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    if path == "/file":
        f = open(FILE_PATH, "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/big":
        n = int(environ["QUERY_STRING"] or "1")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(n * len(BIG)))])
        return Closing(path, (BIG for _ in range(n)))
    if path == "/unread":
        return _json(start_response, {"read": False}, "401 Unauthorized")
    if path == "/version":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [VERSION.encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path\n"]


def _start(start_response) -> bool:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return True


FILE_PATH = os.environ.get("FASTC1K_TEST_FILE", "")
VERSION = "v1"


# --- Flask ------------------------------------------------------------------------------------
def make_flask():
    import flask

    app = flask.Flask("fastc1k_test_flask")

    @app.get("/")
    def index():
        return "flask hello"

    @app.get("/items/<int:item>")
    def item(item):
        return flask.jsonify(id=item, q=flask.request.args.get("q"))

    @app.post("/json")
    def post_json():
        data = flask.request.get_json()
        return flask.jsonify(got=data, n=len(data))

    @app.post("/form")
    def form():
        return flask.jsonify(dict(flask.request.form))

    @app.post("/upload")
    def upload():
        body = flask.request.get_data()
        return flask.jsonify(len=len(body), md5=hashlib.md5(body).hexdigest())

    @app.get("/download")
    def download():
        return flask.send_file(FILE_PATH, mimetype="application/octet-stream")

    @app.get("/stream")
    def stream():
        return flask.Response((b"line %d\n" % i for i in range(100)), mimetype="text/plain")

    @app.get("/boom")
    def boom():
        raise RuntimeError("flask view failure (expected by the test)")

    return app


# --- Falcon -----------------------------------------------------------------------------------
def make_falcon():
    import falcon

    class Things:
        def on_get(self, req, resp, name):
            resp.media = {"name": name, "q": req.get_param("q")}

        on_head = on_get  # falcon does not map HEAD to GET itself

        def on_post(self, req, resp, name):
            resp.media = {"name": name, "got": req.get_media()}
            resp.status = falcon.HTTP_201

    class Stream:
        def on_get(self, req, resp):
            resp.content_type = "text/plain"
            resp.stream = iter([b"a" * 1000, b"b" * 1000])

    class Download:
        def on_get(self, req, resp):
            resp.content_type = "application/octet-stream"
            resp.stream = open(FILE_PATH, "rb")

    class Boom:
        def on_get(self, req, resp):
            raise RuntimeError("falcon resource failure (expected by the test)")

    app = falcon.App()
    app.add_route("/things/{name}", Things())
    app.add_route("/stream", Stream())
    app.add_route("/download", Download())
    app.add_route("/boom", Boom())
    return app


_MADE: dict = {}


def __getattr__(name):  # lazy: `--wsgi wsgi_apps:flask_app` imports Flask only then
    makers = {"flask_app": make_flask, "falcon_app": make_falcon}
    if name not in makers:
        raise AttributeError(name)
    if name not in _MADE:
        _MADE[name] = makers[name]()
    return _MADE[name]
