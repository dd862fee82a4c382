# cython: language_level=3
"""The C engine: one worker's epoll loop, in C through Cython, the GIL released.

Same parts, names and behaviour as fastc1k._core_py (the reference; docs/ENGINES.md maps
one onto the other). The hot path (epoll_wait -> read -> parse -> writev of prebuilt
memory) touches no Python object; the GIL is taken only for Python handlers, /metrics, and
to let signals run (every MAX_WAIT_MS). Parts: this file (the loop, and the writer in its
"writer" section: Cython cannot include methods into a cdef class, which is why this
file is over 700 lines), core/parser.pxi
(request heads, chunked bodies), core/pool.pxi (read buffers), core/timers.pxi (O(1)
timeout lists), core/consts.pxi (tunables, flags, the metrics layout), includes/system.pxd
(the syscalls), core/uring.pxi (the io_uring backend: ServerConfig.backend = "io_uring").
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t

from .includes.system cimport *
from .includes.liburing cimport *
from .core.debug cimport FC_DBG, FC_ASSERT

import itertools
import logging
import os
import sys
import time

from . import metrics, responses, wsgi
from ._compat import say_backend_fallback
from .routes import STATIC, HANDLER, DATA, METRICS, WSGI, JSON, PROMETHEUS, Request, options_allow, render_result

__all__ = ["Worker", "parse_request", "uring_unavailable", "ENGINE_NAME", "ENGINE_READY", "CONN_STRUCT_SIZE",
           "UCONN_STRUCT_SIZE"]

log = logging.getLogger("fastc1k")
ENGINE_NAME = "c"
ENGINE_READY = True
CONN_STRUCT_SIZE = sizeof(Conn)
MAX_READ_AHEAD = READ_AHEAD  # a slow app's reads go first, this many at a time (epoll)
UCONN_STRUCT_SIZE = sizeof(UConn)  # beside it, with the io_uring backend

include "core/parser.pxi"
include "core/pool.pxi"
include "core/timers.pxi"
include "core/wsgi.pxi"
include "core/uring.pxi"

cdef enum:  # routes.STATIC, HANDLER, DATA, METRICS, WSGI (checked below)
    _STATIC = 0
    _HANDLER = 1
    _DATA = 2
    _METRICS = 3
    _WSGI = 4

cdef const char *CRLF = b"\r\n"
cdef const char *CONN_CLOSE = b"Connection: close\r\n"
cdef const char *CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"
cdef const char *CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef const char *DAYS = b"SunMonTueWedThuFriSat"
cdef const char *MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"


def _check_layout():
    """The compile-time constants must match the Python modules they mirror."""
    idx = metrics.IDX
    want = {
        "pid": I_PID, "started_ms": I_STARTED_MS, "engine": I_ENGINE, "accepted": I_ACCEPTED,
        "closed": I_CLOSED, "active": I_ACTIVE, "requests": I_REQUESTS, "bytes_in": I_BYTES_IN,
        "bytes_out": I_BYTES_OUT, 'responses{status="200"}': I_RESP_200,
        'responses{status="other"}': I_RESP_OTHER,
        'parse_errors{kind="bad_request"}': I_PE_BAD_REQUEST,
        'parse_errors{kind="uri_too_long"}': I_PE_URI_TOO_LONG,
        'parse_errors{kind="headers_too_large"}': I_PE_HEADERS_TOO_LARGE,
        'parse_errors{kind="body_too_large"}': I_PE_BODY_TOO_LARGE,
        'parse_errors{kind="unsupported_coding"}': I_PE_UNSUPPORTED_CODING,
        'parse_errors{kind="bad_version"}': I_PE_BAD_VERSION,
        'timeouts{kind="header"}': I_TO_HEADER, 'timeouts{kind="idle"}': I_TO_IDLE,
        'timeouts{kind="send"}': I_TO_SEND, "rejected_max_connections": I_REJECTED,
        "accept_paused": I_ACCEPT_PAUSED, "handler_errors": I_HANDLER_ERRORS, "pool_size": I_POOL_SIZE,
        "pool_in_use": I_POOL_IN_USE, "pool_peak": I_POOL_PEAK, "pool_exhausted": I_POOL_EXHAUSTED,
        "loop_waits": I_LOOP_WAITS, "loop_events": I_LOOP_EVENTS, "loop_lag_max_us": I_LAG_MAX,
        'loop_lag_bucket{le_us="1"}': I_LAG_BUCKET0, "accept_unwatched": I_ACCEPT_UNWATCHED,
        "listen_rearm_failed": I_LISTEN_REARM_FAILED, "head_bytes_scanned": I_HEAD_SCANNED,
    }
    bad = {k: (v, idx.get(k)) for k, v in want.items() if idx.get(k) != v}
    if bad or metrics.LAG_BUCKETS != LAG_BUCKETS or metrics.N_WORDS <= I_HEAD_SCANNED:
        raise ImportError(f"fastc1k._core was built for another metrics layout: {bad}")
    for i, s in enumerate(metrics.STATUS_CODES):
        if metrics.status_index(s) != I_RESP_200 + i:
            raise ImportError("fastc1k._core: responses{status} layout changed")
    if responses.DATE_LEN != DATE_LEN or responses.CONN_CLOSE != CONN_CLOSE or responses.CONN_KEEP_ALIVE != CONN_KEEP_ALIVE:
        raise ImportError("fastc1k._core: responses constants changed")
    if (STATIC, HANDLER, DATA, METRICS, WSGI) != (_STATIC, _HANDLER, _DATA, _METRICS, _WSGI):
        raise ImportError("fastc1k._core: route kinds changed")
    _check_shared()


def _check_shared():
    """Every constant the two engines share: the same value on both sides, and the tables
    C fills at start-up within their bounds (C writes them without a check)."""
    from ._core_py import consts as py
    mine = {
        "MAX_EVENTS": MAX_EVENTS, "ACCEPT_BATCH": ACCEPT_BATCH, "IOV_CAP": IOV_CAP, "SCRATCH_SIZE": SCRATCH_SIZE,
        "MAX_WAIT_MS": MAX_WAIT_MS, "LINGER_MS": LINGER_MS, "EMFILE_PAUSE_MS": EMFILE_PAUSE_MS,
        "MAX_CHUNK_LINE": MAX_CHUNK_LINE, "MAX_ANSWER": MAX_ANSWER, "S_FREE": S_FREE, "S_HEAD": S_HEAD, "S_BODY": S_BODY,
        "S_LINGER": S_LINGER, "F_FRESH": F_FRESH, "F_KEEP": F_KEEP, "F_V10": F_V10, "F_HEAD": F_HEAD,
        "F_WANT_BODY": F_WANT_BODY, "F_CLOSING": F_CLOSING, "F_PAUSED": F_PAUSED, "F_OUT_OWNED": F_OUT_OWNED,
        "F_REJECTED": F_REJECTED, "F_CHUNKED": F_CHUNKED, "F_DEFER": F_DEFER, "F_PENDING_PY": F_PENDING_PY, "F_STREAM": F_STREAM,
        "F_PEER": F_PEER, "F_CLEAN_CLOSE": F_CLEAN_CLOSE, "F_SCAN": F_SCAN, "T_NONE": T_NONE, "T_HEADER": T_HEADER, "T_IDLE": T_IDLE, "T_SEND": T_SEND,
        "T_LINGER": T_LINGER, "T_KINDS": T_KINDS, "R_404": R_404, "R_WSGI": R_WSGI, "R_405": R_405,
        "R_OPTIONS_ALL": R_OPTIONS_ALL, "R_OPTIONS": R_OPTIONS, "MAX_ROUTES": MAX_ROUTES,
    }
    bad = {k: (v, getattr(py, k, None)) for k, v in mine.items() if getattr(py, k, None) != v}
    if bad:
        raise ImportError(f"fastc1k._core was built with other engine constants than fastc1k._core_py: {bad}")
    statuses = set(responses.REASONS) | set(responses.ERROR_BODIES) | set(metrics.STATUS_CODES)
    if len(responses.ERROR_BODIES) > ERR_SLOTS or not all(0 <= s < STATUS_SLOTS for s in statuses):
        raise ImportError(f"fastc1k._core: the error-response table holds {ERR_SLOTS} statuses below "
                          f"{STATUS_SLOTS}; responses.ERROR_BODIES has {sorted(responses.ERROR_BODIES)}")
    # what _error and _count_parse_error hard-code
    if set(responses.KEEPS_CONNECTION) != {404, 405}:
        raise ImportError("fastc1k._core: _error keeps the connection on 404 and 405 only; "
                          f"responses.KEEPS_CONNECTION is {sorted(responses.KEEPS_CONNECTION)}")
    parse_errors = {"bad_request": 400, "uri_too_long": 414, "headers_too_large": 431, "body_too_large": 413,
                    "unsupported_coding": 501, "bad_version": 505}
    if dict(metrics.PARSE_ERROR_STATUS) != parse_errors:
        raise ImportError(f"fastc1k._core: the parse-error map changed: {metrics.PARSE_ERROR_STATUS}")
    missing = (set(parse_errors.values()) | {404, 405, 408, 500, 503}) - set(responses.ERROR_BODIES)
    if missing:
        raise ImportError(f"fastc1k._core: no error response for {sorted(missing)}")

_check_layout()



@cython.cdivision(True)  # constant divisors
cdef inline uint64_t _clock_ns(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


cdef void _format_date(char *out, time_t sec) noexcept nogil:
    """IMF-fixdate (RFC 9110 5.6.7) without locale: 'Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n'."""
    cdef tm t
    gmtime_r(&sec, &t)
    snprintf(out, DATE_LEN + 1, b"Date: %.3s, %02d %.3s %04d %02d:%02d:%02d GMT\r\n",
             DAYS + 3 * t.tm_wday, t.tm_mday, MONTHS + 3 * t.tm_mon, t.tm_year + 1900,
             t.tm_hour, t.tm_min, t.tm_sec)


@cython.cdivision(True)  # constant divisors
cdef inline size_t _utoa(char *out, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef size_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline uint8_t _bit_length(uint64_t v) noexcept nogil:
    cdef uint8_t n = 0
    while v:
        n += 1
        v >>= 1
    return n


cdef inline void _out_free(Conn *c) noexcept nogil:
    """Free c.out when it is malloc'd (F_OUT_OWNED): the block's size is stored right after
    its unsent tail (c.out advances as it is sent)."""
    cdef size_t total
    if c.flags & F_OUT_OWNED:
        memcpy(&total, c.out + c.out_len, sizeof(size_t))
        free(c.out + c.out_len - total)
        c.flags &= ~F_OUT_OWNED


cdef class Worker:
    """One worker loop over a listening socket. See fastc1k.server.Server for the API."""

    def __cinit__(self):
        self.conns = NULL
        self.rt = NULL
        self.scratch = NULL
        self.lfd = self.epfd = self.efd = self.unwatched = -1
        self.ring = NULL
        self.uc = NULL
        memset(&self.pool, 0, sizeof(Pool))

    def __init__(self, sock, config, routes, metrics_area=None, int slot=0):
        cdef rlimit rl
        cdef socklen_t slen
        cdef unsigned long long[::1] mv
        cdef int i
        cdef bytes b
        if metrics_area is None:
            metrics_area = metrics.MetricsArea(1)
        self.sock = sock
        self.config = config
        self.routes = routes
        self.metrics_area = metrics_area
        self.lfd = sock.fileno()
        i = 1
        setsockopt(self.lfd, IPPROTO_TCP, TCP_NODELAY, &i, sizeof(int))  # accepted sockets inherit it
        slen = sizeof(int)
        self.read_first = getsockopt(self.lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &i, &slen) == 0 and i > 0
        view = metrics_area.slot(slot)
        mv = view
        self._slot = view
        self.m = <uint64_t *>&mv[0]
        self._keep = []
        self._pending = {}
        self._refs = []
        self._exc = None
        self._streams = {}
        self.wsgi_app = routes.wsgi
        if self.wsgi_app is not None:
            host, port = sock.getsockname()[:2]
            self.wsgi_base = wsgi.base_environ(host, port, config.workers > 1)
        self.lim.max_line = config.max_request_line
        self.lim.max_hdr = config.max_header_bytes
        self.lim.max_headers = config.max_headers
        self.lim.max_body = config.max_body
        self.max_connections = config.max_connections
        self.graceful_ms = <uint32_t>(config.graceful_timeout * 1000)
        for i, t in ((T_HEADER, config.header_timeout), (T_IDLE, config.idle_timeout),
                     (T_SEND, config.send_timeout), (T_LINGER, LINGER_MS / 1000.0)):
            self.tl[i].length_ms = max(1, <uint32_t>(t * 1000 + 0.5))
        for i in range(T_KINDS):
            self.tl[i].head = self.tl[i].tail = -1
        if getrlimit(RLIMIT_NOFILE, &rl) != 0:
            raise OSError("getrlimit failed")
        self.nconns = <int>min(<unsigned long>rl.rlim_cur, 1 << 24)
        self.conns = <Conn *>calloc(self.nconns, sizeof(Conn))  # pages are touched only as fds are used
        self.scratch = <char *>malloc(SCRATCH_SIZE)
        if self.conns == NULL or self.scratch == NULL:
            raise MemoryError()
        if self.wsgi_app is not None:  # 8 bytes per fd, touched only by WSGI connections
            self.peer4 = <uint64_t *>calloc(self.nconns, sizeof(uint64_t))
            if self.peer4 == NULL:
                raise MemoryError()
        if pool_init(&self.pool, config.buffer_size, config.pool_size, config.pool_max) != 0:
            raise MemoryError("read buffer pool")
        self.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.efd < 0:
            raise OSError("eventfd failed")
        self.pid = os.getpid()
        self.max_answer = MAX_ANSWER
        self._build_routes(routes)
        self._build_errors()
        self.date_sec = -1

    def _hold(self, b):
        b = bytes(b)
        self._keep.append(b)
        return b

    def _build_routes(self, routes):
        cdef RouteC *r
        cdef bytes b
        self._routes_py = list(routes)
        self.nrt = len(self._routes_py)
        if self.nrt >= MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES - 1} routes, got {self.nrt}")
        self.rt = <RouteC *>calloc(max(1, self.nrt), sizeof(RouteC))
        if self.rt == NULL:
            raise MemoryError()
        for i, route in enumerate(self._routes_py):
            r = &self.rt[i]
            try:
                b = self._hold(route.path.encode("latin-1"))  # request paths are latin-1 decoded
                r.path = PyBytes_AS_STRING(b)
                r.path_len = PyBytes_GET_SIZE(b)
            except UnicodeEncodeError:
                r.path = NULL  # no request path can name it (as in the pure engine)
            r.kind = route.kind
            r.status = route.status
            r.wants_body = route.wants_body
            r.get_ok = "GET" in route.methods
            r.head_ok = "HEAD" in route.methods
            b = self._hold(b" " + " ".join(route.methods).encode("ascii") + b" ")
            r.methods, r.methods_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
            b = self._hold(route.head)
            r.head, r.head_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
            b = self._hold(b"\r\n" + route.body)
            r.tail, r.tail_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
            if r.kind == _STATIC:
                r.full_len = r.head_len + DATE_LEN + r.tail_len
                r.full = <char *>malloc(r.full_len)
                if r.full == NULL:
                    raise MemoryError()
                memcpy(r.full, r.head, r.head_len)
                memcpy(r.full + r.head_len + DATE_LEN, r.tail, r.tail_len)
            b = self._hold(responses.error_head(405, route.allow))
            r.h405, r.h405_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
            b = self._hold(responses.options_head(options_allow(route.methods)))
            r.hopt, r.hopt_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
        b = self._hold(responses.options_head(routes.server_allow()))
        self.opt_head, self.opt_head_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
        b = self._hold(responses.build_head(200, JSON, 0))
        assert b.endswith(b"Content-Length: 0\r\n")
        self.data_head, self.data_head_len = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b) - 3

    def _build_errors(self):
        cdef bytes b
        cdef int i
        for i in range(600):
            self.err_slot[i] = -1
            self.status_ctr[i] = I_RESP_OTHER
        for i, s in enumerate(metrics.STATUS_CODES):
            self.status_ctr[s] = I_RESP_200 + i
        for i, s in enumerate(sorted(responses.ERROR_BODIES)):
            self.err_slot[s] = i
            b = self._hold(responses.error_head(s))
            self.err_head[i], self.err_head_len[i] = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)
            b = self._hold(responses.error_tail(s))
            self.err_tail[i], self.err_tail_len[i] = PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)

    def __dealloc__(self):
        cdef int i
        if self.efd >= 0:
            close(self.efd)
        if self.epfd >= 0:
            close(self.epfd)
        pool_free(&self.pool)
        free(self.conns)
        free(self.peer4)
        if self.rt != NULL:
            for i in range(self.nrt):
                free(self.rt[i].full)
        free(self.rt)
        free(self.scratch)

    # --- Python API -----------------------------------------------------------------
    def run(self):
        """Serve until stop(); returns after the loop ended and every connection closed."""
        cdef epoll_event ev
        cdef int i, e
        cdef uint64_t *m = self.m
        if self.running:
            raise RuntimeError("Worker.run() is already running")
        if self.conns == NULL:
            raise RuntimeError("Worker.run() after close()")
        for i in range(metrics.N_WORDS):
            m[i] = 0
        m[I_PID] = self.pid
        m[I_STARTED_MS] = time.time_ns() // 1_000_000
        m[I_ENGINE] = metrics.ENGINE_C
        m[I_POOL_SIZE] = self.pool.total
        self.uring = self.config.backend == "io_uring"
        if self.uring:
            why = u_open(self)  # in this thread: the ring's single issuer
            if why:
                say_backend_fallback(why)
                self.uring = False
        if not self.uring:
            self.epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.epfd < 0:
                raise OSError("epoll_create1 failed")
            ev.events = EPOLLIN | EPOLLEXCLUSIVE  # a shared listener wakes one worker, not all
            ev.data.fd = self.lfd
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.lfd, &ev) != 0:
                e = errno
                close(self.epfd)
                self.epfd = -1
                raise OSError(e, f"epoll_ctl(listener) failed: {os.strerror(e)}")
            ev.events = EPOLLIN
            ev.data.fd = self.efd
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.efd, &ev) != 0:
                e = errno  # without its wake-up fd the worker could never be stopped: do not start
                close(self.epfd)
                self.epfd = -1
                raise OSError(e, f"epoll_ctl(eventfd) failed: {os.strerror(e)}")
        self.accepting = True
        self.draining = self.quit = False
        self.max_fd = -1
        self.t_base_ns = _clock_ns(CLOCK_MONOTONIC)
        self.now = 0
        self.last_signal_check = 0
        self.running = True
        if self.wsgi_app is not None:
            _RUNNING[PyThread_get_thread_ident()] = self
        try:
            with nogil:
                self._loop()
        finally:
            if self.wsgi_app is not None:
                _RUNNING.pop(PyThread_get_thread_ident(), None)
            with nogil:
                for i in range(self.max_fd + 1):
                    if self.conns[i].state != S_FREE:
                        self._close(i, &self.conns[i])
                if self.uring:
                    u_close(self)
            if self.epfd >= 0:
                close(self.epfd)
                self.epfd = -1
            m[I_ACTIVE] = 0
            self.running = False
            self._refs.clear()
            self._pending.clear()
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc

    def stop(self, graceful=True):
        """Ask the loop to return (thread- and signal-safe: one eventfd write)."""
        cdef uint64_t one = 1
        cdef int mode = 1 if graceful else 2
        if mode > self.stop_mode:
            self.stop_mode = mode
        if self.efd >= 0:
            write(self.efd, &one, 8)

    def close(self):
        """Release the eventfd, the buffer pool and the connection table (after run())."""
        if self.running:
            raise RuntimeError("Worker.close() while run() is running; stop() it first")
        if self.efd >= 0:
            close(self.efd)
            self.efd = -1
        pool_free(&self.pool)
        free(self.conns)
        self.conns = NULL
        free(self.peer4)
        self.peer4 = NULL

    @property
    def backend(self):
        """The I/O backend: "io_uring" once run() set its ring up, else "epoll"."""
        return "io_uring" if self.uring else "epoll"

    def counters(self):
        cdef uint64_t *m = self.m
        return {name: m[i] for name, i in metrics.IDX.items()}

    @property
    def pool_stats(self):
        """(buffers allocated, free, peak in use, slabs): for tests."""
        return self.pool.total, self.pool.nfree, self.pool.peak, self.pool.nslabs

    # --- the loop -----------------------------------------------------------------------
    @cython.cdivision(True)  # constant divisors
    cdef void _loop(self) noexcept nogil:
        cdef int n, i, fd, nread
        cdef int ready[READ_AHEAD]  # read, waiting for their processing (a slow WSGI app on epoll)
        cdef uint32_t evs
        cdef uint64_t t0, lag
        cdef uint64_t *m = self.m
        cdef Conn *c
        while not self.quit:
            if self.uring:
                t0 = u_round(self)
                n = 0
            else:
                n = epoll_wait(self.epfd, self.events, MAX_EVENTS, self._wait_ms())
                t0 = _clock_ns(CLOCK_MONOTONIC)
                self._tick()
                if n < 0:
                    n = 0  # EINTR: a signal; checked below
                    self.last_signal_check = self.now - MAX_WAIT_MS
                m[I_LOOP_WAITS] += 1
                m[I_LOOP_EVENTS] += n
            nread = 0
            for i in range(n):
                fd = self.events[i].data.fd
                evs = self.events[i].events
                if fd == self.lfd:
                    if self.accepting:
                        self._accept()
                elif fd == self.efd:
                    self._on_wake()
                else:
                    c = &self.conns[fd]
                    if c.state == S_FREE:
                        continue
                    if (c.out_len or c.flags & F_STREAM) and evs & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                        self._on_write(fd, c)
                        if c.state == S_FREE or c.out_len or c.flags & F_STREAM:
                            continue
                    if evs & (EPOLLIN | EPOLLHUP | EPOLLERR) and not (c.flags & F_PAUSED):
                        if self.slow_calls < SLOW_STREAK:
                            self._on_read(fd, c)
                        elif self._recv(fd, c):
                            ready[nread] = fd
                            nread += 1
                            if nread == READ_AHEAD:
                                self._process_read(ready, nread)
                                nread = 0
            self._process_read(ready, nread)
            if self.ndefer:
                self._flush_round()
            self._sweep()
            if not self.accepting and not self.draining and self.stop_mode == 0 \
                    and t_due(self.accept_resume, self.now):
                self._listen(True)
            if self.draining:
                if t_due(self.idle_close_at, self.now):
                    self._close_idle()
                if self.nopen == 0 or t_due(self.graceful_deadline, self.now):
                    break
            if <int32_t>(self.now - self.last_signal_check) >= MAX_WAIT_MS:
                self.last_signal_check = self.now
                self._check_signals()
            lag = (_clock_ns(CLOCK_MONOTONIC) - t0) // 1000
            i = _bit_length(lag)
            m[I_LAG_BUCKET0 + (i if i < LAG_BUCKETS else LAG_BUCKETS - 1)] += 1
            if lag > m[I_LAG_MAX]:
                m[I_LAG_MAX] = lag

    cdef int _wait_ms(self) noexcept nogil:
        """Until the nearest timer, at most MAX_WAIT_MS."""
        cdef int w = MAX_WAIT_MS, d, k
        for k in range(1, T_KINDS):
            if self.tl[k].head >= 0:
                d = <int32_t>(self.conns[self.tl[k].head].deadline - self.now)
                if d < w:
                    w = d
        return w if w > 0 else 0

    @cython.cdivision(True)  # constant divisors
    cdef void _tick(self) noexcept nogil:
        cdef timespec ts
        cdef int i
        self.now = <uint32_t>((_clock_ns(CLOCK_MONOTONIC) - self.t_base_ns) // 1000000)
        clock_gettime(CLOCK_REALTIME_COARSE, &ts)
        if ts.tv_sec != self.date_sec:
            self.date_sec = ts.tv_sec
            _format_date(self.date, ts.tv_sec)
            for i in range(self.nrt):
                if self.rt[i].full != NULL:
                    memcpy(self.rt[i].full + self.rt[i].head_len, self.date, DATE_LEN)

    cdef void _check_signals(self) noexcept with gil:
        try:
            PyErr_CheckSignals()
        except BaseException as exc:  # KeyboardInterrupt and friends: re-raised by run()
            self._exc = exc
            self.quit = True

    cdef void _on_wake(self) noexcept nogil:
        cdef uint64_t v
        read(self.efd, &v, 8)
        if self.stop_mode == 2:
            self.quit = True
        elif self.stop_mode == 1 and not self.draining:
            self._start_drain()

    cdef void _start_drain(self) noexcept nogil:
        """Graceful stop: no new connections; every answer from now on says close. Idle
        connections get a short grace, so that a request already on its way (or unread in
        the kernel) is answered with Connection: close instead of meeting a reset."""
        cdef uint32_t grace = self.graceful_ms // 2
        self.draining = True
        self.graceful_deadline = self.now + self.graceful_ms
        self.idle_close_at = self.now + (grace if grace < 500 else 500)
        if self.accepting:
            self._listen(False)

    cdef void _close_idle(self) noexcept nogil:
        """Draining, past the grace: close the idle connections with nothing waiting."""
        cdef int fd, nxt, k
        cdef char byte
        for k in range(T_HEADER, T_IDLE + 1):
            fd = self.tl[k].head
            while fd >= 0:
                nxt = self.conns[fd].tnext
                if self.conns[fd].state == S_HEAD and self.conns[fd].buf_len == 0 \
                        and recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) <= 0:
                    self._close(fd, &self.conns[fd])
                fd = nxt

    cdef void _accept(self) noexcept nogil:
        cdef int k, fd, e
        for k in range(ACCEPT_BATCH):
            fd = accept4(self.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                e = errno
                if e == EINTR or e == ECONNABORTED or e == EPROTO:
                    continue
                if e == EMFILE or e == ENFILE or e == ENOBUFS or e == ENOMEM:
                    FC_DBG(b"accept paused: errno %d\n", e)
                    self._pause_accepting()
                return  # EAGAIN: the backlog is empty
            self._admit(fd)

    cdef void _pause_accepting(self) noexcept nogil:
        """Out of fds: stop accepting for EMFILE_PAUSE_MS (the backlog waits) instead of spinning."""
        self.m[I_ACCEPT_PAUSED] += 1
        self._listen(False)
        self.accept_resume = self.now + EMFILE_PAUSE_MS

    cdef void _listen(self, bint on) noexcept nogil:
        """Watch the listener or stop watching it (drain, accept pause). Watching it again
        may fail (ENOMEM, ENOSPC): then it is counted, logged and retried after
        EMFILE_PAUSE_MS, never a worker that silently stops accepting."""
        cdef epoll_event ev
        self.accepting = on
        if self.uring:
            u_listen(self, on)
        elif on:
            ev.events = EPOLLIN | EPOLLEXCLUSIVE  # a shared listener wakes one worker, not all
            ev.data.fd = self.lfd
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.lfd, &ev) != 0:
                self.accepting = False
                self.accept_resume = self.now + EMFILE_PAUSE_MS
                self.m[I_LISTEN_REARM_FAILED] += 1
                self._say_listen_failed(errno)
        else:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.lfd, NULL)

    cdef void _say_listen_failed(self, int e) noexcept with gil:
        log.warning("worker %d: watching the listener again failed (%s); retrying in %d ms",
                    self.pid, os.strerror(e), EMFILE_PAUSE_MS)

    cdef void _admit(self, int fd) noexcept nogil:
        """A new connection: its table entry, its header deadline, its first read (or,
        past max_connections, a 503 and a close). When the listener defers accept (the
        kernel hands a connection over with its first bytes), it is read at once, before the
        fd joins the event set: the request is answered without an epoll round, and a
        connection its response closes never joins the set (no epoll_ctl at all; io_uring:
        no recv armed, none to cancel at the close)."""
        cdef Conn *c
        cdef bint first = self.read_first and self.served < self.max_connections
        if fd >= self.nconns:  # cannot happen: the table covers RLIMIT_NOFILE
            close(fd)
            return
        self.m[I_ACCEPTED] += 1
        self.nopen += 1
        c = &self.conns[fd]
        c.state = S_HEAD
        c.tprev = c.tnext = -1
        if fd > self.max_fd:
            self.max_fd = fd
        if not first:
            if not self._watch(fd, c, False):
                return
            if self.served >= self.max_connections:
                c.flags = F_REJECTED
                self.m[I_REJECTED] += 1
                self._error(fd, c, 503, False, -1)
                if self._flush(fd, c) == 0:
                    self._linger(fd, c)
                return
        self.served += 1
        self.m[I_ACTIVE] = self.served
        c.flags = F_FRESH
        t_set(self.conns, self.tl, fd, T_HEADER, self.now)  # a new connection must speak in time
        if first:
            if self.uring:
                memset(&self.uc[fd], 0, sizeof(UConn))
            self.unwatched = fd  # meanwhile _interest only notes the events wanted (epoll)
            self._on_read(fd, c)
            self.unwatched = -1
            if c.state == S_FREE:
                return
            if not self.uring:
                self._watch(fd, c, True)
            elif c.state != S_LINGER and not (c.out_len or c.flags & (F_PAUSED | F_STREAM)):
                u_interest(self, fd, c, False)  # its recv (while writing: once sent, by u_sent)

    cdef bint _watch(self, int fd, Conn *c, bint counted) noexcept nogil:
        """fd joins the event set (reading, or writing while F_PAUSED). When the set refuses
        it (ENOSPC past fs.epoll.max_user_watches, ENOMEM) it could never be served: it is
        closed now and counted (uncounted as active unless counted)."""
        cdef epoll_event ev
        cdef bint watched
        if self.uring:
            watched = u_watch(self, fd) >= 0
        else:
            ev.events = EPOLLOUT if c.flags & F_PAUSED else EPOLLIN
            ev.data.fd = fd
            watched = epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) == 0
        if not watched:
            self.m[I_ACCEPT_UNWATCHED] += 1
            if not counted:
                c.flags = F_REJECTED
            self._close(fd, c)
        return watched

    cdef char *_buf_get(self) noexcept nogil:
        cdef char *b = pool_get(&self.pool)
        cdef uint64_t *m = self.m
        m[I_POOL_SIZE] = self.pool.total
        m[I_POOL_IN_USE] = self.pool.total - self.pool.nfree
        m[I_POOL_PEAK] = self.pool.peak
        return b

    cdef void _buf_put(self, Conn *c) noexcept nogil:
        if c.buf != NULL:
            pool_put(&self.pool, c.buf)
            c.buf = NULL
            c.buf_len = 0
            self.m[I_POOL_IN_USE] = self.pool.total - self.pool.nfree

    cdef void _on_read(self, int fd, Conn *c) noexcept nogil:
        if self._recv(fd, c):
            self._process(fd, c)

    cdef void _process_read(self, int *fds, int n) noexcept nogil:
        """The connections read ahead, in order. With a slow app (SLOW_STREAK slow calls in a
        row) the loop takes up to READ_AHEAD reads before their apps run, as io_uring's
        completions come: the apps then run back to back, not each after a receive path has
        churned the cache. A fast app gains nothing by it and would only hold more buffers."""
        cdef int i
        cdef Conn *c
        for i in range(n):
            c = &self.conns[fds[i]]
            if c.state != S_FREE:  # (only its own processing closes a connection here)
                self._process(fds[i], c)

    cdef bint _recv(self, int fd, Conn *c) noexcept nogil:
        """One read into c.buf; True: new bytes to process."""
        cdef ssize_t n
        if c.state == S_LINGER:
            n = read(fd, self.scratch, SCRATCH_SIZE)
            if n == 0 or (n < 0 and errno != EAGAIN and errno != EINTR):
                self._close(fd, c)
            return False
        if c.buf == NULL:
            c.buf = self._buf_get()
            if c.buf == NULL:
                # pool at pool_max: shed this connection (503, close), count it
                self.m[I_POOL_EXHAUSTED] += 1
                FC_DBG(b"pool exhausted (%u buffers): 503 on fd %d\n", self.pool.total, fd)
                c.flags &= ~F_KEEP
                self._error(fd, c, 503, False, -1)
                if self._flush(fd, c) == 0:
                    self._linger(fd, c)
                return False
        FC_ASSERT(c.buf_len < self.pool.bufsize)
        # one read per readiness event: epoll is level-triggered, so a short read is never
        # followed by a read that would only say EAGAIN
        n = recv(fd, c.buf + c.buf_len, self.pool.bufsize - c.buf_len, 0)
        if n <= 0:
            if n < 0 and (errno == EAGAIN or errno == EINTR):
                if c.buf_len == 0:
                    self._buf_put(c)
                return False
            self._close(fd, c)  # EOF or reset
            return False
        self.m[I_BYTES_IN] += n
        c.buf_len += n
        c.flags &= ~F_FRESH
        if c.tkind == T_IDLE:
            t_clear(self.conns, self.tl, fd)
        return True

    cdef void _process(self, int fd, Conn *c) noexcept nogil:
        """Answer every complete request in c.buf (one writev), keep a partial one."""
        cdef size_t pos = 0
        cdef ssize_t r
        cdef Req q
        cdef int rc = 0
        cdef bint restart = False
        self.niov = 0
        self.out_total = 0
        self.arena_used = 0
        self.defer = False
        while rc == 0 and not (c.flags & F_CLOSING):
            if c.state == S_BODY:
                r = self._body(fd, c, c.buf + pos, c.buf_len - pos)
                if r < 0:
                    self._count_parse_error(<int>-r)
                    rc = self._error(fd, c, <int>-r, (c.flags & F_HEAD) != 0, -1)
                    pos = c.buf_len
                    break
                pos += r
                if c.state == S_BODY:
                    break
                rc = self._respond(fd, c)
                restart = True
                if c.out_len or c.flags & F_STREAM:
                    break
                continue
            if pos == c.buf_len:
                break
            memset(&q, 0, sizeof(Req))
            r = head_next(c.buf + pos, c.buf_len - pos, &q, c, &self.lim, &self.m[I_HEAD_SCANNED])
            if r == 0 and pos + q.skip == 0 and c.buf_len == self.pool.bufsize:
                r = -431  # an unfinished head fills the buffer: it can never complete (not an EOF)
                c.flags &= ~F_SCAN
            elif r == 0:
                pos += q.skip  # leading empty lines go; the partial request stays
                break
            self.m[I_REQUESTS] += 1
            if r < 0:
                self._count_parse_error(<int>-r)
                c.flags &= ~(F_KEEP | F_HEAD)
                rc = self._error(fd, c, <int>-r, False, -1)
                pos = c.buf_len
                break
            restart = True
            rc = self._dispatch(fd, c, &q, pos, <size_t>r)
            pos += r
            if c.out_len or c.flags & F_STREAM:
                break  # backpressure: the rest waits in the buffer until the client reads
        if rc < 0:
            return  # closed
        if c.flags & F_CLOSING:
            if pos != c.buf_len:
                c.flags &= ~F_CLEAN_CLOSE  # input after a closing response: discarded, and lingered on
            pos = c.buf_len
        if pos:
            c.buf_len -= pos
            if c.buf_len:
                memmove(c.buf, c.buf + pos, c.buf_len)
        if rc == 0:
            rc = self._flush(fd, c)
            if rc == 0 and c.flags & F_STREAM:
                rc = self._pump(fd, c)
                if rc == 0 and c.buf_len and not (c.flags & F_CLOSING):
                    if self.has_refs:
                        self._drop_refs()
                    self._process(fd, c)  # the requests that waited behind the stream
                    return
        if rc < 0:
            return
        if c.buf_len == 0:
            self._buf_put(c)
        if rc == 0:
            self._after(fd, c, restart)

    cdef void _after(self, int fd, Conn *c, bint restart) noexcept nogil:
        """All output sent: close, or arm the right timer."""
        if c.flags & F_CLOSING:
            self._linger(fd, c)
        elif c.state == S_BODY or c.buf_len:
            # a request's deadline runs from its first byte (its body's from its head):
            # trickled bytes do not move it
            if restart or c.tkind != T_HEADER:
                t_set(self.conns, self.tl, fd, T_HEADER, self.now)
        elif self.draining:
            self._linger(fd, c)
        else:
            t_set(self.conns, self.tl, fd, T_IDLE, self.now)

    cdef ssize_t _body(self, int fd, Conn *c, const char *b, size_t n) noexcept nogil:
        cdef size_t used = 0, doff, dlen
        cdef ssize_t r
        if c.flags & F_CHUNKED:
            while used < n and c.cstate != CS_DONE:
                r = chunk_feed(c, b + used, n - used, &self.lim, &doff, &dlen)
                if r < 0:
                    return r
                if dlen and c.flags & F_WANT_BODY:
                    self._sink(fd, b + used + doff, dlen)
                if r == 0:
                    break  # a CR that may start the line's CRLF waits for the next read
                used += r
            if c.cstate == CS_DONE:
                c.state = S_HEAD
            return <ssize_t>used
        used = n if n < c.body_left else <size_t>c.body_left
        if used and c.flags & F_WANT_BODY:
            self._sink(fd, b, used)
        c.body_left -= used
        if c.body_left == 0:
            c.state = S_HEAD
        return <ssize_t>used

    cdef int _dispatch(self, int fd, Conn *c, Req *q, size_t off, size_t hlen) noexcept nogil:
        """A head is complete: choose the answer; send it now or after the body."""
        cdef int ri
        cdef bint options
        c.flags &= ~(F_KEEP | F_V10 | F_HEAD | F_WANT_BODY | F_CHUNKED)
        if q.keep_alive:
            c.flags |= F_KEEP
        if not q.v11:
            c.flags |= F_V10
        if q.method_len == 4 and memcmp(q.method, b"HEAD", 4) == 0:
            c.flags |= F_HEAD
        ri = self._lookup(q.path, q.path_len)
        options = q.method_len == 7 and memcmp(q.method, b"OPTIONS", 7) == 0
        if options and q.path_len == 1 and q.path[0] == 42:
            c.resp = R_OPTIONS_ALL  # OPTIONS * (the only asterisk-form request parse_head lets by)
        elif ri < 0 and self.wsgi_app is not None:
            c.resp = R_WSGI
            if not (q.chunked or q.content_length):
                return self._call_wsgi(fd, c, q, off, hlen)  # environ and app in one GIL section
            if q.expect_continue and q.v11 and off + hlen == c.buf_len and not (self.uring and u_more_input(self, fd)):
                # the app decides: its wsgi.input sends 100 Continue when read (and reads
                # the body from the socket: not when io_uring already took some of it)
                self._begin_wsgi(fd, c, q, off, hlen, True)
                return self._respond(fd, c)
            c.flags |= F_WANT_BODY
            self._begin_wsgi(fd, c, q, off, hlen, False)
        elif ri < 0:
            c.resp = R_404
        elif not self._allowed(ri, q.method, q.method_len):
            c.resp = (R_OPTIONS if options else R_405) | ri
        else:
            c.resp = ri
            if self.rt[ri].kind == _HANDLER:
                if self.rt[ri].wants_body and (q.chunked or q.content_length):
                    c.flags |= F_WANT_BODY
                self._begin_py(fd, c, q, off, hlen, ri)
        if q.chunked or q.content_length:
            c.state = S_BODY
            if q.chunked:
                c.flags |= F_CHUNKED
                c.cstate = CS_SIZE0
                c.allowance = <int64_t>self.lim.max_body
                c.line_len = 0
                c.body_left = 0  # the chunk size accumulates here (the head scanner used it)
            else:
                c.body_left = <uint64_t>q.content_length
            if q.expect_continue and q.v11 and off + hlen == c.buf_len:
                self._add(CONTINUE_100, 25, True)
            return 0
        return self._respond(fd, c)

    cdef int _lookup(self, const char *path, size_t n) noexcept nogil:
        cdef int i
        for i in range(self.nrt):
            if self.rt[i].path_len == n and self.rt[i].path != NULL and memcmp(self.rt[i].path, path, n) == 0:
                return i
        return -1

    cdef bint _allowed(self, int ri, const char *m, size_t n) noexcept nogil:
        cdef RouteC *r = &self.rt[ri]
        cdef size_t i
        if n == 3 and m[0] == 71 and m[1] == 69 and m[2] == 84:
            return r.get_ok
        if n == 4 and memcmp(m, b"HEAD", 4) == 0:
            return r.head_ok
        if n + 2 > r.methods_len:
            return False
        for i in range(r.methods_len - n - 1):
            if r.methods[i] == 32 and r.methods[i + n + 1] == 32 and memcmp(r.methods + i + 1, m, n) == 0:
                return True
        return False

    # --- writer: responses and output (_core_py/writer.py) --------------------------
    cdef int _room(self, int fd, Conn *c) noexcept nogil:
        """Make room for one more response in the iovec/arena (flushing if full).
        -1: the connection was closed; else the response can be queued."""
        if self.niov + 8 > IOV_CAP or self.arena_used + 128 > ARENA_CAP:
            return -1 if self._flush(fd, c) < 0 else 0
        return 0

    cdef inline void _add(self, const char *p, size_t n, bint static) noexcept nogil:
        if n == 0:
            return
        self.iov[self.niov].iov_base = <void *>p
        self.iov[self.niov].iov_len = n
        self.iov_static[self.niov] = static
        self.niov += 1
        self.out_total += n

    cdef inline void _add_conn(self, Conn *c) noexcept nogil:
        if not (c.flags & F_KEEP):
            self._add(CONN_CLOSE, 19, True)
        elif c.flags & F_V10:
            self._add(CONN_KEEP_ALIVE, 24, True)

    cdef int _respond(self, int fd, Conn *c) noexcept nogil:
        """Queue the answer to the request just completed (head in flags/resp, body read)."""
        cdef RouteC *r
        cdef int rc
        cdef bint head_only = (c.flags & F_HEAD) != 0
        if self.draining:
            c.flags &= ~F_KEEP
        if c.resp == R_404:
            return self._error(fd, c, 404, head_only, -1)
        if c.resp == R_WSGI:
            return self._respond_wsgi(fd, c, None)
        if c.resp == R_OPTIONS_ALL or (c.resp & R_405) == 0 and c.resp & R_OPTIONS:
            rc = self._room(fd, c)
            if rc != 0:
                return rc
            if c.resp == R_OPTIONS_ALL:
                self._add(self.opt_head, self.opt_head_len, True)
            else:
                self._add(self.rt[c.resp & ~R_OPTIONS].hopt, self.rt[c.resp & ~R_OPTIONS].hopt_len, True)
            self._add(self.date, DATE_LEN, False)
            self._add_conn(c)
            self._add(CRLF, 2, True)
            self.m[I_RESP_200] += 1
            if not (c.flags & F_KEEP):
                c.flags |= F_CLOSING | F_CLEAN_CLOSE
            return 0
        if c.resp & R_405:
            return self._error(fd, c, 405, head_only, c.resp & ~R_405)
        r = &self.rt[c.resp]
        if r.kind == _STATIC:
            rc = self._room(fd, c)
            if rc != 0:
                return rc
            if not head_only and (c.flags & (F_KEEP | F_V10)) == F_KEEP:
                self._add(r.full, r.full_len, False)  # one piece: one send (not static: its Date changes)
            else:
                self._add(r.head, r.head_len, True)
                self._add(self.date, DATE_LEN, False)
                self._add_conn(c)
                if head_only:
                    self._add(CRLF, 2, True)
                else:
                    self._add(r.tail, r.tail_len, True)
            self.m[self.status_ctr[r.status]] += 1
        elif r.kind == _DATA:
            rc = self._respond_data(fd, c)
            if rc != 0:
                return rc
        else:
            rc = self._respond_py(fd, c, c.resp)
            if rc != 0:
                return rc
        if not (c.flags & F_KEEP):
            c.flags |= F_CLOSING | F_CLEAN_CLOSE
        return 0

    cdef int _respond_data(self, int fd, Conn *c) noexcept nogil:
        """/api/data: {"id":<n>,"timestamp":<unix ms>,"worker":<pid>} built in the arena."""
        cdef int rc = self._room(fd, c)
        cdef char *body
        cdef char *cl
        cdef size_t bn, cn
        if rc != 0:
            return rc
        self.data_id += 1
        body = self.arena + self.arena_used
        memcpy(body, b'{"id":', 6)
        bn = 6 + _utoa(body + 6, self.data_id)
        memcpy(body + bn, b',"timestamp":', 13)
        bn += 13
        bn += _utoa(body + bn, _clock_ns(CLOCK_REALTIME) // 1000000)
        memcpy(body + bn, b',"worker":', 10)
        bn += 10
        bn += _utoa(body + bn, <uint64_t>self.pid)
        body[bn] = 125  # '}'
        bn += 1
        cl = body + bn
        cn = _utoa(cl, bn)
        cl[cn] = 13
        cl[cn + 1] = 10
        cn += 2
        self.arena_used += bn + cn
        self._add(self.data_head, self.data_head_len, True)
        self._add(cl, cn, False)
        self._add(self.date, DATE_LEN, False)
        self._add_conn(c)
        self._add(CRLF, 2, True)
        if not (c.flags & F_HEAD):
            self._add(body, bn, False)
        self.m[I_RESP_200] += 1
        return 0

    cdef int _respond_py(self, int fd, Conn *c, int ri) noexcept with gil:
        """Handler and /metrics answers: Python builds them, under the GIL."""
        cdef bint head_only = (c.flags & F_HEAD) != 0
        cdef int rc
        cdef bytes head, body
        route = self._routes_py[ri]
        pend = None
        try:
            if route.kind == METRICS:
                body = metrics.render_prometheus(self.metrics_area.slots(), metrics.process_series())
                head = responses.build_head(200, PROMETHEUS, len(body))
                status = 200
            else:
                pend = self._pending.pop(fd, None)
                c.flags &= ~F_PENDING_PY
                if pend is None:
                    raise RuntimeError("handler request lost")
                req = pend[0]
                if pend[1] is not None:
                    req.body = bytes(pend[1])
                status, ctype, extra, body = render_result(route, route.handler(req))
                if len(body) > self.max_answer:
                    raise ValueError(f"a handler answer of {len(body)} bytes is over {self.max_answer}")
                head = responses.build_head(status, ctype, len(body), extra)
        except Exception:
            log.exception("handler for %s failed; answering 500", route.path)
            self.m[I_HANDLER_ERRORS] += 1
            return self._error(fd, c, 500, head_only, -1)
        rc = self._room(fd, c)
        if rc != 0:
            return rc
        self._refs.append(head)
        self._refs.append(body)
        self.has_refs = True
        self._add(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head), False)
        self._add(self.date, DATE_LEN, False)
        self._add_conn(c)
        self._add(CRLF, 2, True)
        if not head_only:
            self._add(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), False)
        self.m[self.status_ctr[status] if 0 <= status < 600 else I_RESP_OTHER] += 1
        if self.niov + 8 > IOV_CAP // 2 or PyBytes_GET_SIZE(body) > 65536:
            return -1 if self._flush(fd, c) < 0 else 0  # do not pile up Python objects
        return 0

    cdef int _begin_py(self, int fd, Conn *c, Req *q, size_t off, size_t hlen, int ri) noexcept with gil:
        """A handler route's head: build its Request now (the buffer moves on)."""
        cdef const char *t = q.target
        try:
            target = PyBytes_FromStringAndSize(q.path, q.target_len - <size_t>(q.path - q.target)) \
                if q.path >= t and q.path < t + q.target_len else b"/"
            path, _, query = target.partition(b"?")
            section = PyBytes_FromStringAndSize(c.buf + off + q.hdr_start, hlen - 4 - q.hdr_start) \
                if hlen - 4 > q.hdr_start else b""
            headers = []
            if section:
                for line in section.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    headers.append((name.lower(), value.strip(b" \t")))
            if q.authority != NULL:  # an absolute-form target's authority replaces Host (RFC 9112 3.2.2)
                authority = PyBytes_FromStringAndSize(q.authority, q.authority_len)
                headers = [(k, authority if k == b"host" else v) for k, v in headers]
            req = Request(PyBytes_FromStringAndSize(q.method, q.method_len).decode("ascii"),
                          path.decode("latin-1"), query.decode("latin-1"), headers, b"",
                          "HTTP/1.1" if q.v11 else "HTTP/1.0")
            self._pending[fd] = [req, bytearray() if c.flags & F_WANT_BODY else None]
            c.flags |= F_PENDING_PY
        except Exception:
            pass  # _respond_py answers 500 when the request is missing
        return 0

    cdef object _environ(self, int fd, Conn *c, Req *q, size_t off, size_t hlen):
        return _wsgi_environ(self.wsgi_base, c.buf + off, q, hlen, self, fd, c)

    cdef int _begin_wsgi(self, int fd, Conn *c, Req *q, size_t off, size_t hlen, bint cont) noexcept with gil:
        """A WSGI request with a body: its environ now (the buffer moves on), the body later."""
        try:
            env = self._environ(fd, c, q, off, hlen)
            if cont:
                env["wsgi.input"] = wsgi.ContinueInput(fd, q.content_length, q.chunked, self.config)
            self._pending[fd] = [env, bytearray() if c.flags & F_WANT_BODY else None]
            c.flags |= F_PENDING_PY
        except Exception:
            wsgi.log.exception("cannot build the WSGI environ")  # _respond_wsgi answers 500
        return 0

    cdef int _call_wsgi(self, int fd, Conn *c, Req *q, size_t off, size_t hlen) noexcept with gil:
        """A WSGI request without a body: its environ, then the app."""
        try:
            env = self._environ(fd, c, q, off, hlen)
        except Exception:
            wsgi.log.exception("cannot build the WSGI environ")
            env = None
        return self._respond_wsgi(fd, c, env)

    cdef int _respond_wsgi(self, int fd, Conn *c, object env) noexcept with gil:
        """Call the app on env (None: the pending request's, its body read); queue its head and
        first body pieces (as _respond does for a route). `return [body]` with a head seen
        before is done here; the rest by a fastc1k.wsgi.Exchange (see _StartResponse)."""
        cdef bint head_only = (c.flags & F_HEAD) != 0
        cdef bint ok = False, has_date = False, done = True, keep = (c.flags & F_KEEP) != 0, clean = True
        cdef int rc, status = 500
        cdef bytes b, head = None
        cdef _StartResponse sr
        cdef int i, niov0
        cdef uint64_t t0 = 0
        cdef size_t size0, n, k
        cdef char *p
        if self.draining:
            c.flags &= ~F_KEEP
        if self.niov == 0 and self._refs:
            del self._refs[:]  # nothing queued points into them any more
        ex = None
        try:
            if env is None and c.flags & F_PENDING_PY:
                pend = self._pending.pop(fd)
                c.flags &= ~F_PENDING_PY
                env = pend[0]
                _attach_body(env, bytes(pend[1]) if pend[1] is not None else b"")
                inp = env["wsgi.input"]
            elif env is not None:
                inp = _EMPTY_INPUT  # (base_environ's)
            else:
                raise RuntimeError("WSGI request lost")
            sr = _StartResponse.__new__(_StartResponse)
            sr.app, sr.env, sr.inp = self.wsgi_app, env, inp
            sr.head_only, sr.v11, sr.keep_alive = head_only, not (c.flags & F_V10), keep
            sr.fd = fd
            clean = type(sr.inp) is not _ContinueInput  # else a body may still come: linger on it
            result = it = None
            t0 = _clock_ns(CLOCK_MONOTONIC)
            try:
                result = self.wsgi_app(env, sr)
                if sr.ex is None and sr.hit is not None and type(sr.inp) is not _ContinueInput:
                    if type(result) is list:
                        head = _list_head(sr.hit, <list>result)
                    elif type(result) is not _FileWrapper:  # (sendfile) an iterable: whole within a few items?
                        pieces = []
                        it = iter(result)
                        pulled = _pull_whole(it, pieces, sr.hit[2])
                        if pulled == 1:
                            head = _list_head(sr.hit, pieces)
                        if head is not None:
                            _close_iterable(result)
                            result = pieces
                        else:  # wsgi.Exchange goes on with the items taken first
                            it = iter(pieces) if pulled == 1 else _chain(pieces, it)
            except Exception as exc:
                ex = sr.exchange()
                ex.result = result  # closed by failed()
                ex.failed(exc)
            else:
                if head is not None:
                    status, has_date, ok = sr.hit[0], sr.hit[3], True
                    pieces = () if head_only else result
                else:
                    ex = sr.exchange()
                    ok = ex.finish(result, it)
            if ex is not None:
                status = ex.status
                if ok:
                    head, pieces, has_date, done, keep = ex.head, ex.body, ex.has_date, ex.done, ex.keep_alive
        except Exception:
            wsgi.log.exception("WSGI request failed; answering 500")
            ok = False
            status = 500
        if ex is not None and ex.sent:  # write() sent the head and the body so far itself
            if not ok:  # no answer can follow
                self._close(fd, c)
                return -1
            self.m[self.status_ctr[status] if 0 <= status < 600 else I_RESP_OTHER] += 1
            if not keep:
                c.flags &= ~F_KEEP
            if not done:  # the rest streams
                self._streams[fd] = ex
                c.flags |= F_STREAM
            if not (c.flags & F_KEEP):
                c.flags |= F_CLOSING | (F_CLEAN_CLOSE if clean else 0)
            return 0
        if not ok:
            if status == 500:
                self.m[I_HANDLER_ERRORS] += 1
            return self._error(fd, c, status, head_only, -1)
        if not keep:
            c.flags &= ~F_KEEP
        if len(pieces) > 4:
            pieces = [b"".join(pieces)]
        if self.niov + 12 > IOV_CAP or self.arena_used + 128 > ARENA_CAP:
            rc = self._flush(fd, c)
            if rc < 0:
                if ex is not None:
                    ex.close()
                return rc
        niov0, size0 = self.niov, self.out_total
        self._add(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head), False)
        if not has_date:
            self._add(self.date, DATE_LEN, False)
        self._add_conn(c)
        self._add(CRLF, 2, True)
        for b in pieces:
            self._add(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), False)
        n = self.out_total - size0
        if n <= WSGI_COALESCE and self.arena_used + n <= ARENA_CAP and not self.uring:
            # a small response: one piece in the arena (one send, no Python object kept)
            p = self.arena + self.arena_used
            k = 0
            for i in range(niov0, self.niov):
                memcpy(p + k, self.iov[i].iov_base, self.iov[i].iov_len)
                k += self.iov[i].iov_len
            self.niov, self.out_total = niov0, size0
            self.arena_used += n
            self._add(p, n, False)
        else:
            self._refs.append(head)
            self._refs.append(pieces)
        self.m[self.status_ctr[status] if 0 <= status < 600 else I_RESP_OTHER] += 1
        if _clock_ns(CLOCK_MONOTONIC) - t0 >= WSGI_SLOW_NS:
            self.defer = True  # (_flush)
            if self.slow_calls < SLOW_STREAK:  # (read by the epoll loop only: io_uring's reads come first anyway)
                self.slow_calls += 1
        else:
            self.slow_calls = 0
        if not done:
            self._streams[fd] = ex
            c.flags |= F_STREAM
        if not (c.flags & F_KEEP):
            c.flags |= F_CLOSING | (F_CLEAN_CLOSE if clean else 0)  # the whole request was read
        if not done or self.niov + 8 > IOV_CAP // 2 or self.out_total > 65536:
            rc = self._flush(fd, c)  # do not pile up Python objects
            if rc >= 0 and self.niov == 0:
                self._refs.clear()
            return -1 if rc < 0 else 0
        return 0

    def _wsgi_out(self, int fd):
        """wsgi.Exchange.flow's hook: write() sends on fd itself from now on; this connection's
        queued output (earlier pipelined responses) is handed to it, in order, and dropped here
        (the iovec holds only fd's pieces: _process starts it empty and serves one connection).
        None while an io_uring send of it is in flight (the kernel holds that output).
        (_process never calls an app while fd has output in flight; kept for safety.)"""
        cdef Conn *c = &self.conns[fd]
        cdef int i
        if self.uring and c.out_len:
            return None
        parts = [PyBytes_FromStringAndSize(c.out, c.out_len)] if c.out_len else []
        for i in range(self.niov):
            parts.append(PyBytes_FromStringAndSize(<char *>self.iov[i].iov_base, self.iov[i].iov_len))
        self.niov = 0
        self.out_total = self.arena_used = 0
        if c.out_len:
            _out_free(c)
            c.out = NULL
            c.out_len = 0
            c.flags &= ~F_DEFER  # (a deferred send's entry in self.deferred is then stale)
            self._interest(fd, c, False)
            t_clear(self.conns, self.tl, fd)
        return b"".join(parts), PyBytes_FromStringAndSize(self.date, DATE_LEN)

    def _wsgi_grace(self):
        """wsgi.Exchange.flow's: seconds a write() may still wait once the worker is stopping."""
        return None if self.stop_mode == 0 else 0.0 if self.stop_mode == 2 else self.config.graceful_timeout

    cdef int _pump(self, int fd, Conn *c) noexcept with gil:
        """Stream more of fd's WSGI response. 0 done, 1 the socket is full (EPOLLOUT armed),
        -1 closed (a failed or cut-short response)."""
        cdef uint64_t before = self.m[I_BYTES_OUT]
        ex = self._streams.get(fd)
        r = ex.pump(fd, self._slot, I_BYTES_OUT) if ex is not None else wsgi.ABORT
        if r == wsgi.BLOCKED:
            self._interest(fd, c, True)
            if self.m[I_BYTES_OUT] != before or c.tkind != T_SEND:
                t_set(self.conns, self.tl, fd, T_SEND, self.now)  # progress restarts the send timer
            return 1
        self._streams.pop(fd, None)
        c.flags &= ~F_STREAM
        if r == wsgi.ABORT:
            self._close(fd, c)
            return -1
        if c.tkind == T_SEND:
            t_clear(self.conns, self.tl, fd)
        return 0

    cdef void _sink(self, int fd, const char *p, size_t n) noexcept with gil:
        pend = self._pending.get(fd)
        if pend is not None and pend[1] is not None:
            pend[1] += PyBytes_FromStringAndSize(p, n)

    cdef void _drop_refs(self) noexcept with gil:
        self._refs.clear()
        self.has_refs = False

    cdef void _drop_pending(self, int fd, uint16_t flags) noexcept with gil:
        """Forget fd's Python state: a pending request, a stream (its close() is called)."""
        if flags & F_PENDING_PY:
            self._pending.pop(fd, None)
        if flags & F_STREAM:
            ex = self._streams.pop(fd, None)
            if ex is not None:
                ex.close()


    cdef void _count_parse_error(self, int status) noexcept nogil:
        cdef int i = I_PE_BAD_REQUEST
        if status == 414:
            i = I_PE_URI_TOO_LONG
        elif status == 431:
            i = I_PE_HEADERS_TOO_LARGE
        elif status == 413:
            i = I_PE_BODY_TOO_LARGE
        elif status == 501:
            i = I_PE_UNSUPPORTED_CODING
        elif status == 505:
            i = I_PE_BAD_VERSION
        self.m[i] += 1

    cdef int _error(self, int fd, Conn *c, int status, bint head_only, int ri) noexcept nogil:
        """Queue an engine error response. 404/405 keep the connection; others close it."""
        cdef int s = self.err_slot[status]
        cdef int rc
        FC_ASSERT(s >= 0)
        if status != 404 and status != 405:
            c.flags &= ~F_KEEP
        rc = self._room(fd, c)
        if rc != 0:
            return rc
        if ri >= 0:
            self._add(self.rt[ri].h405, self.rt[ri].h405_len, True)
        else:
            self._add(self.err_head[s], self.err_head_len[s], True)
        self._add(self.date, DATE_LEN, False)
        self._add_conn(c)
        if head_only:
            self._add(CRLF, 2, True)
        else:
            self._add(self.err_tail[s], self.err_tail_len[s], True)
        self.m[self.status_ctr[status]] += 1
        if not (c.flags & F_KEEP):
            c.flags |= F_CLOSING
            if status == 404 or status == 405:  # answers to a whole request, body read
                c.flags |= F_CLEAN_CLOSE
        return 0

    cdef int _flush(self, int fd, Conn *c) noexcept nogil:
        """One writev of what was queued. 0: all sent; 1: the unsent tail is kept and
        EPOLLOUT armed (reading stops: backpressure); -1: the connection was closed."""
        cdef ssize_t w
        cdef size_t left, k, off, old
        cdef int i
        cdef char *p
        cdef bint hold = self.defer and self.ndefer < MAX_EVENTS  # (a full list: sent now)
        self.defer = False
        if self.uring:
            return u_flush(self, fd, c)
        if self.niov == 0:
            return 1 if c.out_len else 0
        if c.out_len:
            # output is already waiting for EPOLLOUT: append behind it, in order
            old = c.out_len
            left = old + self.out_total
            p = <char *>malloc(left + sizeof(size_t)) if left <= 0xFFFFFFFFU else NULL  # out_len: 32 bits
            if p == NULL:
                self.niov = 0
                self._close(fd, c)
                return -1
            memcpy(p, c.out, old)
            _out_free(c)
            k = old
            for i in range(self.niov):
                memcpy(p + k, self.iov[i].iov_base, self.iov[i].iov_len)
                k += self.iov[i].iov_len
            memcpy(p + left, &left, sizeof(size_t))
            c.out = p
            c.out_len = left
            c.flags |= F_OUT_OWNED
            self.niov = 0
            self.out_total = 0
            self.arena_used = 0
            return 1
        if hold:
            # a slow app's response: kept (as a partial write's tail) and sent at the end of
            # this round with the round's others (_flush_round), as bjoern's write watcher does:
            # sent alone right after its app call, each would pay the client's wake-up in our
            # kernel time while the next app call waits
            w = 0
        elif self.niov == 1:  # send: no iovec to import, no VFS layer
            w = send(fd, self.iov[0].iov_base, self.iov[0].iov_len, MSG_NOSIGNAL)
        else:
            w = writev(fd, self.iov, self.niov)
        if w < 0:
            if errno != EAGAIN and errno != EINTR:
                self.niov = 0
                self.out_total = 0
                self._close(fd, c)
                return -1
            w = 0
        self.m[I_BYTES_OUT] += w
        left = self.out_total - <size_t>w
        if left == 0:
            self.niov = 0
            self.out_total = 0
            self.arena_used = 0
            return 0
        # partial write: remember only the unsent tail
        i = 0
        off = <size_t>w
        while off >= self.iov[i].iov_len:
            off -= self.iov[i].iov_len
            i += 1
        if i == self.niov - 1 and self.iov_static[i]:
            c.out = <char *>self.iov[i].iov_base + off  # prebuilt memory: no copy
        else:
            # dynamic pieces: copy; the block ends with its size (to find its start later)
            p = <char *>malloc(left + sizeof(size_t)) if left <= 0xFFFFFFFFU else NULL  # out_len: 32 bits
            if p == NULL:
                self.niov = 0
                self._close(fd, c)
                return -1
            k = 0
            memcpy(p, <char *>self.iov[i].iov_base + off, self.iov[i].iov_len - off)
            k = self.iov[i].iov_len - off
            for i in range(i + 1, self.niov):
                memcpy(p + k, self.iov[i].iov_base, self.iov[i].iov_len)
                k += self.iov[i].iov_len
            memcpy(p + left, &left, sizeof(size_t))
            c.out = p
            c.flags |= F_OUT_OWNED
        c.out_len = left
        self.niov = 0
        self.out_total = 0
        self.arena_used = 0
        if hold:
            c.flags |= F_DEFER
            self.deferred[self.ndefer] = fd
            self.ndefer += 1
            return 1
        self._interest(fd, c, True)
        t_set(self.conns, self.tl, fd, T_SEND, self.now)
        return 1

    cdef void _flush_round(self) noexcept nogil:
        """Send the responses deferred this round (_flush), each as EPOLLOUT would: a send
        that does not take it all arms EPOLLOUT then (no epoll_ctl otherwise). Requests
        pipelined behind one are answered now, and may defer again: each fd is listed once."""
        cdef int fd
        cdef Conn *c
        while self.ndefer:
            self.ndefer -= 1
            fd = self.deferred[self.ndefer]
            c = &self.conns[fd]
            if not (c.flags & F_DEFER):
                continue  # closed since (its entry is stale)
            c.flags &= ~F_DEFER
            self._on_write(fd, c)
            if c.state != S_FREE and c.out_len and not (c.flags & (F_PAUSED | F_DEFER)):
                self._interest(fd, c, True)
                t_set(self.conns, self.tl, fd, T_SEND, self.now)

    cdef void _on_write(self, int fd, Conn *c) noexcept nogil:
        cdef ssize_t w
        if c.out_len:
            w = write(fd, c.out, c.out_len)
            if w < 0:
                if errno != EAGAIN and errno != EINTR:
                    self._close(fd, c)
                return
            self.m[I_BYTES_OUT] += w
            c.out += w
            c.out_len -= w
            if c.out_len:
                if w:
                    t_set(self.conns, self.tl, fd, T_SEND, self.now)  # progress restarts the send timer
                return
            _out_free(c)
            c.out = NULL
            t_clear(self.conns, self.tl, fd)
        if c.flags & F_STREAM and self._pump(fd, c) != 0:
            return  # still streaming (EPOLLOUT stays armed), or closed
        if c.flags & F_CLOSING:
            self._linger(fd, c)
            return
        self._interest(fd, c, False)
        if c.buf_len:
            self._process(fd, c)  # requests left behind by the backpressure
        else:
            self._after(fd, c, False)

    cdef void _interest(self, int fd, Conn *c, bint out) noexcept nogil:
        """Read (EPOLLIN) or wait for the client to drain our output (EPOLLOUT only)."""
        cdef epoll_event ev
        if self.uring:
            u_interest(self, fd, c, out)
            return
        ev.events = EPOLLOUT if out else EPOLLIN
        ev.data.fd = fd
        if out == ((c.flags & F_PAUSED) != 0):
            return
        if fd != self.unwatched:  # (else _admit adds it with these events)
            epoll_ctl(self.epfd, EPOLL_CTL_MOD, fd, &ev)
        if out:
            c.flags |= F_PAUSED
        else:
            c.flags &= ~F_PAUSED

    cdef void _linger(self, int fd, Conn *c) noexcept nogil:
        """Lingering close: shut our side, read and discard until EOF or LINGER_MS, so
        the client reads our last response instead of a reset. Not needed (close now, as
        nginx does) when the client's last request was answered whole and nothing followed
        it: there is no unread input to turn the close into a reset."""
        if c.flags & F_CLEAN_CLOSE and c.buf_len == 0 and (not self.uring or u_unread(self, fd) == 0):
            self._close(fd, c)
            return
        if shutdown(fd, SHUT_WR) != 0:
            self._close(fd, c)
            return
        self._buf_put(c)
        if c.flags & F_PENDING_PY:
            c.flags &= ~F_PENDING_PY
            self._drop_pending(fd, F_PENDING_PY)
        c.state = S_LINGER
        c.flags &= ~F_CLOSING
        self._interest(fd, c, False)
        t_set(self.conns, self.tl, fd, T_LINGER, self.now)

    cdef void _close(self, int fd, Conn *c) noexcept nogil:
        t_clear(self.conns, self.tl, fd)
        self._buf_put(c)
        _out_free(c)
        if c.flags & (F_PENDING_PY | F_STREAM):
            self._drop_pending(fd, c.flags)
        if self.uring:
            u_release(self, fd)  # closes fd once the kernel holds no request on it
        else:
            close(fd)  # also leaves the epoll set
        self.m[I_CLOSED] += 1
        self.nopen -= 1
        if not (c.flags & F_REJECTED):
            self.served -= 1
            self.m[I_ACTIVE] = self.served
        memset(c, 0, sizeof(Conn))
        c.tprev = c.tnext = -1

    cdef void _sweep(self) noexcept nogil:
        cdef int fd, k
        cdef Conn *c
        cdef TList *L = &self.tl[T_HEADER]
        while L.head >= 0 and t_due(self.conns[L.head].deadline, self.now):
            fd = L.head
            c = &self.conns[fd]
            t_clear(self.conns, self.tl, fd)
            self.m[I_TO_HEADER] += 1
            if c.state == S_HEAD and c.buf_len == 0:
                self._close(fd, c)  # a new connection that never sent a byte: close quietly
                continue
            self.niov = 0
            self.out_total = 0
            self.arena_used = 0
            c.flags &= ~F_HEAD
            if self._error(fd, c, 408, False, -1) == 0 and self._flush(fd, c) == 0:
                self._linger(fd, c)
        for k in range(T_IDLE, T_KINDS):
            L = &self.tl[k]
            while L.head >= 0 and t_due(self.conns[L.head].deadline, self.now):
                fd = L.head
                if k == T_IDLE:
                    self.m[I_TO_IDLE] += 1
                elif k == T_SEND:
                    self.m[I_TO_SEND] += 1
                self._close(fd, &self.conns[fd])


def parse_request(data, config=None):
    """Parse one whole request from `data` (for differential tests and fuzzing).

    Returns (status, method, target, version, headers, keep_alive, body, consumed):
    status 0 = a complete request (body decoded), -1 = incomplete, else the error status
    (the same tuple as fastc1k._core_py.parse_request).
    """
    from .config import ServerConfig
    cdef bytes b = bytes(data)
    cdef const char *p = PyBytes_AS_STRING(b)
    cdef size_t n = PyBytes_GET_SIZE(b)
    cdef Req q
    cdef Limits lim
    cdef Conn c
    cdef ssize_t r, used
    cdef size_t pos, doff, dlen
    cdef uint64_t scanned = 0
    incomplete = (-1, None, None, None, None, None, None, 0)
    cfg = config or ServerConfig()
    lim.max_line = cfg.max_request_line
    lim.max_hdr = cfg.max_header_bytes
    lim.max_headers = cfg.max_headers
    lim.max_body = cfg.max_body
    memset(&q, 0, sizeof(Req))
    memset(&c, 0, sizeof(Conn))
    r = head_next(p, n, &q, &c, &lim, &scanned)  # as the loop parses a head
    if r == 0:
        return incomplete
    if r < 0:
        return (<int>-r, None, None, None, None, None, None, 0)
    pos = <size_t>r
    if q.chunked:
        memset(&c, 0, sizeof(Conn))
        c.cstate = CS_SIZE0
        c.allowance = <int64_t>lim.max_body
        out = bytearray()
        while pos < n and c.cstate != CS_DONE:
            used = chunk_feed(&c, p + pos, n - pos, &lim, &doff, &dlen)
            if used < 0:
                return (<int>-used, None, None, None, None, None, None, 0)
            if dlen:
                out += p[pos + doff:pos + doff + dlen]
            if used == 0:
                break
            pos += used
        if c.cstate != CS_DONE:
            return incomplete
        body = bytes(out)
    else:
        if n - pos < <uint64_t>q.content_length:
            return incomplete
        body = p[pos:pos + q.content_length]
        pos += q.content_length
    headers = []
    if <size_t>r - 4 > q.hdr_start:
        for line in p[q.hdr_start:<size_t>r - 4].split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
    return (0, p[q.method - p:q.method - p + q.method_len].decode("ascii"),
            p[q.target - p:q.target - p + q.target_len], "HTTP/1.1" if q.v11 else "HTTP/1.0",
            headers, bool(q.keep_alive), body, pos)
