"""The pure-Python engine: the same worker as fastc1k._core, in plain Python.

Strategy: one non-blocking `selectors` (epoll) loop per worker, not asyncio, so that it
is the same design as the C engine and a fair baseline. Each connection keeps a
bytearray of unparsed input and a list of response pieces; every complete request in
the input is answered before one `send` of all the pieces (pipelining), and a
connection whose unsent output passes OUT_HIGH_WATER is not read again until the
client drains it (backpressure). Timeouts of one kind all have the same length, so
each kind is an insertion-ordered dict of fd -> deadline: O(1) update, and the sweep
stops at the first deadline still in the future.

The HTTP rules are the README's "HTTP behaviour" table; the grammar is RFC 9112.
`parse_request()` exposes the parser alone, for the differential tests against C.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import selectors
import socket
import time

from . import metrics, responses
from .config import ServerConfig
from .routes import DATA, HANDLER, JSON, METRICS, PROMETHEUS, STATIC, Request, Route, Routes, render_result

__all__ = ["Worker", "parse_request", "ParseError", "ENGINE_NAME", "ENGINE_READY"]

log = logging.getLogger("fastc1k")

ENGINE_NAME = "python"
ENGINE_READY = True

RECV_SIZE = 65536
ACCEPT_BATCH = 64
LINGER_SECONDS = 1.0            # read-and-discard window after an error response
EMFILE_PAUSE = 0.1              # stop accepting this long when out of fds
MAX_CHUNK_LINE = 4096           # chunk-size line with extensions
MAX_WAIT = 0.05                 # loop wakes at least this often (timers, stop)

# --- grammar (RFC 9110 5.6.2, RFC 9112 3, 5, 7.1) -------------------------------------
# token = 1*tchar ; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
# request-target: origin-form or absolute-form; any VCHAR or obs-text, no CTL or SP
TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
# HTTP-version = HTTP-name "/" DIGIT "." DIGIT
VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# field-line = field-name ":" OWS field-value OWS ; field-value = *field-content
# field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
FIELD_LINE = re.compile(rb"([" + _TCHAR + rb"]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*")
# chunk-size [ chunk-ext ] CRLF ; chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[\x09\x20-\x7e\x80-\xff]*)?)")
# what a chunk line may look like before its LF arrives: anything else is rejected at once
# (as the C engine's byte-wise decoder does), not when the line ends
CHUNK_LINE_START = re.compile(rb"[0-9A-Fa-f]{0,16}|[0-9A-Fa-f]{1,16}(?:[ \t]*|[ \t]*;[\x09\x20-\x7e\x80-\xff]*\r?|\r)")
CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
BARE_LF = re.compile(rb"(?<!\r)\n")

# connection states
HEAD, BODY_CL, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, CLOSING, LINGER = range(8)
KIND_STATUS = {v: k for k, v in metrics.PARSE_ERROR_STATUS.items()}
I_REQUESTS, I_BYTES_IN, I_BYTES_OUT, I_POOL_IN_USE, I_POOL_PEAK = (
    metrics.IDX[k] for k in ("requests", "bytes_in", "bytes_out", "pool_in_use", "pool_peak"))


class ParseError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Head:
    """A parsed request head."""
    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "length", "chunked", "expect_continue")

    def __init__(self) -> None:
        self.length = 0
        self.chunked = False
        self.expect_continue = False


def parse_head(buf: bytearray | bytes, pos: int, cfg: ServerConfig) -> tuple[Head | None, int]:
    """Parse one request head at buf[pos:]. Returns (head, end) or (None, pos) if incomplete.

    Raises ParseError(status) for anything the README table rejects.
    """
    n = len(buf)
    # RFC 9112 2.2: ignore at least one empty line before the request line
    while buf.startswith(b"\r\n", pos):
        pos += 2
    nl = buf.find(b"\n", pos)
    if nl < 0:
        partial = n - pos - (1 if n > pos and buf[n - 1] == 13 else 0)
        if partial > cfg.max_request_line:
            raise ParseError(414)
        return None, pos
    if nl == pos or buf[nl - 1] != 13:
        raise ParseError(400)  # bare LF
    if nl - 1 - pos > cfg.max_request_line:
        raise ParseError(414)
    parts = bytes(buf[pos:nl - 1]).split(b" ")
    if len(parts) != 3:
        raise ParseError(400)
    method, target, version = parts
    m = VERSION.fullmatch(version)
    if m is None:
        raise ParseError(400)
    ver = (m.group(1), m.group(2))
    if ver != (b"1", b"1") and ver != (b"1", b"0"):
        raise ParseError(505)
    if TOKEN.fullmatch(method) is None or TARGET.fullmatch(target) is None:
        raise ParseError(400)
    if target[:1] == b"/":
        path_q = target
    else:
        low = target[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            rest = target[target.index(b"//") + 2:]
            slash = rest.find(b"/")
            path_q = rest[slash:] if slash >= 0 else b"/"
            if slash == 0 or rest[:1] in (b"?", b""):
                raise ParseError(400)  # empty authority
        else:
            raise ParseError(400)  # authority-form, asterisk-form
    start = nl + 1  # header section begins here
    end = buf.find(b"\r\n\r\n", nl - 1)
    if end < 0:
        if n - start > cfg.max_header_bytes:
            raise ParseError(431)
        if BARE_LF.search(buf, start):
            raise ParseError(400)
        return None, pos
    end += 4
    if end - start > cfg.max_header_bytes:
        raise ParseError(431)

    h = Head()
    h.method = method.decode("ascii")
    h.target = target
    q = path_q.find(b"?")
    if q >= 0:
        h.path, h.query = path_q[:q].decode("latin-1"), path_q[q + 1:].decode("latin-1")
    else:
        h.path, h.query = path_q.decode("latin-1"), ""
    h.version = "HTTP/1.1" if ver[1] == b"1" else "HTTP/1.0"
    headers: list[tuple[bytes, bytes]] = []
    hosts = lengths = 0
    te: list[bytes] = []
    conn_tokens: list[bytes] = []
    if end - start > 2:
        lines = bytes(buf[start:end - 4]).split(b"\r\n")
        if len(lines) > cfg.max_headers:
            raise ParseError(431)
        for line in lines:
            fm = FIELD_LINE.fullmatch(line)
            if fm is None:
                raise ParseError(400)  # no colon, space before colon, obs-fold, CTL, bare CR/LF
            name = fm.group(1).lower()
            value = fm.group(2)
            headers.append((name, value))
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                lengths += 1
                if lengths > 1 or CONTENT_LENGTH.fullmatch(value) is None:
                    raise ParseError(400)
                h.length = int(value)
            elif name == b"transfer-encoding":
                te += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"connection":
                conn_tokens += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                h.expect_continue = value.lower() == b"100-continue"
    h.headers = headers
    if hosts > 1 or (hosts == 0 and h.version == "HTTP/1.1"):
        raise ParseError(400)
    if te:
        if lengths or h.version == "HTTP/1.0":
            raise ParseError(400)  # RFC 9112 6.1: smuggling vectors; reject (as nginx does)
        if b"" in te or te.count(b"chunked") > 1 or (b"chunked" in te and te[-1] != b"chunked"):
            raise ParseError(400)
        if te != [b"chunked"]:
            raise ParseError(501)
        h.chunked = True
    elif h.length > cfg.max_body:
        raise ParseError(413)
    if b"close" in conn_tokens:
        h.keep_alive = False
    else:
        h.keep_alive = h.version == "HTTP/1.1" or b"keep-alive" in conn_tokens
    return h, end


def parse_request(data: bytes, config: ServerConfig | None = None) -> tuple:
    """Parse one whole request from `data` (for differential tests and fuzzing).

    Returns (status, method, target, version, headers, keep_alive, body, consumed):
    status 0 = a complete request (body decoded), -1 = incomplete, else the error status.
    The C engine's `parse_request` returns the same tuple.
    """
    cfg = config or ServerConfig()
    try:
        head, pos = parse_head(data, 0, cfg)
        if head is None:
            return (-1, None, None, None, None, None, None, 0)
        if head.chunked:
            body, pos = _dechunk(data, pos, cfg)
            if body is None:
                return (-1, None, None, None, None, None, None, 0)
        else:
            if len(data) - pos < head.length:
                return (-1, None, None, None, None, None, None, 0)
            body = bytes(data[pos:pos + head.length])
            pos += head.length
    except ParseError as e:
        return (e.status, None, None, None, None, None, None, 0)
    return (0, head.method, head.target, head.version, head.headers, head.keep_alive, body, pos)


def _dechunk(data: bytes, pos: int, cfg: ServerConfig) -> tuple[bytes | None, int]:
    """Decode a whole chunked body at data[pos:] (used by parse_request)."""
    st = _ChunkState()
    out = bytearray()
    pos, done = st.feed(data, pos, cfg, out)
    return (bytes(out), pos) if done else (None, pos)


class _ChunkState:
    """Chunked body decoder, resumable across reads (RFC 9112 7.1)."""
    __slots__ = ("state", "remaining", "total", "trailer_bytes")

    def __init__(self) -> None:
        self.state = CHUNK_SIZE
        self.remaining = 0
        self.total = 0
        self.trailer_bytes = 0

    def feed(self, buf, pos: int, cfg: ServerConfig, out: bytearray | None) -> tuple[int, bool]:
        n = len(buf)
        while pos < n:
            st = self.state
            if st == CHUNK_SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if n - pos > MAX_CHUNK_LINE or CHUNK_LINE_START.fullmatch(bytes(buf[pos:n])) is None:
                        raise ParseError(400)
                    return pos, False
                if nl - pos > MAX_CHUNK_LINE:
                    raise ParseError(400)
                m = CHUNK_LINE.fullmatch(bytes(buf[pos:nl]))
                if m is None:
                    raise ParseError(400)
                size = int(m.group(1), 16)
                self.total += size
                if self.total > cfg.max_body:
                    raise ParseError(413)
                pos = nl + 2
                if size == 0:
                    self.state = TRAILER
                else:
                    self.state, self.remaining = CHUNK_DATA, size
            elif st == CHUNK_DATA:
                take = min(self.remaining, n - pos)
                if out is not None:
                    out += buf[pos:pos + take]
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = CHUNK_CRLF
            elif st == CHUNK_CRLF:
                if n - pos < 2:
                    if buf[pos] != 13:
                        raise ParseError(400)
                    return pos, False
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise ParseError(400)
                pos += 2
                self.state = CHUNK_SIZE
            else:  # TRAILER: field lines until an empty line, then done
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if self.trailer_bytes + n - pos > cfg.max_header_bytes:
                        raise ParseError(431)
                    return pos, False
                self.trailer_bytes += nl + 2 - pos
                if self.trailer_bytes > cfg.max_header_bytes:
                    raise ParseError(431)
                if nl == pos:
                    return nl + 2, True
                if FIELD_LINE.fullmatch(bytes(buf[pos:nl])) is None:
                    raise ParseError(400)
                pos = nl + 2
        return pos, False


class Conn:
    __slots__ = ("sock", "fd", "buf", "out", "out_len", "state", "head", "route", "body", "remaining",
                 "chunk", "keep_alive", "reading", "writing", "registered", "peer_closed", "counted", "holds")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out: list[bytes | memoryview] = []
        self.out_len = 0
        self.state = HEAD
        self.head: Head | None = None
        self.route: Route | None = None
        self.body: bytearray | None = None
        self.remaining = 0
        self.chunk: _ChunkState | None = None
        self.keep_alive = True
        self.reading = True
        self.writing = False
        self.registered = False
        self.peer_closed = False
        self.holds = False   # holds a "read buffer" (unfinished input), as pool_max counts them
        self.counted = True  # counts toward max_connections / active


class _Timers:
    """fd -> deadline for one timeout length; insertion order is deadline order."""
    __slots__ = ("length", "d")

    def __init__(self, length: float) -> None:
        self.length = length
        self.d: dict[int, float] = {}

    def set(self, fd: int, now: float, length: float | None = None) -> None:
        self.d.pop(fd, None)
        self.d[fd] = now + (self.length if length is None else length)

    def clear(self, fd: int) -> None:
        self.d.pop(fd, None)

    def expired(self, now: float) -> list[int]:
        out = []
        for fd, dl in self.d.items():
            if dl > now:
                break
            out.append(fd)
        return out


class Worker:
    """One worker loop over a listening socket. See fastc1k.server.Server for the API."""

    def __init__(self, sock: socket.socket, config: ServerConfig, routes: Routes,
                 metrics_area: metrics.MetricsArea | None = None, slot: int = 0) -> None:
        self.lsock = sock
        self.cfg = config
        self.routes = routes
        self.metrics_area = metrics_area or metrics.MetricsArea(1)
        self.c = self.metrics_area.slot(slot)
        self.conns: dict[int, Conn] = {}
        self.active = 0
        self.pool_in_use = 0  # connections holding unfinished input: the C engine's pool, counted
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = 0  # 0 run, 1 graceful, 2 now
        self.out_high = 4 * config.buffer_size
        self.t_header = _Timers(config.header_timeout)   # request head and body deadlines
        self.t_idle = _Timers(config.idle_timeout)
        self.t_send = _Timers(config.send_timeout)
        self.t_linger = _Timers(LINGER_SECONDS)
        self.dates = responses.DateCache()
        self.data_id = 0
        self.pid = os.getpid()
        self._prebuild()

    # --- responses ------------------------------------------------------------------
    def _prebuild(self) -> None:
        self.err_head = {s: responses.error_head(s) for s in responses.ERROR_BODIES}
        self.err_tail = {s: responses.error_tail(s) for s in responses.ERROR_BODIES}

    def _conn_line(self, conn: Conn, version: str) -> bytes:
        if not conn.keep_alive:
            return responses.CONN_CLOSE
        return responses.CONN_KEEP_ALIVE if version == "HTTP/1.0" else b""

    def _count_status(self, status: int) -> None:
        self.c[metrics.status_index(status)] += 1

    def _queue_error(self, conn: Conn, status: int, head_only: bool = False, allow: bytes | None = None) -> None:
        """Queue an engine error response. 404/405 keep the connection; others close it."""
        if status not in responses.KEEPS_CONNECTION:
            conn.keep_alive = False
        version = conn.head.version if conn.head is not None else "HTTP/1.1"
        head = responses.error_head(status, allow) if allow else self.err_head[status]
        tail = b"\r\n" if head_only else self.err_tail[status]
        self._queue(conn, (head, self.dates.get(), self._conn_line(conn, version), tail))
        self._count_status(status)
        if not conn.keep_alive:
            conn.state = CLOSING

    def _queue(self, conn: Conn, pieces) -> None:
        for p in pieces:
            if p:
                conn.out.append(p)
                conn.out_len += len(p)

    def _respond(self, conn: Conn) -> None:
        """Answer the complete request held in conn.head (+ conn.body)."""
        head, route = conn.head, conn.route
        head_only = head.method == "HEAD"
        conn.keep_alive = conn.keep_alive and head.keep_alive and self._stop == 0
        if route is None:
            self._queue_error(conn, 404, head_only)
        elif head.method not in route.methods:
            self._queue_error(conn, 405, head_only, route.allow)
        else:
            kind = route.kind
            if kind == STATIC:
                self._queue(conn, (route.head, self.dates.get(), self._conn_line(conn, head.version),
                                   b"\r\n" if head_only else b"\r\n" + route.body))
                self._count_status(route.status)
            else:
                try:
                    status, ctype, extra, body = self._dynamic(conn, route)
                    rhead = responses.build_head(status, ctype, len(body), extra)  # may reject bad headers
                except Exception:
                    log.exception("handler for %s %s failed; answering 500", head.method, head.path)
                    self.c[metrics.IDX["handler_errors"]] += 1
                    self._queue_error(conn, 500, head_only)
                    return
                self._queue(conn, (rhead, self.dates.get(), self._conn_line(conn, head.version), b"\r\n",
                                   b"" if head_only else body))
                self._count_status(status)
        if not conn.keep_alive:
            conn.state = CLOSING

    def _dynamic(self, conn: Conn, route: Route) -> tuple[int, bytes, list, bytes]:
        if route.kind == DATA:
            self.data_id += 1
            body = b'{"id":%d,"timestamp":%d,"worker":%d}' % (self.data_id, time.time_ns() // 1_000_000,
                                                               self.pid)
            return 200, JSON, [], body
        if route.kind == METRICS:
            return 200, PROMETHEUS, [], metrics.render_prometheus(self.metrics_area.slots(),
                                                                  metrics.process_series())
        head = conn.head
        req = Request(head.method, head.path, head.query, head.headers,
                      bytes(conn.body) if conn.body is not None else b"", head.version)
        return render_result(route, route.handler(req))

    # --- input ------------------------------------------------------------------------
    def _process(self, conn: Conn, now: float) -> None:
        """Consume every complete request in conn.buf, queueing responses."""
        buf, cfg, pos = conn.buf, self.cfg, 0
        c = self.c
        try:
            while pos < len(buf) and conn.state < CLOSING:
                if conn.out_len > self.out_high:
                    break  # backpressure: leave the rest in the buffer
                st = conn.state
                if st == HEAD:
                    conn.head = conn.route = conn.body = None
                    head, end = parse_head(buf, pos, cfg)
                    if head is None:
                        if pos < len(buf) and conn.fd not in self.t_header.d:
                            self.t_header.set(conn.fd, now)  # first byte of a request
                        pos = end
                        break
                    pos = end
                    c[I_REQUESTS] += 1
                    conn.head = head
                    conn.route = route = self.routes.get(head.path)
                    want = route is not None and route.kind == HANDLER and route.wants_body
                    conn.body = bytearray() if want and (head.length or head.chunked) else None
                    if head.chunked or head.length:
                        if head.expect_continue and head.version == "HTTP/1.1" and len(buf) - pos < 1:
                            self._queue(conn, (b"HTTP/1.1 100 Continue\r\n\r\n",))
                        self.t_header.set(conn.fd, now)  # body deadline
                        if head.chunked:
                            conn.state, conn.chunk = CHUNK_SIZE, _ChunkState()
                        else:
                            conn.state, conn.remaining = BODY_CL, head.length
                        continue
                    self.t_header.clear(conn.fd)
                    self._respond(conn)
                elif st == BODY_CL:
                    take = min(conn.remaining, len(buf) - pos)
                    if conn.body is not None:
                        conn.body += buf[pos:pos + take]
                    pos += take
                    conn.remaining -= take
                    if conn.remaining == 0:
                        self.t_header.clear(conn.fd)
                        conn.state = HEAD
                        self._respond(conn)
                else:  # chunked
                    pos, done = conn.chunk.feed(buf, pos, cfg, conn.body)
                    if done:
                        conn.chunk = None
                        self.t_header.clear(conn.fd)
                        conn.state = HEAD
                        self._respond(conn)
                    else:
                        break
        except ParseError as e:
            kind = KIND_STATUS.get(e.status, "bad_request")
            c[metrics.IDX[f'parse_errors{{kind="{kind}"}}']] += 1
            if conn.state == HEAD:
                c[metrics.IDX["requests"]] += 1
            self.t_header.clear(conn.fd)
            self._queue_error(conn, e.status, conn.head is not None and conn.state != HEAD
                              and conn.head.method == "HEAD")
            pos = len(buf)
        if conn.state >= CLOSING:
            pos = len(buf)
        if pos:
            del buf[:pos]

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        c = self.c
        idx = metrics.IDX
        for k in range(len(c)):
            c[k] = 0
        c[idx["pid"]] = self.pid
        c[idx["started_ms"]] = time.time_ns() // 1_000_000
        c[idx["engine"]] = metrics.ENGINE_PY
        c[idx["pool_size"]] = self.cfg.pool_size
        sel = self.sel
        sel.register(self.lsock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        accepting = True
        paused_until = 0.0
        graceful_deadline = None
        lag_base = idx['loop_lag_bucket{le_us="1"}']
        i_waits, i_events, i_lagmax = idx["loop_waits"], idx["loop_events"], idx["loop_lag_max_us"]
        lfd = self.lsock.fileno()
        try:
            while True:
                events = sel.select(MAX_WAIT)
                t0 = time.monotonic()
                c[i_waits] += 1
                c[i_events] += len(events)
                for key, mask in events:
                    conn = key.data
                    if conn is None:
                        if key.fd == lfd:
                            if accepting and not self._accept(t0):
                                sel.unregister(self.lsock)
                                accepting, paused_until = False, t0 + EMFILE_PAUSE
                        else:
                            self._drain_wake()
                        continue
                    if conn.fd not in self.conns:
                        continue  # closed earlier in this batch
                    if mask & selectors.EVENT_WRITE:
                        self._flush(conn, t0)
                    if mask & selectors.EVENT_READ and conn.fd in self.conns:
                        self._on_read(conn, t0)
                self._sweep(t0)
                if not accepting and self._stop == 0 and t0 >= paused_until:
                    sel.register(self.lsock, selectors.EVENT_READ, None)
                    accepting = True
                if self._stop:
                    if accepting:
                        sel.unregister(self.lsock)
                        accepting = False
                    if self._stop == 2:
                        break
                    if graceful_deadline is None:
                        graceful_deadline = t0 + self.cfg.graceful_timeout
                        # Idle connections get a short grace: a request that arrives (or sits
                        # unread in the kernel) is answered with Connection: close, not reset.
                        idle_close_at = t0 + min(0.5, self.cfg.graceful_timeout / 2)
                        for conn in list(self.conns.values()):
                            conn.keep_alive = False
                    if t0 >= idle_close_at:
                        for conn in list(self.conns.values()):
                            if conn.state == HEAD and not conn.buf and not conn.out:
                                try:
                                    waiting = conn.sock.recv(1, socket.MSG_PEEK)
                                except OSError:
                                    waiting = b""
                                if not waiting:
                                    self._close(conn)
                    if not self.conns or t0 >= graceful_deadline:
                        break
                lag = int((time.monotonic() - t0) * 1e6)
                c[lag_base + min(lag.bit_length(), metrics.LAG_BUCKETS - 1)] += 1
                if lag > c[i_lagmax]:
                    c[i_lagmax] = lag
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            for fd in (self.lsock, self._wake_r):
                try:
                    sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
            c[idx["active"]] = 0

    def stop(self, graceful: bool = True) -> None:
        self._stop = max(self._stop, 1 if graceful else 2)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def counters(self) -> dict[str, int]:
        return {name: self.c[i] for name, i in metrics.IDX.items()}

    def close(self) -> None:
        """Release the selector and the wake pipe (after run() has returned)."""
        if self._wake_w >= 0:
            self.sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:
            pass

    def _accept(self, now: float) -> bool:
        """Accept a batch. False when out of fds (the caller pauses accepting)."""
        c, idx = self.c, metrics.IDX
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    c[idx["accept_paused"]] += 1
                    return False
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[conn.fd] = conn
            c[idx["accepted"]] += 1
            if self.active >= self.cfg.max_connections:
                conn.counted = False
                c[idx["rejected_max_connections"]] += 1
                self._update(conn)
                self._queue_error(conn, 503)
                self._flush(conn, now)
                continue
            self.active += 1
            c[idx["active"]] = self.active
            self._update(conn)
            self.t_header.set(conn.fd, now)  # a new connection must send its request in time
        return True

    def _hold(self, conn: Conn) -> None:
        """Account conn's unfinished input against the pool (pool_in_use, pool_peak)."""
        holds = bool(conn.buf) and conn.fd in self.conns
        if holds != conn.holds:
            conn.holds = holds
            self.pool_in_use += 1 if holds else -1
            c = self.c
            c[I_POOL_IN_USE] = self.pool_in_use
            if self.pool_in_use > c[I_POOL_PEAK]:
                c[I_POOL_PEAK] = self.pool_in_use

    def _on_read(self, conn: Conn, now: float) -> None:
        if not conn.holds and self.pool_in_use >= self.cfg.pool_max and conn.state < CLOSING:
            # no read buffer left to give (the C engine's pool at pool_max): shed this one
            self.c[metrics.IDX["pool_exhausted"]] += 1
            self._queue_error(conn, 503)
            self._flush(conn, now)
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == LINGER:
            if not data:
                self._close(conn)
            return
        if not data:
            conn.peer_closed = True
            if not conn.out:
                self._close(conn)
            else:
                conn.keep_alive = False
                conn.reading = False
                self._update(conn)
            return
        self.c[I_BYTES_IN] += len(data)
        if conn.state == CLOSING:
            return  # input after a closing response is discarded
        self.t_idle.clear(conn.fd)
        conn.buf += data
        self._process(conn, now)
        self._hold(conn)
        if conn.out:
            self._flush(conn, now)
        elif conn.state == HEAD and not conn.buf:
            self.t_header.clear(conn.fd)
            self.t_idle.set(conn.fd, now)

    def _flush(self, conn: Conn, now: float) -> None:
        """Send queued output, then answer requests left behind by backpressure; arrange
        EPOLLOUT (and stop reading past OUT_HIGH_WATER) when a send would block."""
        while conn.out:
            data = conn.out[0] if len(conn.out) == 1 else b"".join(conn.out)
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            self.c[I_BYTES_OUT] += sent
            if sent < len(data):
                rest = memoryview(data)[sent:]
                conn.out, conn.out_len = [rest], len(rest)
                if sent or conn.fd not in self.t_send.d:
                    self.t_send.set(conn.fd, now)  # the send deadline restarts on progress
                conn.writing = True
                if conn.out_len > self.out_high:
                    conn.reading = False
                self._update(conn)
                return
            conn.out, conn.out_len = [], 0
            self.t_send.clear(conn.fd)
            if conn.buf and conn.state < CLOSING:
                self._process(conn, now)
                self._hold(conn)
        if conn.state == CLOSING or conn.peer_closed:
            # done with this connection. (Not on self._stop alone: the response just sent may
            # have promised keep-alive; a stopping loop closes idle connections after a grace.)
            self._linger(conn, now)
            return
        if conn.writing or not conn.reading:
            conn.writing, conn.reading = False, True
            self._update(conn)
        if conn.state == HEAD and not conn.buf:
            self.t_header.clear(conn.fd)
            self.t_idle.set(conn.fd, now)

    def _linger(self, conn: Conn, now: float) -> None:
        """Lingering close: shut our side, read and discard until EOF or LINGER_SECONDS."""
        if conn.peer_closed:
            self._close(conn)
            return
        conn.state = LINGER
        for t in (self.t_header, self.t_idle, self.t_send):
            t.clear(conn.fd)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        if not conn.reading or conn.writing:
            conn.reading, conn.writing = True, False
            self._update(conn)
        self.t_linger.set(conn.fd, now)

    def _update(self, conn: Conn) -> None:
        """Make the selector's interest match conn.reading / conn.writing."""
        ev = (selectors.EVENT_READ if conn.reading else 0) | (selectors.EVENT_WRITE if conn.writing else 0)
        if ev and conn.registered:
            self.sel.modify(conn.sock, ev, conn)
        elif ev:
            self.sel.register(conn.sock, ev, conn)
            conn.registered = True
        elif conn.registered:
            self.sel.unregister(conn.sock)
            conn.registered = False

    def _sweep(self, now: float) -> None:
        c, idx = self.c, metrics.IDX
        for fd in self.t_header.expired(now):
            conn = self.conns.get(fd)
            self.t_header.clear(fd)
            if conn is None:
                continue
            c[idx['timeouts{kind="header"}']] += 1
            if conn.buf or conn.state != HEAD:
                self._queue_error(conn, 408)
                self._flush(conn, now)
            else:  # a new connection that never sent a byte: close quietly
                self._close(conn)
        for fd in self.t_idle.expired(now):
            self.t_idle.clear(fd)
            conn = self.conns.get(fd)
            if conn is not None:
                c[idx['timeouts{kind="idle"}']] += 1
                self._close(conn)
        for fd in self.t_send.expired(now):
            self.t_send.clear(fd)
            conn = self.conns.get(fd)
            if conn is not None:
                c[idx['timeouts{kind="send"}']] += 1
                self._close(conn)
        for fd in self.t_linger.expired(now):
            self.t_linger.clear(fd)
            conn = self.conns.get(fd)
            if conn is not None:
                self._close(conn)

    def _close(self, conn: Conn) -> None:
        fd = conn.fd
        if self.conns.pop(fd, None) is None:
            return
        for t in (self.t_header, self.t_idle, self.t_send, self.t_linger):
            t.clear(fd)
        if conn.registered:
            self.sel.unregister(conn.sock)
        conn.sock.close()
        self._hold(conn)
        c, idx = self.c, metrics.IDX
        c[idx["closed"]] += 1
        if conn.counted:
            self.active -= 1
            c[idx["active"]] = self.active
