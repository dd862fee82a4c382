# The io_uring calls of the C engine (core/uring.h wraps liburing; built without it, every
# call fails with ENOSYS and the engine serves with epoll).
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN
        POLLOUT


cdef extern from "uring.h" nogil:
    enum:
        FC_URING_BUILT
        FC_BATCH
        FC_CQE_F_MORE
        FC_CQE_F_BUFFER
        FC_CQE_BUFFER_SHIFT

    ctypedef struct fc_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    ctypedef struct fc_ring:
        fc_cqe cqes[FC_BATCH]

    int fc_ring_open(fc_ring *r, unsigned entries, unsigned nbufs, unsigned bufsize, const char **stage)
    void fc_ring_close(fc_ring *r)
    int fc_accept_multi(fc_ring *r, int lfd, uint64_t ud)
    int fc_recv_multi(fc_ring *r, int fd, uint64_t ud)
    int fc_send(fc_ring *r, int fd, const void *p, unsigned n, uint64_t ud)
    int fc_poll(fc_ring *r, int fd, unsigned events, uint64_t ud)
    int fc_cancel_fd(fc_ring *r, int fd, uint64_t ud)
    int fc_cancel(fc_ring *r, uint64_t target, uint64_t ud)
    int fc_enter(fc_ring *r, int wait_ms)
    unsigned fc_reap(fc_ring *r)
    int fc_more_data(fc_ring *r, unsigned start, unsigned n, uint64_t ud)
    char *fc_buf(fc_ring *r, unsigned bid)
    void fc_buf_put(fc_ring *r, unsigned bid)
