"""The loop: one worker's event loop, as _core.pyx's (the same method names, states and
flags). A `selectors` (epoll; kqueue on macOS) loop per worker, not asyncio, so that it is
the same design as the C engine and a fair baseline. Events name a bare fd, looked up in
self.conns (see docs/ENGINES.md "Events carry a bare fd")."""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import time

from .. import metrics, responses, wsgi
from ..config import ServerConfig
from ..routes import HANDLER, JSON, Request, Routes, options_allow
from .consts import (MAX_ANSWER, MAX_ROUTES, R_OPTIONS, R_OPTIONS_ALL, ACCEPT_BATCH, EMFILE_PAUSE_MS, F_CHUNKED,
                     F_CLEAN_CLOSE, F_CLOSING, F_FRESH, F_HEAD, F_KEEP,
                     F_PAUSED, F_PENDING_PY, F_REJECTED, F_STREAM, F_V10, F_WANT_BODY, LINGER_MS,
                     MAX_WAIT_MS, R_404, R_405, R_WSGI, S_BODY, S_FREE, S_HEAD, S_LINGER, SCRATCH_SIZE, T_HEADER,
                     T_IDLE, T_KINDS, T_LINGER, T_SEND)
from .consts import (I_HEAD_SCANNED, I_ACCEPT_PAUSED, I_ACCEPT_UNWATCHED, I_ACCEPTED, I_LISTEN_REARM_FAILED, I_ACTIVE, I_BYTES_IN, I_CLOSED, I_ENGINE, I_LAG_BUCKET0,
                     I_LAG_MAX, I_LOOP_EVENTS, I_LOOP_WAITS, I_PARSE_ERROR, I_PE_BAD_REQUEST, I_PID,
                     I_POOL_EXHAUSTED, I_POOL_IN_USE, I_POOL_PEAK, I_POOL_SIZE, I_REJECTED, I_REQUESTS,
                     I_STARTED_MS, I_TO_HEADER, I_TO_IDLE, I_TO_SEND)
from .parser import ChunkDecoder, Head, HeadScan, ParseError, head_next
from .pool import Pool
from .timers import TList, t_clear, t_due, t_expired, t_set
from .writer import CONTINUE_100, Writer

__all__ = ["Worker", "Conn"]

log = logging.getLogger("fastc1k")


class Conn:
    """One client connection (core/types.pxi Conn, plus what C keeps elsewhere)."""
    __slots__ = ("sock", "fd", "buf", "out", "out_len", "body_left", "flags", "resp", "state",
                 "tkind", "deadline", "chunk", "req", "body", "ex", "peer", "scan")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf: bytearray | None = None   # pool buffer while an unfinished request is held
        self.out: bytes | memoryview | None = None  # unsent tail of the output
        self.out_len = 0
        self.body_left = 0                  # Content-Length left
        self.flags = 0                      # F_*
        self.resp = 0                       # route index, R_404 or R_405|index
        self.state = S_HEAD                 # S_*
        self.tkind = 0                      # T_*
        self.deadline = 0
        self.chunk: ChunkDecoder | None = None
        self.scan: HeadScan | None = None   # an unfinished head's scanner state (C: F_SCAN)
        self.req: Request | None = None     # a handler's request (C: Worker._pending)
        self.body: bytearray | None = None  # its body, when the handler wants it
        self.ex: wsgi.Exchange | None = None  # a WSGI response still streaming (C: Worker._streams)
        self.peer: tuple[str, str] | None = None  # (REMOTE_ADDR, REMOTE_PORT) once a WSGI request asked


class Worker(Writer):
    """One worker loop over a listening socket. See fastc1k.server.Server for the API."""

    def __init__(self, sock: socket.socket, config: ServerConfig, routes: Routes,
                 metrics_area: metrics.MetricsArea | None = None, slot: int = 0) -> None:
        self.sock = sock
        self.lfd = sock.fileno()
        try:
            self.read_first = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0  # as C
        except OSError:
            self.read_first = False
        self.unwatched = -1  # the fd _admit reads before it joins the event set
        self.cfg = config
        self.routes = routes
        self.metrics_area = metrics_area or metrics.MetricsArea(1)
        self.m = self.metrics_area.slot(slot)
        self.conns: dict[int, Conn] = {}
        self.served = 0     # connections counted toward max_connections
        self.nopen = 0      # every open client connection
        self.tl = [TList(max(1, int(t * 1000 + 0.5))) for t in (
            0.0, config.header_timeout, config.idle_timeout, config.send_timeout, LINGER_MS / 1000.0)]
        assert len(self.tl) == T_KINDS
        self.pool = Pool(config.buffer_size, config.pool_size, config.pool_max)
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.stop_mode = 0  # 0 run, 1 graceful, 2 now (set by stop())
        self.running = self.accepting = self.draining = self.quit = False
        self.iov: list[bytes] = []
        self.dates = responses.DateCache()
        self.date = b""
        self.now = 0
        self.data_id = 0
        self.pid = os.getpid()
        self.max_answer = MAX_ANSWER  # a handler answer's bytes at most (tests lower it)
        self._build_routes(routes)
        self._build_errors()
        self.wsgi_app = routes.wsgi
        if self.wsgi_app is not None:
            host, port = sock.getsockname()[:2]
            self.wsgi_base = wsgi.base_environ(host, port, config.workers > 1)

    def _build_routes(self, routes: Routes) -> None:
        self._routes_py = list(routes)
        self._index = {r.path: i for i, r in enumerate(self._routes_py)}
        self._tails = [b"\r\n" + r.body for r in self._routes_py]
        if len(self._routes_py) >= MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES - 1} routes, got {len(self._routes_py)}")
        self._h405 = [responses.error_head(405, r.allow) for r in self._routes_py]
        self._hopt = [responses.options_head(options_allow(r.methods)) for r in self._routes_py]
        self.opt_head = responses.options_head(routes.server_allow())
        self.data_head = responses.build_head(200, JSON, 0)[:-3]  # minus "0\r\n"

    # --- Python API -----------------------------------------------------------------
    def run(self) -> None:
        """Serve until stop(); returns after the loop ended and every connection closed."""
        if self.running:
            raise RuntimeError("Worker.run() is already running")
        if self._wake_w < 0:
            raise RuntimeError("Worker.run() after close()")
        m = self.m
        for i in range(len(m)):
            m[i] = 0
        m[I_PID] = self.pid
        m[I_STARTED_MS] = time.time_ns() // 1_000_000
        m[I_ENGINE] = metrics.ENGINE_PY
        m[I_POOL_SIZE] = self.pool.total
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self.accepting = True
        self.draining = self.quit = False
        self.t_base_ns = time.monotonic_ns()
        self._tick()
        self.running = True
        try:
            self._loop()
        finally:
            for c in list(self.conns.values()):
                self._close(c)
            for f in (self.sock, self._wake_r):
                try:
                    self.sel.unregister(f)
                except (KeyError, ValueError):
                    pass
            m[I_ACTIVE] = 0
            self.running = False

    def stop(self, graceful: bool = True) -> None:
        """Ask the loop to return (thread- and signal-safe: one pipe write)."""
        self.stop_mode = max(self.stop_mode, 1 if graceful else 2)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def close(self) -> None:
        """Release the selector and the wake pipe (after run())."""
        if self.running:
            raise RuntimeError("Worker.close() while run() is running; stop() it first")
        if self._wake_w >= 0:
            self.sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def counters(self) -> dict[str, int]:
        return {name: self.m[i] for name, i in metrics.IDX.items()}

    @property
    def pool_stats(self) -> tuple[int, int, int, int]:
        """(buffers allocated, free, peak in use, slabs): for tests."""
        p = self.pool
        return p.total, p.nfree, p.peak, p.nslabs

    # --- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        m, sel, conns = self.m, self.sel, self.conns
        EV_READ, EV_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
        while not self.quit:
            events = sel.select(self._wait_ms() / 1000.0)
            t0 = time.monotonic_ns()
            self._tick()
            m[I_LOOP_WAITS] += 1
            m[I_LOOP_EVENTS] += len(events)
            for key, evs in events:
                fd = key.fd
                if fd == self.lfd:
                    if self.accepting:
                        self._accept()
                elif fd == self._wake_r:
                    self._on_wake()
                else:
                    c = conns.get(fd)
                    if c is None:
                        continue  # closed earlier in this batch
                    if (c.out_len or c.flags & F_STREAM) and evs & EV_WRITE:
                        self._on_write(c)
                        if c.state == S_FREE or c.out_len or c.flags & F_STREAM:
                            continue
                    if evs & EV_READ and not c.flags & F_PAUSED:
                        self._on_read(c)
            self._sweep()
            if not self.accepting and not self.draining and self.stop_mode == 0 \
                    and t_due(self.accept_resume, self.now):
                self._listen(True)
            if self.draining:
                if t_due(self.idle_close_at, self.now):
                    self._close_idle()
                if self.nopen == 0 or t_due(self.graceful_deadline, self.now):
                    break
            lag = (time.monotonic_ns() - t0) // 1000
            m[I_LAG_BUCKET0 + min(lag.bit_length(), metrics.LAG_BUCKETS - 1)] += 1
            if lag > m[I_LAG_MAX]:
                m[I_LAG_MAX] = lag

    def _wait_ms(self) -> int:
        """Until the nearest timer, at most MAX_WAIT_MS."""
        w = MAX_WAIT_MS
        for L in self.tl[T_HEADER:]:
            for c in L.d.values():
                w = min(w, c.deadline - self.now)
                break
        return max(w, 0)

    def _tick(self) -> None:
        self.now = (time.monotonic_ns() - self.t_base_ns) // 1_000_000
        self.date = self.dates.get()

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:
            pass
        if self.stop_mode == 2:
            self.quit = True
        elif self.stop_mode == 1 and not self.draining:
            self._start_drain()

    def _start_drain(self) -> None:
        """Graceful stop: no new connections; every answer from now on says close. Idle
        connections get a short grace, so that a request already on its way (or unread in
        the kernel) is answered with Connection: close instead of meeting a reset."""
        graceful_ms = int(self.cfg.graceful_timeout * 1000)
        self.draining = True
        self.graceful_deadline = self.now + graceful_ms
        self.idle_close_at = self.now + min(graceful_ms // 2, 500)
        if self.accepting:
            self._listen(False)

    def _close_idle(self) -> None:
        """Draining, past the grace: close the idle connections with nothing waiting."""
        for k in (T_HEADER, T_IDLE):
            for c in list(self.tl[k].d.values()):
                if c.state == S_HEAD and not c.buf:
                    try:
                        waiting = c.sock.recv(1, socket.MSG_PEEK)
                    except OSError:  # EAGAIN included: nothing waiting
                        waiting = b""
                    if not waiting:
                        self._close(c)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return  # the backlog is empty
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED, errno.EPROTO):
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting()
                return
            self._admit(sock)

    def _pause_accepting(self) -> None:
        """Out of fds: stop accepting for EMFILE_PAUSE_MS (the backlog waits) instead of spinning."""
        self.m[I_ACCEPT_PAUSED] += 1
        self._listen(False)
        self.accept_resume = self.now + EMFILE_PAUSE_MS

    def _listen(self, on: bool) -> None:
        """Watch the listener or stop watching it (drain, accept pause). Watching it again
        may fail: then it is counted, logged and retried after EMFILE_PAUSE_MS."""
        self.accepting = on
        if not on:
            self.sel.unregister(self.sock)
            return
        try:
            self.sel.register(self.sock, selectors.EVENT_READ)
        except OSError as e:
            self.accepting = False
            self.accept_resume = self.now + EMFILE_PAUSE_MS
            self.m[I_LISTEN_REARM_FAILED] += 1
            log.warning("worker %d: watching the listener again failed (%s); retrying in %d ms",
                        self.pid, os.strerror(e.errno or 0), EMFILE_PAUSE_MS)

    def _admit(self, sock: socket.socket) -> None:
        """A new connection: its table entry, its header deadline, its first read (or,
        past max_connections, a 503 and a close). When the listener defers accept, the
        first read is tried at once, before the connection joins the event set (as C)."""
        m = self.m
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Conn(sock)
        self.conns[c.fd] = c
        m[I_ACCEPTED] += 1
        self.nopen += 1
        first = self.read_first and self.served < self.cfg.max_connections
        if not first:
            if not self._watch(c, False):
                return
            if self.served >= self.cfg.max_connections:
                c.flags = F_REJECTED
                m[I_REJECTED] += 1
                self._error(c, 503, False, -1)
                if self._flush(c) == 0:
                    self._linger(c)
                return
        self.served += 1
        m[I_ACTIVE] = self.served
        c.flags = F_FRESH
        t_set(self.tl, c, T_HEADER, self.now)  # a new connection must speak in time
        if first:
            self.unwatched = c.fd  # meanwhile _interest only notes the events wanted
            try:
                self._on_read(c)
            finally:
                self.unwatched = -1
            if c.state != S_FREE:
                self._watch(c, True)

    def _watch(self, c: Conn, counted: bool) -> bool:
        """c joins the event set (reading, or writing while F_PAUSED). When the set refuses
        it (ENOSPC past fs.epoll.max_user_watches, ENOMEM) it could never be served: it is
        closed now and counted (uncounted as active unless counted)."""
        try:
            self.sel.register(c.sock, selectors.EVENT_WRITE if c.flags & F_PAUSED else selectors.EVENT_READ)
        except OSError:
            self.m[I_ACCEPT_UNWATCHED] += 1
            if not counted:
                c.flags = F_REJECTED
            self._close(c)
            return False
        return True

    def _buf_get(self) -> bytearray | None:
        b = self.pool.get()
        m, p = self.m, self.pool
        m[I_POOL_SIZE] = p.total
        m[I_POOL_IN_USE] = p.total - p.nfree
        m[I_POOL_PEAK] = p.peak
        return b

    def _buf_put(self, c: Conn) -> None:
        if c.buf is not None:
            self.pool.put(c.buf)
            c.buf = None
            self.m[I_POOL_IN_USE] = self.pool.total - self.pool.nfree

    def _on_read(self, c: Conn) -> None:
        if c.state == S_LINGER:
            try:
                data = c.sock.recv(SCRATCH_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close(c)
            return
        if c.buf is None:
            c.buf = self._buf_get()
            if c.buf is None:
                # pool at pool_max: shed this connection (503, close), count it
                self.m[I_POOL_EXHAUSTED] += 1
                c.flags &= ~F_KEEP
                self._error(c, 503, False, -1)
                if self._flush(c) == 0:
                    self._linger(c)
                return
        # one read per readiness event (level-triggered), at most what the buffer holds
        try:
            data = c.sock.recv(self.pool.bufsize - len(c.buf))
        except (BlockingIOError, InterruptedError):
            if not c.buf:
                self._buf_put(c)
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)  # EOF or reset
            return
        self.m[I_BYTES_IN] += len(data)
        c.buf += data
        c.flags &= ~F_FRESH
        if c.tkind == T_IDLE:
            t_clear(self.tl, c)
        self._process(c)

    def _process(self, c: Conn) -> None:
        """Answer every complete request in c.buf (one send), keep a partial one."""
        buf, cfg, m = c.buf, self.cfg, self.m
        pos = rc = 0
        restart = False
        self.iov.clear()
        while rc == 0 and not c.flags & F_CLOSING:
            if c.state == S_BODY:
                try:
                    pos += self._body(c, buf, pos)
                except ParseError as e:
                    self._count_parse_error(e.status)
                    rc = self._error(c, e.status, bool(c.flags & F_HEAD), -1)
                    pos = len(buf)
                    break
                if c.state == S_BODY:
                    break
                rc = self._respond(c)
                restart = True
                if c.out_len or c.flags & F_STREAM:
                    break
                continue
            if pos == len(buf):
                break
            try:
                head, end = head_next(buf, pos, cfg, c, m, I_HEAD_SCANNED)
                if head is None and end == 0 and len(buf) == self.pool.bufsize:
                    c.scan = None
                    raise ParseError(431)  # an unfinished head fills the buffer: it can never complete
            except ParseError as e:
                m[I_REQUESTS] += 1
                self._count_parse_error(e.status)
                c.flags &= ~(F_KEEP | F_HEAD)
                rc = self._error(c, e.status, False, -1)
                pos = len(buf)
                break
            if head is None:
                pos = end  # leading empty lines go; the partial request stays
                break
            m[I_REQUESTS] += 1
            restart = True
            rc = self._dispatch(c, head, end == len(buf))
            pos = end
            if c.out_len or c.flags & F_STREAM:
                break  # backpressure: the rest waits in the buffer until the client reads
        if rc < 0:
            return  # closed
        if c.flags & F_CLOSING:
            if pos != len(buf):
                c.flags &= ~F_CLEAN_CLOSE  # input after a closing response: discarded, and lingered on
            pos = len(buf)
        if pos:
            del buf[:pos]
        if rc == 0:
            rc = self._flush(c)
            if rc == 0 and c.flags & F_STREAM:
                rc = self._pump(c)
                if rc == 0 and buf and not c.flags & F_CLOSING:
                    self._process(c)  # the requests that waited behind the stream
                    return
        if rc < 0:
            return
        if not buf:
            self._buf_put(c)
        if rc == 0:
            self._after(c, restart)

    def _after(self, c: Conn, restart: bool) -> None:
        """All output sent: close, or arm the right timer."""
        if c.flags & F_CLOSING:
            self._linger(c)
        elif c.state == S_BODY or c.buf:
            # a request's deadline runs from its first byte (its body's from its head):
            # trickled bytes do not move it
            if restart or c.tkind != T_HEADER:
                t_set(self.tl, c, T_HEADER, self.now)
        elif self.draining:
            self._linger(c)
        else:
            t_set(self.tl, c, T_IDLE, self.now)

    def _body(self, c: Conn, buf: bytearray, pos: int) -> int:
        """Consume body bytes at buf[pos:]; returns how many (ParseError on bad chunking)."""
        if c.flags & F_CHUNKED:
            end, done = c.chunk.feed(buf, pos, self.cfg, c.body if c.flags & F_WANT_BODY else None)
            if done:
                c.chunk = None
                c.state = S_HEAD
            return end - pos
        used = min(len(buf) - pos, c.body_left)
        if used and c.flags & F_WANT_BODY:
            c.body += buf[pos:pos + used]
        c.body_left -= used
        if c.body_left == 0:
            c.state = S_HEAD
        return used

    def _dispatch(self, c: Conn, q: Head, at_end: bool) -> int:
        """A head is complete: choose the answer; send it now or after the body."""
        c.flags &= ~(F_KEEP | F_V10 | F_HEAD | F_WANT_BODY | F_CHUNKED)
        if q.keep_alive:
            c.flags |= F_KEEP
        if q.version == "HTTP/1.0":
            c.flags |= F_V10
        if q.method == "HEAD":
            c.flags |= F_HEAD
        ri = self._lookup(q.path)
        options = q.method == "OPTIONS"
        if options and q.path == "*":
            c.resp = R_OPTIONS_ALL  # OPTIONS * (the only asterisk-form request parse_head lets by)
        elif ri < 0 and self.wsgi_app is not None:
            c.resp = R_WSGI
            if q.chunked or q.length:
                if q.expect_continue and not c.flags & F_V10 and at_end:
                    # the app decides: its wsgi.input sends 100 Continue when read
                    self._begin_wsgi(c, q, True)
                    return self._respond(c)
                c.flags |= F_WANT_BODY
            self._begin_wsgi(c, q, False)
        elif ri < 0:
            c.resp = R_404
        elif not self._allowed(ri, q.method):
            c.resp = (R_OPTIONS if options else R_405) | ri
        else:
            c.resp = ri
            route = self._routes_py[ri]
            if route.kind == HANDLER:
                if route.wants_body and (q.chunked or q.length):
                    c.flags |= F_WANT_BODY
                self._begin_py(c, q, ri)
        if q.chunked or q.length:
            c.state = S_BODY
            if q.chunked:
                c.flags |= F_CHUNKED
                c.chunk = ChunkDecoder(self.cfg.max_body)
            else:
                c.body_left = q.length
            if q.expect_continue and not c.flags & F_V10 and at_end:
                self._add(CONTINUE_100)
            return 0
        return self._respond(c)

    def _lookup(self, path: str) -> int:
        return self._index.get(path, -1)

    def _allowed(self, ri: int, method: str) -> bool:
        return method in self._routes_py[ri].methods

    def _begin_py(self, c: Conn, q: Head, ri: int) -> None:
        """A handler route's head: build its Request now (the buffer moves on)."""
        headers = q.headers
        if q.authority is not None:  # an absolute-form target's authority replaces Host (RFC 9112 3.2.2)
            headers = [(k, q.authority if k == b"host" else v) for k, v in headers]
        c.req = Request(q.method, q.path, q.query, headers, b"", q.version)
        c.body = bytearray() if c.flags & F_WANT_BODY else None
        c.flags |= F_PENDING_PY

    def _begin_wsgi(self, c: Conn, q: Head, cont: bool) -> None:
        """A WSGI request's head: its environ now (C builds it in core/wsgi.pxi), the body later."""
        if c.peer is None:
            c.peer = wsgi.peer(c.sock)
        c.req = wsgi.build_environ(self.wsgi_base, q.method, q.path, q.query, q.version, q.headers,
                                   wsgi.ContinueInput(c.fd, q.length, q.chunked, self.cfg) if cont else None,
                                   c.peer, q.authority)
        c.body = bytearray() if c.flags & F_WANT_BODY else None
        c.flags |= F_PENDING_PY

    def _count_parse_error(self, status: int) -> None:
        self.m[I_PARSE_ERROR.get(status, I_PE_BAD_REQUEST)] += 1

    def _close(self, c: Conn) -> None:
        if self.conns.pop(c.fd, None) is None:
            return  # closed already
        t_clear(self.tl, c)
        self._buf_put(c)
        if c.fd != self.unwatched:  # (the one _admit reads first is in no event set yet)
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):  # the KeyError's message is repr(sock): 2 syscalls
                pass
        c.sock.close()
        m = self.m
        m[I_CLOSED] += 1
        self.nopen -= 1
        if not c.flags & F_REJECTED:
            self.served -= 1
            m[I_ACTIVE] = self.served
        c.state = S_FREE
        c.req = c.body = c.out = None
        if c.ex is not None:  # a WSGI response cut short: its iterable is still closed
            c.ex.close()
            c.ex = None

    def _sweep(self) -> None:
        m, tl, now = self.m, self.tl, self.now
        for c in t_expired(tl[T_HEADER], now):
            t_clear(tl, c)
            m[I_TO_HEADER] += 1
            if c.state == S_HEAD and not c.buf:
                self._close(c)  # a new connection that never sent a byte: close quietly
                continue
            self.iov.clear()
            c.flags &= ~F_HEAD
            if self._error(c, 408, False, -1) == 0 and self._flush(c) == 0:
                self._linger(c)
        for k, i in ((T_IDLE, I_TO_IDLE), (T_SEND, I_TO_SEND), (T_LINGER, -1)):
            for c in t_expired(tl[k], now):
                if i >= 0:
                    m[i] += 1
                self._close(c)
