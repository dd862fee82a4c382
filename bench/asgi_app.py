"""The ASGI app uvicorn serves in the bench: /api/health, /api/data, /bench/handler."""
from __future__ import annotations

import itertools
import json
import os
import time

HEALTH = b'{"status":"ok"}'
_ids = itertools.count(1)
_PID = os.getpid()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path in ("/api/health", "/bench/handler"):
        body = HEALTH
    elif path == "/api/data":
        body = json.dumps({"id": next(_ids), "timestamp": int(time.time() * 1000), "worker": _PID},
                          separators=(",", ":")).encode()
    else:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
