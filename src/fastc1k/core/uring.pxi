# The io_uring backend of the worker loop (ServerConfig.backend = "io_uring"; the calls are
# in core/uring.h). The HTTP logic is the epoll loop's (_process, _respond, _after, the
# timer lists, the counters); only the I/O differs:
# - the listener has one multishot accept; each new connection one multishot recv over the
#   provided-buffer ring: a ring buffer is taken only when bytes arrive, copied into the
#   connection's pool buffer (as read() would have filled it) and given back at once, so an
#   idle connection holds no buffer of either kind;
# - _flush copies the queued pieces into one block and queues one send. Until its completion
#   the connection is "writing" (c.out_len), exactly like an epoll connection whose writev was
#   short: no further request is parsed, bytes that arrive wait in its buffer, and when that
#   is full in a stash while the recv is cancelled (backpressure: memory stays bounded);
# - every SQE of an iteration goes to the kernel with the one io_uring_enter that also waits;
# - a closed connection keeps its fd until the kernel completed its last request on it (after
#   a cancel), so a late completion can never meet a reused fd.

cdef enum:
    UD_ACCEPT = 1               # user_data = op << 32 | fd
    UD_RECV = 2
    UD_SEND = 3
    UD_WAKE = 4
    UD_CANCEL = 5
    UD_POLLOUT = 6              # a WSGI stream waits for room (its writes are direct)
    U_RECV = 1                  # UConn.flags: the multishot recv is armed
    U_SEND = 2                  # a send is in flight (sbuf is the kernel's until it completes)
    U_ZOMBIE = 4                # closed by the engine; fd closed at the last completion
    U_EOF = 8                   # the peer's FIN came while writing: close once answered
    U_POLLOUT = 16              # a POLLOUT poll is armed
    U_OPS = U_RECV | U_SEND | U_POLLOUT  # requests that hold the fd
    UR_ENTRIES = 4096           # SQ size (CQ: 4x)
    UR_BUFS = 1024              # provided receive buffers (a power of two), shared by all:
    UR_BUF_SIZE = 2048          # 2 MiB per worker; a longer request simply takes several

cdef inline uint64_t _ud(int op, int fd) noexcept nogil:
    return (<uint64_t>op << 32) | <uint32_t>fd


def uring_unavailable():
    """'' when this process can run the io_uring backend, else why not (one line)."""
    cdef fc_ring *r = <fc_ring *>calloc(1, sizeof(fc_ring))
    cdef const char *stage = NULL
    cdef int e
    if r == NULL:
        raise MemoryError()
    e = fc_ring_open(r, 8, 8, 64, &stage)
    if e == 0:
        fc_ring_close(r)
    free(r)
    return "" if e == 0 else f"{stage.decode()}: {os.strerror(-e)}"


cdef str u_open(Worker w):
    """Set the ring up and arm the listener and the wake eventfd; '' or why not."""
    cdef const char *stage = NULL
    cdef int e
    w.ring = <fc_ring *>calloc(1, sizeof(fc_ring))
    w.uc = <UConn *>calloc(w.nconns, sizeof(UConn))  # pages are touched only as fds are used
    if w.ring == NULL or w.uc == NULL:
        e = -ENOMEM
        stage = b"ring tables"
    else:
        e = fc_ring_open(w.ring, UR_ENTRIES, UR_BUFS, UR_BUF_SIZE, &stage)
    if e < 0:
        free(w.ring)
        free(w.uc)
        w.ring = NULL
        w.uc = NULL
        return f"{stage.decode()}: {os.strerror(-e)}"
    w.u_zombies = 0
    w.u_at = w.u_n = 0
    w.u_rest = 0
    w.u_accept_armed = False
    u_listen(w, True)
    fc_poll(w.ring, w.efd, POLLIN, _ud(UD_WAKE, w.efd))
    return ""


cdef void u_close(Worker w) noexcept nogil:
    """After the loop (every connection closed): reap every completion left (an accept's
    holds a new fd: closed here), wait briefly for those of the cancels, close the fds they
    held, release the ring."""
    cdef int fd, k
    cdef unsigned n, i
    cdef UConn *u
    w.accepting = False  # the accept's last completion must not re-arm it
    u_listen(w, False)
    w.quit = True
    for k in range(100):
        n = fc_reap(w.ring)  # a stop can be reaped before a burst of accepts queued behind it
        for i in range(n):
            u_complete(w, &w.ring.cqes[i])
        if n == 0 and w.u_zombies == 0 and not w.u_accept_armed:
            break
        fc_enter(w.ring, 10)
    fc_ring_close(w.ring)  # the kernel cancels what is still in flight
    for fd in range(w.max_fd + 1):
        u = &w.uc[fd]
        if u.flags & U_ZOMBIE:
            close(fd)  # a send the kernel never completed keeps its (small) block
    free(w.ring)
    free(w.uc)
    w.ring = NULL
    w.uc = NULL


cdef uint64_t u_round(Worker w) noexcept nogil:
    """One iteration's I/O: submit and wait (one io_uring_enter), then every completion.
    Returns the time the wait ended (for the loop-lag histogram)."""
    cdef int r = fc_enter(w.ring, w._wait_ms())
    cdef uint64_t t0 = _clock_ns(CLOCK_MONOTONIC)
    cdef unsigned n, i
    w._tick()
    if r == -EINTR:
        w.last_signal_check = w.now - MAX_WAIT_MS
    n = fc_reap(w.ring)
    w.m[I_LOOP_WAITS] += 1
    w.m[I_LOOP_EVENTS] += n
    w.u_n = n
    for i in range(n):
        w.u_at = i
        u_complete(w, &w.ring.cqes[i])
    w.u_n = 0
    return t0


cdef void u_complete(Worker w, fc_cqe *e) noexcept nogil:
    cdef int op = <int>(e.user_data >> 32)
    cdef int fd = <int>(e.user_data & 0xFFFFFFFFULL)
    if op == UD_RECV:
        u_on_recv(w, fd, e)
    elif op == UD_SEND:
        u_on_send(w, fd, e.res)
    elif op == UD_ACCEPT:
        u_on_accept(w, e)
    elif op == UD_POLLOUT:
        u_on_pollout(w, fd)
    elif op == UD_WAKE:
        w._on_wake()
        if not w.quit:
            fc_poll(w.ring, w.efd, POLLIN, _ud(UD_WAKE, w.efd))


# --- the listener -------------------------------------------------------------------------
cdef void u_listen(Worker w, bint on) noexcept nogil:
    if on and not w.u_accept_armed:
        w.u_accept_armed = fc_accept_multi(w.ring, w.lfd, _ud(UD_ACCEPT, w.lfd)) == 0
    elif not on and w.u_accept_armed:
        fc_cancel(w.ring, _ud(UD_ACCEPT, w.lfd), _ud(UD_CANCEL, w.lfd))


cdef void u_on_accept(Worker w, fc_cqe *e) noexcept nogil:
    cdef int err
    if not (e.flags & FC_CQE_F_MORE):
        w.u_accept_armed = False  # ended (cancelled, or an error): re-armed below if wanted
    if e.res >= 0:
        if w.quit:
            close(e.res)
        else:
            w._admit(e.res)  # even while pausing: the kernel already accepted it
    else:
        err = -e.res
        if (err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM) and w.accepting:
            w._pause_accepting()
            return
    if w.accepting and not w.u_accept_armed:
        u_listen(w, True)


# --- a connection ---------------------------------------------------------------------------
cdef int u_watch(Worker w, int fd) noexcept nogil:
    """A new connection: its multishot recv (the listener's TCP_NODELAY is inherited)."""
    cdef UConn *u = &w.uc[fd]
    memset(u, 0, sizeof(UConn))
    if fc_recv_multi(w.ring, fd, _ud(UD_RECV, fd)) < 0:
        return -1
    u.flags = U_RECV
    return 0


cdef void u_interest(Worker w, int fd, Conn *c, bint out) noexcept nogil:
    """out: stop reading (cancel the recv); else read again (re-arm it if it ended)."""
    cdef UConn *u = &w.uc[fd]
    if out:
        if not (c.flags & F_PAUSED):
            c.flags |= F_PAUSED
            if u.flags & U_RECV:
                fc_cancel(w.ring, _ud(UD_RECV, fd), _ud(UD_CANCEL, fd))
        if c.flags & F_STREAM and not (u.flags & U_POLLOUT):
            if fc_poll(w.ring, fd, POLLOUT, _ud(UD_POLLOUT, fd)) == 0:
                u.flags |= U_POLLOUT
        return
    c.flags &= ~F_PAUSED
    if not (u.flags & (U_RECV | U_EOF | U_ZOMBIE)):
        if fc_recv_multi(w.ring, fd, _ud(UD_RECV, fd)) == 0:
            u.flags |= U_RECV


cdef void u_release(Worker w, int fd) noexcept nogil:
    """_close's last step: the fd is closed now, or (requests in flight) after the cancel."""
    cdef UConn *u = &w.uc[fd]
    free(u.pbuf)
    free(u.xbuf)
    u.pbuf = u.xbuf = NULL
    u.plen = u.xlen = 0
    if u.flags & U_OPS:
        fc_cancel_fd(w.ring, fd, _ud(UD_CANCEL, fd))
        u.flags = (u.flags & U_OPS) | U_ZOMBIE
        w.u_zombies += 1
        return
    close(fd)
    memset(u, 0, sizeof(UConn))


cdef inline void u_reap_zombie(Worker w, int fd, UConn *u) noexcept nogil:
    if not (u.flags & U_OPS):
        close(fd)
        memset(u, 0, sizeof(UConn))
        w.u_zombies -= 1


cdef void u_on_recv(Worker w, int fd, fc_cqe *e) noexcept nogil:
    cdef UConn *u = &w.uc[fd]
    cdef Conn *c = &w.conns[fd]
    cdef int res = e.res
    cdef unsigned bid = 0
    cdef bint has_buf = (e.flags & FC_CQE_F_BUFFER) != 0
    if has_buf:
        bid = e.flags >> FC_CQE_BUFFER_SHIFT
    if not (e.flags & FC_CQE_F_MORE):
        u.flags &= ~U_RECV
    if u.flags & U_ZOMBIE:
        if has_buf:
            fc_buf_put(w.ring, bid)
        u_reap_zombie(w, fd, u)
        return
    if res > 0:
        if has_buf:
            if c.state != S_LINGER:
                w.m[I_BYTES_IN] += res
            u_feed(w, fd, c, u, fc_buf(w.ring, bid), <size_t>res)
            fc_buf_put(w.ring, bid)
    elif res == 0:  # the peer's FIN
        if c.state != S_FREE:
            if c.out_len or c.flags & F_STREAM:
                u.flags |= U_EOF  # answer what was asked first, as the epoll path does
            else:
                w._close(fd, c)
        return
    elif res != -ENOBUFS and res != -ECANCELED:
        if c.state != S_FREE:
            w._close(fd, c)  # reset, or another error
        return
    # ENOBUFS (ring empty for a moment), a cancel, or the kernel ended it: re-arm if reading
    if c.state != S_FREE and not (u.flags & (U_RECV | U_ZOMBIE | U_EOF)) and not (c.flags & F_PAUSED):
        if fc_recv_multi(w.ring, fd, _ud(UD_RECV, fd)) == 0:
            u.flags |= U_RECV


cdef inline uint32_t u_unread(Worker w, int fd) noexcept nogil:
    return w.uc[fd].xlen


cdef bint u_more_input(Worker w, int fd) noexcept nogil:
    """Bytes of fd already received but not in its buffer yet (the rest of this receive,
    the stash, a later completion): what epoll would still find in the socket."""
    return w.u_rest > 0 or w.uc[fd].xlen > 0 or \
        fc_more_data(w.ring, w.u_at + 1, w.u_n, _ud(UD_RECV, fd)) != 0


cdef void u_feed(Worker w, int fd, Conn *c, UConn *u, const char *data, size_t n) noexcept nogil:
    """Bytes received: into the connection's buffer and through _process, as after a read()."""
    cdef size_t k
    if c.state == S_LINGER or c.state == S_FREE:
        return  # lingering close: read and discard
    c.flags &= ~F_FRESH
    while n:
        if u.xlen:
            u_stash(w, fd, c, u, data, n)  # behind the bytes already waiting
            return
        if c.buf == NULL:
            c.buf = w._buf_get()
            if c.buf == NULL:
                w.m[I_POOL_EXHAUSTED] += 1  # as the epoll path: 503, close
                c.flags &= ~F_KEEP
                w._error(fd, c, 503, False, -1)
                w._flush(fd, c)
                return
        k = w.pool.bufsize - c.buf_len
        if k > n:
            k = n
        memcpy(c.buf + c.buf_len, data, k)
        c.buf_len += <uint32_t>k
        data += k
        n -= k
        if c.out_len or c.flags & F_STREAM:  # writing (a stream's writes are direct): parsed once sent
            if n:  # and the buffer is full: stash the rest, stop reading
                u_interest(w, fd, c, True)
                u_stash(w, fd, c, u, data, n)
            return
        if c.tkind == T_IDLE:
            t_clear(w.conns, w.tl, fd)
        w.u_rest = n
        w._process(fd, c)
        w.u_rest = 0
        if c.state == S_FREE or c.state == S_LINGER:
            return


cdef void u_stash(Worker w, int fd, Conn *c, UConn *u, const char *data, size_t n) noexcept nogil:
    """Keep input that arrived while writing (bounded: the recv is cancelled meanwhile)."""
    cdef char *x = <char *>realloc(u.xbuf, u.xlen + n)
    if x == NULL:
        w._close(fd, c)
        return
    memcpy(x + u.xlen, data, n)
    u.xbuf = x
    u.xlen += <uint32_t>n


cdef int u_flush(Worker w, int fd, Conn *c) noexcept nogil:
    """_flush: the queued pieces copied into one block, sent by one queued send (or queued
    behind the send in flight). 1: output pending (always, until its completion); -1: closed."""
    cdef UConn *u = &w.uc[fd]
    cdef size_t total = w.out_total, k = 0
    cdef char *p
    cdef int i
    if w.niov == 0:
        return 1 if c.out_len else 0
    if u.flags & U_SEND:
        p = <char *>realloc(u.pbuf, u.plen + total)
        k = u.plen
    else:
        p = <char *>malloc(total)
    if p == NULL:
        w.niov = 0
        w.out_total = w.arena_used = 0
        w._close(fd, c)
        return -1
    for i in range(w.niov):
        memcpy(p + k, w.iov[i].iov_base, w.iov[i].iov_len)
        k += w.iov[i].iov_len
    w.niov = 0
    w.out_total = w.arena_used = 0
    c.out_len += <uint32_t>total
    if u.flags & U_SEND:
        u.pbuf = p
        u.plen = <uint32_t>k
        return 1
    u.sbuf = p
    u.slen = <uint32_t>total
    u.soff = 0
    if u_send(w, fd, u) < 0:
        w._close(fd, c)
        return -1
    return 1


cdef inline int u_send(Worker w, int fd, UConn *u) noexcept nogil:
    if fc_send(w.ring, fd, u.sbuf + u.soff, u.slen - u.soff, _ud(UD_SEND, fd)) < 0:
        free(u.sbuf)
        u.sbuf = NULL
        return -1
    u.flags |= U_SEND
    t_set(w.conns, w.tl, fd, T_SEND, w.now)  # started, or progress: the send timer (re)starts
    return 0


cdef void u_on_send(Worker w, int fd, int res) noexcept nogil:
    cdef UConn *u = &w.uc[fd]
    cdef Conn *c = &w.conns[fd]
    u.flags &= ~U_SEND
    if u.flags & U_ZOMBIE:
        free(u.sbuf)
        u.sbuf = NULL
        u_reap_zombie(w, fd, u)
        return
    if res <= 0:
        free(u.sbuf)
        u.sbuf = NULL
        w._close(fd, c)  # reset, EPIPE
        return
    w.m[I_BYTES_OUT] += res
    u.soff += res
    c.out_len -= res
    if u.soff < u.slen:  # short: the rest
        if u_send(w, fd, u) < 0:
            w._close(fd, c)
        return
    free(u.sbuf)
    u.sbuf = NULL
    if u.pbuf != NULL:
        u.sbuf, u.slen, u.soff = u.pbuf, u.plen, 0
        u.pbuf = NULL
        u.plen = 0
        if u_send(w, fd, u) < 0:
            w._close(fd, c)
        return
    u_sent(w, fd, c, u)


cdef void u_on_pollout(Worker w, int fd) noexcept nogil:
    cdef UConn *u = &w.uc[fd]
    cdef Conn *c = &w.conns[fd]
    u.flags &= ~U_POLLOUT
    if u.flags & U_ZOMBIE:
        u_reap_zombie(w, fd, u)
    elif c.state != S_FREE and not c.out_len:
        u_sent(w, fd, c, u)


cdef void u_sent(Worker w, int fd, Conn *c, UConn *u) noexcept nogil:
    """Everything sent (the epoll path's _on_write end): a WSGI stream goes on; then close,
    or go on with what waited."""
    cdef char *x
    cdef uint32_t xlen
    if c.flags & F_STREAM and w._pump(fd, c) != 0:
        return  # still streaming (POLLOUT armed), or closed
    t_clear(w.conns, w.tl, fd)
    if c.flags & F_CLOSING:
        w._linger(fd, c)
    elif c.buf_len:
        w._process(fd, c)  # requests that arrived while writing
    else:
        w._after(fd, c, False)
    while u.xlen and c.state != S_FREE and c.state != S_LINGER and not c.out_len:
        x, xlen = u.xbuf, u.xlen
        u.xbuf = NULL
        u.xlen = 0
        u_feed(w, fd, c, u, x, xlen)
        free(x)
    if c.state == S_FREE or c.out_len or u.xlen:
        return
    if u.flags & U_EOF:
        w._close(fd, c)
    elif c.state != S_LINGER:
        u_interest(w, fd, c, False)
