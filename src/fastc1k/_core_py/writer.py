"""The writer: responses and output, as the "writer" section of _core.pyx (the same method
names). Each response is queued as pieces (head, Date, Connection, tail) in self.iov;
one send per batch of pipelined answers. A send that does not take everything keeps the
unsent tail in conn.out and waits for the socket to drain with reading paused: the
backpressure rule, the same in both engines (see _flush)."""
from __future__ import annotations

import logging
import selectors
import socket
import time

from .. import metrics, responses, wsgi
from ..routes import DATA, METRICS, PROMETHEUS, STATIC, render_result
from .consts import (F_CLEAN_CLOSE, F_CLOSING, F_HEAD, F_KEEP, F_PAUSED, F_PENDING_PY, F_STREAM, F_V10, IOV_CAP, R_404,
                     R_405, R_OPTIONS, R_OPTIONS_ALL, R_WSGI, S_LINGER, T_LINGER, T_SEND)
from .consts import I_BYTES_OUT, I_HANDLER_ERRORS, I_RESP_200
from .timers import t_clear, t_set

log = logging.getLogger("fastc1k")

CRLF = b"\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


class Writer:
    """The Worker's output half (a mixin: the Worker in loop.py holds the state)."""

    def _build_errors(self) -> None:
        self.err_head = {s: responses.error_head(s) for s in responses.ERROR_BODIES}
        self.err_tail = {s: responses.error_tail(s) for s in responses.ERROR_BODIES}

    # --- queueing -------------------------------------------------------------------
    def _room(self, c) -> int:
        """Make room for one more response in the iov (flushing if full).
        -1: the connection was closed; else the response can be queued."""
        if len(self.iov) + 8 > IOV_CAP:
            return -1 if self._flush(c) < 0 else 0
        return 0

    def _add(self, p: bytes) -> None:
        if p:
            self.iov.append(p)

    def _add_conn(self, c) -> None:
        if not c.flags & F_KEEP:
            self._add(responses.CONN_CLOSE)
        elif c.flags & F_V10:
            self._add(responses.CONN_KEEP_ALIVE)

    def _count_status(self, status: int) -> None:
        self.m[metrics.status_index(status)] += 1

    # --- responses ------------------------------------------------------------------
    def _respond(self, c) -> int:
        """Queue the answer to the request just completed (head in flags/resp, body read)."""
        head_only = bool(c.flags & F_HEAD)
        if self.draining:
            c.flags &= ~F_KEEP
        if c.resp == R_404:
            return self._error(c, 404, head_only, -1)
        if c.resp == R_WSGI:
            rc = self._respond_wsgi(c)
            if rc == 0 and not c.flags & (F_KEEP | F_CLOSING):
                c.flags |= F_CLOSING | F_CLEAN_CLOSE
            return rc
        if c.resp == R_OPTIONS_ALL or not c.resp & R_405 and c.resp & R_OPTIONS:
            rc = self._room(c)
            if rc != 0:
                return rc
            self._add(self.opt_head if c.resp == R_OPTIONS_ALL else self._hopt[c.resp & ~R_OPTIONS])
            self._add(self.date)
            self._add_conn(c)
            self._add(CRLF)
            self.m[I_RESP_200] += 1
            if not c.flags & F_KEEP:
                c.flags |= F_CLOSING | F_CLEAN_CLOSE
            return 0
        if c.resp & R_405:
            return self._error(c, 405, head_only, c.resp & ~R_405)
        r = self._routes_py[c.resp]
        if r.kind == STATIC:
            rc = self._room(c)
            if rc != 0:
                return rc
            self._add(r.head)
            self._add(self.date)
            self._add_conn(c)
            self._add(CRLF if head_only else self._tails[c.resp])
            self._count_status(r.status)
        elif r.kind == DATA:
            rc = self._respond_data(c)
            if rc != 0:
                return rc
        else:
            rc = self._respond_py(c, c.resp)
            if rc != 0:
                return rc
        if not c.flags & F_KEEP:
            c.flags |= F_CLOSING | F_CLEAN_CLOSE
        return 0

    def _respond_data(self, c) -> int:
        """/api/data: {"id":<n>,"timestamp":<unix ms>,"worker":<pid>}."""
        rc = self._room(c)
        if rc != 0:
            return rc
        self.data_id += 1
        body = b'{"id":%d,"timestamp":%d,"worker":%d}' % (self.data_id, time.time_ns() // 1_000_000, self.pid)
        self._add(self.data_head + b"%d\r\n" % len(body))
        self._add(self.date)
        self._add_conn(c)
        self._add(CRLF)
        if not c.flags & F_HEAD:
            self._add(body)
        self.m[I_RESP_200] += 1
        return 0

    def _respond_py(self, c, ri: int) -> int:
        """Handler and /metrics answers."""
        head_only = bool(c.flags & F_HEAD)
        route = self._routes_py[ri]
        try:
            if route.kind == METRICS:
                body = metrics.render_prometheus(self.metrics_area.slots(), metrics.process_series())
                head = responses.build_head(200, PROMETHEUS, len(body))
                status = 200
            else:
                req, c.req = c.req, None
                c.flags &= ~F_PENDING_PY
                if req is None:
                    raise RuntimeError("handler request lost")
                if c.body is not None:
                    req.body, c.body = bytes(c.body), None
                status, ctype, extra, body = render_result(route, route.handler(req))
                if len(body) > self.max_answer:
                    raise ValueError(f"a handler answer of {len(body)} bytes is over {self.max_answer}")
                head = responses.build_head(status, ctype, len(body), extra)  # may reject bad headers
        except Exception:
            log.exception("handler for %s failed; answering 500", route.path)
            self.m[I_HANDLER_ERRORS] += 1
            return self._error(c, 500, head_only, -1)
        rc = self._room(c)
        if rc != 0:
            return rc
        self._add(head)
        self._add(self.date)
        self._add_conn(c)
        self._add(CRLF)
        if not head_only:
            self._add(body)
        self._count_status(status)
        if len(self.iov) + 8 > IOV_CAP // 2 or len(body) > 65536:
            return -1 if self._flush(c) < 0 else 0  # do not pile up large pieces
        return 0

    def _respond_wsgi(self, c) -> int:
        """Call the app (fastc1k.wsgi.Exchange); queue its head and first body pieces."""
        head_only = bool(c.flags & F_HEAD)
        env, c.req = c.req, None
        c.flags &= ~F_PENDING_PY
        wsgi.attach_body(env, bytes(c.body) if c.body is not None else b"")
        c.body = None
        ex = wsgi.Exchange(self.wsgi_app, env, head_only, not c.flags & F_V10, bool(c.flags & F_KEEP))
        ex.flow(c.fd, self._wsgi_out, self.cfg.send_timeout, self.m, I_BYTES_OUT, self._wake_r, self._wsgi_grace)
        if not ex.run():
            if ex.sent:  # write() sent the head: no answer can follow
                self._close(c)
                return -1
            if ex.status == 500:
                self.m[I_HANDLER_ERRORS] += 1
            return self._error(c, ex.status, head_only, -1)
        if not ex.keep_alive:
            c.flags &= ~F_KEEP
        if not c.flags & F_KEEP and ex.input.__class__ is wsgi.ContinueInput:
            c.flags |= F_CLOSING  # its body may still come: linger on it (as the C engine does)
        if ex.sent:  # write() sent the head and the body so far: the rest streams
            self._count_status(ex.status)
            if not ex.done:
                c.ex = ex
                c.flags |= F_STREAM
            return 0
        rc = self._room(c)
        if rc != 0:
            ex.close()
            return rc
        self._add(ex.head)
        if not ex.has_date:
            self._add(self.date)
        self._add_conn(c)
        self._add(CRLF)
        self.iov += ex.body
        self._count_status(ex.status)
        if not ex.done:
            c.ex = ex
            c.flags |= F_STREAM
        elif len(self.iov) + 8 > IOV_CAP // 2:
            return -1 if self._flush(c) < 0 else 0
        return 0

    def _wsgi_out(self, fd: int) -> tuple[bytes, bytes]:
        """wsgi.Exchange.flow's hook: write() sends on fd itself from now on; this connection's
        queued output (earlier pipelined responses) is handed to it, in order, and dropped here."""
        c = self.conns[fd]
        queued = bytes(c.out or b"") + b"".join(self.iov)
        self.iov.clear()
        if c.out_len:
            c.out, c.out_len = None, 0
            self._interest(c, False)
            t_clear(self.tl, c)
        return queued, self.date

    def _wsgi_grace(self) -> float | None:
        """wsgi.Exchange.flow's: seconds a write() may still wait once the worker is stopping."""
        return None if self.stop_mode == 0 else 0.0 if self.stop_mode == 2 else self.cfg.graceful_timeout

    def _pump(self, c) -> int:
        """Stream more of c's WSGI response. 0 done, 1 the socket is full (watched for
        writing), -1 closed (a failed or cut-short response)."""
        before = self.m[I_BYTES_OUT]
        r = c.ex.pump(c.fd, self.m, I_BYTES_OUT)
        if r == wsgi.BLOCKED:
            self._interest(c, True)
            if self.m[I_BYTES_OUT] != before or c.tkind != T_SEND:
                t_set(self.tl, c, T_SEND, self.now)  # progress restarts the send timer
            return 1
        c.ex = None
        c.flags &= ~F_STREAM
        if r == wsgi.ABORT:
            self._close(c)
            return -1
        if c.tkind == T_SEND:
            t_clear(self.tl, c)
        return 0

    def _error(self, c, status: int, head_only: bool, ri: int) -> int:
        """Queue an engine error response. 404/405 keep the connection; others close it."""
        if status not in responses.KEEPS_CONNECTION:
            c.flags &= ~F_KEEP
        rc = self._room(c)
        if rc != 0:
            return rc
        self._add(self._h405[ri] if ri >= 0 else self.err_head[status])
        self._add(self.date)
        self._add_conn(c)
        self._add(CRLF if head_only else self.err_tail[status])
        self._count_status(status)
        if not c.flags & F_KEEP:
            c.flags |= F_CLOSING
            if status == 404 or status == 405:  # answers to a whole request, body read
                c.flags |= F_CLEAN_CLOSE
        return 0

    # --- output ---------------------------------------------------------------------
    def _flush(self, c) -> int:
        """One send of what was queued. 0: all sent; 1: the unsent tail is kept and the
        socket watched for writing only (reading stops: backpressure); -1: closed."""
        iov = self.iov
        if not iov:
            return 1 if c.out_len else 0
        data = iov[0] if len(iov) == 1 else b"".join(iov)
        iov.clear()
        if c.out_len:
            # output is already waiting for the socket to drain: append behind it, in order
            c.out = bytes(c.out) + data
            c.out_len = len(c.out)
            return 1
        try:
            w = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            w = 0
        except OSError:
            self._close(c)
            return -1
        self.m[I_BYTES_OUT] += w
        if w == len(data):
            return 0
        c.out = memoryview(data)[w:]
        c.out_len = len(data) - w
        self._interest(c, True)
        t_set(self.tl, c, T_SEND, self.now)
        return 1

    def _on_write(self, c) -> None:
        """The socket drained: send more of the kept tail (then of a WSGI stream); once all
        is sent, read again."""
        if c.out_len:
            try:
                w = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(c)
                return
            self.m[I_BYTES_OUT] += w
            c.out = c.out[w:]
            c.out_len -= w
            if c.out_len:
                if w:
                    t_set(self.tl, c, T_SEND, self.now)  # progress restarts the send timer
                return
            c.out = None
            t_clear(self.tl, c)
        if c.flags & F_STREAM and self._pump(c) != 0:
            return  # still streaming (still watched for writing), or closed
        if c.flags & F_CLOSING:
            self._linger(c)
            return
        self._interest(c, False)
        if c.buf:
            self._process(c)  # requests left behind by the backpressure
        else:
            self._after(c, False)

    def _interest(self, c, out: bool) -> None:
        """Read, or wait for the client to drain our output (writing only)."""
        if out == bool(c.flags & F_PAUSED):
            return
        if c.fd != self.unwatched:  # (else _admit registers it with these events)
            self.sel.modify(c.sock, selectors.EVENT_WRITE if out else selectors.EVENT_READ)
        if out:
            c.flags |= F_PAUSED
        else:
            c.flags &= ~F_PAUSED

    def _linger(self, c) -> None:
        """Lingering close: shut our side, read and discard until EOF or LINGER_MS, so
        the client reads our last response instead of a reset. Not needed (close now, as
        nginx does) when the client's last request was answered whole and nothing followed
        it: there is no unread input to turn the close into a reset."""
        if c.flags & F_CLEAN_CLOSE and not c.buf:
            self._close(c)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(c)
            return
        self._buf_put(c)
        c.req = c.body = None
        c.flags &= ~(F_PENDING_PY | F_CLOSING)
        c.state = S_LINGER
        self._interest(c, False)
        t_set(self.tl, c, T_LINGER, self.now)


__all__ = ["Writer", "CRLF", "CONTINUE_100"]
