"""The WSGI apps every server of the WSGI bench serves (one worker each): `hello`, a
plain PEP 3333 app, and `flask_app`, Flask with one view; both answer every path (the
bench's /api/health included) with the same small JSON body."""
from __future__ import annotations

HEALTH = b'{"status":"ok"}'
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


def __getattr__(name):  # Flask is imported only by the servers that serve it
    if name == "flask_app":
        globals()["flask_app"] = app = _make_flask()
        return app
    raise AttributeError(name)


def main() -> None:
    """`python -m bench.wsgi_app fastpysgi|bjoern hello|flask_app PORT`: servers without a CLI."""
    import sys
    server, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = hello if name == "hello" else __getattr__("flask_app")
    if server == "fastpysgi":
        import fastpysgi
        fastpysgi.run(wsgi_app=app, host="127.0.0.1", port=port)
    else:
        import bjoern
        bjoern.run(app, "127.0.0.1", port)


if __name__ == "__main__":
    main()
