# The C engine's declarations: structs and tunables (core/), the Worker's C fields.
from libc.stdint cimport int8_t, uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from .includes.system cimport iovec, epoll_event
from .includes.liburing cimport fc_ring

include "core/consts.pxi"
include "core/types.pxi"

cimport cython


@cython.final  # no subclasses: method calls are direct C calls the compiler can inline
cdef class Worker:
    cdef:
        object sock, config, routes, metrics_area
        object _slot                    # the metrics memoryview (its memory is self.m)
        list _keep                      # bytes objects whose memory C points into
        list _routes_py                 # route index -> Route
        dict _pending                   # fd -> [Request, bytearray | None] (handler routes)
        list _refs                      # Python pieces queued in iov until the next flush
        object _exc                     # raised by run() after the loop (signals)
        object wsgi_app                 # routes.wsgi: the app requests no route matches go to
        dict wsgi_base                  # wsgi.base_environ(...): copied per request
        dict _streams                   # fd -> wsgi.Exchange still streaming (F_STREAM)
        uint64_t *peer4                 # fd -> 1<<48 | port<<32 | IPv4 address (F_PEER): WSGI's REMOTE_*
        uint32_t last_ip                # the last REMOTE_ADDR made, and its str
        object last_ip_str
        int lfd, epfd, efd, max_fd
        bint read_first                 # the listener defers accept: read a new connection at once (epoll)
        int unwatched                   # the fd _admit reads before it joins the event set, else -1
        volatile int stop_mode          # 0 run, 1 graceful, 2 now (set by stop())
        bint running, accepting, draining, quit
        uint64_t *m                     # this worker's metrics slot
        Conn *conns
        int nconns
        int64_t served                  # connections counted toward max_connections
        int64_t nopen                   # every open client connection
        int64_t max_connections
        Pool pool
        TList tl[T_KINDS]
        Limits lim
        RouteC *rt
        int nrt
        uint64_t t_base_ns
        uint32_t now                    # ms since t_base_ns
        uint32_t accept_resume, graceful_deadline, idle_close_at, graceful_ms, last_signal_check
        int64_t date_sec
        char date[DATE_LEN + 1]
        uint64_t data_id
        int pid
        public uint64_t max_answer      # a handler answer's bytes at most (MAX_ANSWER; tests lower it)
        const char *opt_head            # head of the 200 to OPTIONS *, the server-wide Allow
        size_t opt_head_len
        const char *data_head           # build_head(200, JSON, 0) minus "0\r\n"
        size_t data_head_len
        const char *err_head[ERR_SLOTS]
        size_t err_head_len[ERR_SLOTS]
        const char *err_tail[ERR_SLOTS]
        size_t err_tail_len[ERR_SLOTS]
        int8_t err_slot[STATUS_SLOTS]
        uint8_t status_ctr[STATUS_SLOTS]
        char *scratch
        # the output being assembled for one connection (one writev)
        iovec iov[IOV_CAP]
        uint8_t iov_static[IOV_CAP]
        int niov
        size_t out_total
        size_t arena_used
        bint has_refs
        bint defer              # the output queued is a slow WSGI response's: sent at the round's end (_flush)
        int slow_calls          # app calls in a row that took WSGI_SLOW_NS or more (SLOW_STREAK: reads go first)
        int ndefer                      # fds in deferred (F_DEFER): each came from this round's events
        int32_t deferred[MAX_EVENTS]
        char arena[ARENA_CAP]
        epoll_event events[MAX_EVENTS]
        # the io_uring backend (core/uring.pxi); NULL with epoll
        bint uring
        fc_ring *ring
        UConn *uc                       # per fd, beside conns
        bint u_accept_armed
        int u_zombies                   # closed connections whose fd waits for its last completion
        unsigned u_at, u_n              # the completion being handled, of u_n reaped (0: none)
        size_t u_rest                   # bytes of the current receive not yet in the buffer

    cdef void _loop(self) noexcept nogil
    cdef int _wait_ms(self) noexcept nogil
    cdef void _tick(self) noexcept nogil
    cdef void _check_signals(self) noexcept with gil
    cdef void _on_wake(self) noexcept nogil
    cdef void _start_drain(self) noexcept nogil
    cdef void _close_idle(self) noexcept nogil
    cdef void _accept(self) noexcept nogil
    cdef void _pause_accepting(self) noexcept nogil
    cdef void _listen(self, bint on) noexcept nogil
    cdef void _admit(self, int fd) noexcept nogil
    cdef bint _watch(self, int fd, Conn *c, bint counted) noexcept nogil
    cdef void _on_read(self, int fd, Conn *c) noexcept nogil
    cdef bint _recv(self, int fd, Conn *c) noexcept nogil
    cdef void _process_read(self, int *fds, int n) noexcept nogil
    cdef void _on_write(self, int fd, Conn *c) noexcept nogil
    cdef void _process(self, int fd, Conn *c) noexcept nogil
    cdef void _after(self, int fd, Conn *c, bint restart) noexcept nogil
    cdef ssize_t _body(self, int fd, Conn *c, const char *b, size_t n) noexcept nogil
    cdef int _dispatch(self, int fd, Conn *c, Req *q, size_t off, size_t hlen) noexcept nogil
    cdef int _respond(self, int fd, Conn *c) noexcept nogil
    cdef int _respond_data(self, int fd, Conn *c) noexcept nogil
    cdef int _respond_py(self, int fd, Conn *c, int ri) noexcept with gil
    cdef int _begin_py(self, int fd, Conn *c, Req *q, size_t off, size_t hlen, int ri) noexcept with gil
    cdef void _sink(self, int fd, const char *p, size_t n) noexcept with gil
    cdef void _drop_refs(self) noexcept with gil
    cdef void _drop_pending(self, int fd, uint16_t flags) noexcept with gil
    cdef int _begin_wsgi(self, int fd, Conn *c, Req *q, size_t off, size_t hlen, bint cont) noexcept with gil
    cdef object _environ(self, int fd, Conn *c, Req *q, size_t off, size_t hlen)
    cdef int _call_wsgi(self, int fd, Conn *c, Req *q, size_t off, size_t hlen) noexcept with gil
    cdef int _respond_wsgi(self, int fd, Conn *c, object env) noexcept with gil
    cdef int _pump(self, int fd, Conn *c) noexcept with gil
    cdef int _error(self, int fd, Conn *c, int status, bint head_only, int ri) noexcept nogil
    cdef void _count_parse_error(self, int status) noexcept nogil
    cdef int _room(self, int fd, Conn *c) noexcept nogil
    cdef void _add(self, const char *p, size_t n, bint static) noexcept nogil
    cdef void _add_conn(self, Conn *c) noexcept nogil
    cdef int _flush(self, int fd, Conn *c) noexcept nogil
    cdef void _flush_round(self) noexcept nogil
    cdef void _interest(self, int fd, Conn *c, bint out) noexcept nogil
    cdef void _linger(self, int fd, Conn *c) noexcept nogil
    cdef void _close(self, int fd, Conn *c) noexcept nogil
    cdef void _say_listen_failed(self, int e) noexcept with gil
    cdef void _sweep(self) noexcept nogil
    cdef char *_buf_get(self) noexcept nogil
    cdef void _buf_put(self, Conn *c) noexcept nogil
    cdef int _lookup(self, const char *path, size_t n) noexcept nogil
    cdef bint _allowed(self, int ri, const char *m, size_t n) noexcept nogil
