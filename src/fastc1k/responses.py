"""Status lines, reason phrases, prebuilt responses and the Date header cache.

Every response either engine sends is assembled from the pieces defined here, in this
order (so that the C engine can send them with one writev, straight from this memory):

    head  = status line + Server + [Allow/Retry-After] + Content-Type + Content-Length
    date  = "Date: <IMF-fixdate>\\r\\n"   (one shared buffer, rewritten once a second)
    conn  = "" | "Connection: keep-alive\\r\\n" | "Connection: close\\r\\n"
    tail  = "\\r\\n" + body               (just "\\r\\n" for HEAD)
"""
from __future__ import annotations

import time
from email.utils import formatdate
from typing import Iterable

__all__ = [
    "SERVER_NAME", "REASONS", "ERROR_BODIES", "KEEPS_CONNECTION", "CONN_KEEP_ALIVE", "CONN_CLOSE", "DATE_LEN",
    "status_line", "build_head", "build_response", "error_head", "options_head", "error_tail", "date_header",
    "DateCache",
]

SERVER_NAME = b"fastc1k"

# The statuses the engines produce, with their reason phrases (RFC 9110 section 15).
REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# Statuses the engines themselves emit for bad input or overload, with their bodies.
# 404 and 405 keep the connection open; every other one closes it.
ERROR_BODIES: dict[int, bytes] = {
    400: b"bad request\n",
    404: b"not found\n",
    405: b"method not allowed\n",
    408: b"request timeout\n",
    413: b"request body too large\n",
    414: b"request line too long\n",
    431: b"request header fields too large\n",
    500: b"internal server error\n",
    501: b"transfer coding not implemented\n",
    503: b"server at capacity, retry later\n",
    505: b"http version not supported\n",
}

KEEPS_CONNECTION = frozenset({404, 405})
RETRY_AFTER_SECONDS = 1
CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"
CONN_CLOSE = b"Connection: close\r\n"
DATE_LEN = len(b"Date: Sat, 28 Nov 2026 06:20:12 GMT\r\n")  # 37: IMF-fixdate is fixed length


def status_line(status: int) -> bytes:
    reason = REASONS.get(status, "Unknown")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())


def _header_lines(headers: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    out = []
    for name, value in headers:
        n = name.encode("latin-1") if isinstance(name, str) else name
        v = value.encode("latin-1") if isinstance(value, str) else value
        if b"\r" in n or b"\n" in n or b":" in n or b"\r" in v or b"\n" in v:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        out.append(n + b": " + v + b"\r\n")
    return b"".join(out)


def build_head(status: int, content_type: bytes | str | None, content_length: int,
               extra: Iterable[tuple[str | bytes, str | bytes]] = ()) -> bytes:
    """Status line and every header except Date and Connection (which vary per send)."""
    if isinstance(content_type, str):
        content_type = content_type.encode("latin-1")
    parts = [status_line(status), b"Server: ", SERVER_NAME, b"\r\n", _header_lines(extra)]
    if content_type:
        parts += [b"Content-Type: ", content_type, b"\r\n"]
    parts.append(b"Content-Length: %d\r\n" % content_length)
    return b"".join(parts)


def build_response(status: int, content_type: bytes | str | None, body: bytes,
                   extra: Iterable[tuple[str | bytes, str | bytes]] = (), *, date: bytes,
                   conn: bytes = b"", head_only: bool = False) -> bytes:
    return b"".join((build_head(status, content_type, len(body), extra), date, conn, b"\r\n",
                     b"" if head_only else body))


def error_head(status: int, allow: bytes | None = None) -> bytes:
    """Head of an engine-generated error response (the caller adds Date, conn, tail)."""
    extra: list[tuple[bytes, bytes]] = []
    if status == 405 and allow:
        extra.append((b"Allow", allow))
    if status == 503:
        extra.append((b"Retry-After", str(RETRY_AFTER_SECONDS).encode()))
    return build_head(status, b"text/plain", len(ERROR_BODIES[status]), extra)


def options_head(allow: bytes) -> bytes:
    """Head of the engines' answer to OPTIONS (200, Allow, no body; the caller adds Date, conn, tail)."""
    return build_head(200, None, 0, [(b"Allow", allow)])


def error_tail(status: int, head_only: bool = False) -> bytes:
    return b"\r\n" if head_only else b"\r\n" + ERROR_BODIES[status]


def date_header(now: float | None = None) -> bytes:
    return b"Date: " + formatdate(now if now is not None else time.time(), usegmt=True).encode() + b"\r\n"


class DateCache:
    """The Date header line, recomputed at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self, now: float | None = None) -> bytes:
        t = time.time() if now is None else now
        sec = int(t)
        if sec != self._second:
            self._second = sec
            self._value = date_header(sec)
        return self._value
