/* The io_uring calls of the C engine's io_uring backend (core/uring.pxi), over liburing.
 *
 * One ring per worker, SINGLE_ISSUER + DEFER_TASKRUN (completions are run only inside our
 * io_uring_enter, in our thread: no IPIs, no task-work interruptions mid-loop); one
 * provided-buffer ring that multishot recv takes from only when bytes arrive, so an idle
 * connection holds no buffer. SQEs are queued here and submitted by the one
 * io_uring_enter of each loop iteration (fc_enter).
 *
 * Built without liburing (FASTC1K_HAVE_LIBURING unset) every call fails with ENOSYS and
 * fc_ring_open says why: the engine then serves with epoll.
 */
#ifndef FC_URING_H
#define FC_URING_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <poll.h>

#define FC_BATCH 512            /* CQEs handled per reap */
#define FC_BGID 1               /* the provided-buffer group of multishot recv */

typedef struct { uint64_t user_data; int32_t res; uint32_t flags; } fc_cqe;

#ifdef FASTC1K_HAVE_LIBURING
#include <liburing.h>

#define FC_URING_BUILT 1
#define FC_CQE_F_MORE IORING_CQE_F_MORE
#define FC_CQE_F_BUFFER IORING_CQE_F_BUFFER
#define FC_CQE_BUFFER_SHIFT IORING_CQE_BUFFER_SHIFT

typedef struct {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_size;
    char *bufs;
    unsigned nbufs, bufsize, mask;
    int returned;               /* buffers given back since the last fc_enter */
    int registered;
    fc_cqe cqes[FC_BATCH];
} fc_ring;

#define FC_HUGE (2u << 20)       /* a transparent huge page (x86-64, arm64 4 KiB granule) */

/* The receive buffers: nbufs * bufsize bytes, touched now (a fixed cost of the worker, not
   memory that seems to grow with the first connections). The kernel takes them in ring
   order, so the receives cycle through all of them: on 4 KiB pages most of its copies
   missed the TLB (_copy_to_iter ~6 % of the worker's CPU at c=1000, ~1.3 % on a huge
   page). Hence a region aligned to a huge page and advised to be one: only advice (THP
   "never", or no huge page free: 4 KiB pages, as before). */
static char *fc_bufs_alloc(size_t sz)
{
    char *raw, *p;
    size_t head;
    if (sz % FC_HUGE)
        return mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE | MAP_POPULATE, -1, 0);
    raw = mmap(NULL, sz + FC_HUGE, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (raw == MAP_FAILED)
        return raw;
    p = (char *)(((uintptr_t)raw + FC_HUGE - 1) & ~(uintptr_t)(FC_HUGE - 1));
    head = (size_t)(p - raw);
    if (head)
        munmap(raw, head);
    munmap(p + sz, FC_HUGE - head);
    madvise(p, sz, MADV_HUGEPAGE);
    memset(p, 0, sz);
    return p;
}

/* 0, or -errno with *stage naming the step that failed. */
static int fc_ring_open(fc_ring *r, unsigned entries, unsigned nbufs, unsigned bufsize, const char **stage)
{
    struct io_uring_params p;
    struct io_uring_buf_reg reg;
    unsigned i;
    int e;
    memset(r, 0, sizeof(*r));
    memset(&p, 0, sizeof(p));
    /* DEFER_TASKRUN needs Linux 6.1: a kernel that accepts it also has multishot recv
       (6.0), provided-buffer rings (5.19) and cancel-by-fd (5.19). */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    e = io_uring_queue_init_params(entries, &r->ring, &p);
    if (e < 0) {
        *stage = "io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN (Linux >= 6.1)";
        return e;
    }
    if (!(p.features & IORING_FEAT_EXT_ARG)) {
        io_uring_queue_exit(&r->ring);
        *stage = "IORING_FEAT_EXT_ARG";
        return -ENOSYS;
    }
    r->nbufs = nbufs;
    r->bufsize = bufsize;
    r->mask = nbufs - 1;
    r->br_size = nbufs * sizeof(struct io_uring_buf);
    r->br = mmap(NULL, r->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    r->bufs = fc_bufs_alloc((size_t)nbufs * bufsize);
    if (r->br == MAP_FAILED || r->bufs == MAP_FAILED) {
        if (r->br != MAP_FAILED)
            munmap(r->br, r->br_size);
        if (r->bufs != MAP_FAILED)
            munmap(r->bufs, (size_t)nbufs * bufsize);
        io_uring_queue_exit(&r->ring);
        *stage = "buffer ring memory";
        return -ENOMEM;
    }
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)r->br;
    reg.ring_entries = nbufs;
    reg.bgid = FC_BGID;
    e = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (e < 0) {
        munmap(r->br, r->br_size);
        munmap(r->bufs, (size_t)nbufs * bufsize);
        io_uring_queue_exit(&r->ring);
        *stage = "io_uring_register_buf_ring";
        return e;
    }
    io_uring_buf_ring_init(r->br);
    for (i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * bufsize, bufsize, i, r->mask, i);
    io_uring_buf_ring_advance(r->br, nbufs);
    r->registered = 1;
    return 0;
}

static void fc_ring_close(fc_ring *r)
{
    if (!r->registered)
        return;
    io_uring_queue_exit(&r->ring);  /* cancels what is left; the kernel drops its refs */
    munmap(r->br, r->br_size);
    munmap(r->bufs, (size_t)r->nbufs * r->bufsize);
    r->registered = 0;
}

/* The next SQE, its user_data set; NULL only if the kernel took none of a full SQ. */
static inline struct io_uring_sqe *fc_sqe(fc_ring *r, uint64_t ud)
{
    struct io_uring_sqe *s = io_uring_get_sqe(&r->ring);
    if (s == NULL) {            /* the SQ is full this iteration: submit early */
        io_uring_submit(&r->ring);
        s = io_uring_get_sqe(&r->ring);
    }
    if (s != NULL)
        io_uring_sqe_set_data64(s, ud);
    return s;
}

static inline int fc_accept_multi(fc_ring *r, int lfd, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    /* non-blocking like accept4's: io_uring still waits for data/room itself, and the
       few direct calls (a WSGI stream's writes, shutdown) must never block the loop */
    io_uring_prep_multishot_accept(s, lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return 0;
}

static inline int fc_recv_multi(fc_ring *r, int fd, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = FC_BGID;
    return 0;
}

static inline int fc_send(fc_ring *r, int fd, const void *p, unsigned n, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    io_uring_prep_send(s, fd, p, n, MSG_NOSIGNAL);
    return 0;
}

static inline int fc_poll(fc_ring *r, int fd, unsigned events, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    io_uring_prep_poll_add(s, fd, events);
    return 0;
}

/* Cancel every request on fd (all: the recv, a send waiting for room). */
static inline int fc_cancel_fd(fc_ring *r, int fd, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
    return 0;
}

/* Cancel the one request whose user_data is `target`. */
static inline int fc_cancel(fc_ring *r, uint64_t target, uint64_t ud)
{
    struct io_uring_sqe *s = fc_sqe(r, ud);
    if (s == NULL)
        return -EBUSY;
    io_uring_prep_cancel64(s, target, 0);
    return 0;
}

/* The loop's one io_uring_enter: give back the buffers consumed, submit what was queued,
   wait up to wait_ms for a completion. <0: -ETIME, -EINTR (both fine) or an error. */
static inline int fc_enter(fc_ring *r, int wait_ms)
{
    struct __kernel_timespec ts;
    struct io_uring_cqe *cqe;
    if (r->returned) {
        io_uring_buf_ring_advance(r->br, r->returned);
        r->returned = 0;
    }
    ts.tv_sec = wait_ms / 1000;
    ts.tv_nsec = (long long)(wait_ms % 1000) * 1000000;
    return io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
}

/* Copy out up to FC_BATCH completions into r->cqes and free their CQ slots. */
static inline unsigned fc_reap(fc_ring *r)
{
    struct io_uring_cqe *c[FC_BATCH];
    unsigned n = io_uring_peek_batch_cqe(&r->ring, c, FC_BATCH), i;
    for (i = 0; i < n; i++) {
        r->cqes[i].user_data = c[i]->user_data;
        r->cqes[i].res = c[i]->res;
        r->cqes[i].flags = c[i]->flags;
    }
    io_uring_cq_advance(&r->ring, n);
    return n;
}

/* 1 when a completion after r->cqes[from] (of the n reaped, or still in the CQ) brings
   bytes for `ud`: the kernel already took them from the socket. */
static inline int fc_more_data(fc_ring *r, unsigned from, unsigned n, uint64_t ud)
{
    struct io_uring_cqe *cqe;
    unsigned head, i;
    for (i = from; i < n; i++)
        if (r->cqes[i].user_data == ud && r->cqes[i].res > 0)
            return 1;
    io_uring_for_each_cqe(&r->ring, head, cqe)
        if (cqe->user_data == ud && cqe->res > 0)
            return 1;
    return 0;
}

static inline char *fc_buf(fc_ring *r, unsigned bid)
{
    return r->bufs + (size_t)bid * r->bufsize;
}

/* Give a provided buffer back (visible to the kernel at the next fc_enter). */
static inline void fc_buf_put(fc_ring *r, unsigned bid)
{
    io_uring_buf_ring_add(r->br, fc_buf(r, bid), r->bufsize, bid, r->mask, r->returned);
    r->returned++;
}

#else  /* built without liburing */

#define FC_URING_BUILT 0
#define FC_CQE_F_MORE 2
#define FC_CQE_F_BUFFER 1
#define FC_CQE_BUFFER_SHIFT 16

typedef struct { int registered; fc_cqe cqes[FC_BATCH]; } fc_ring;

static int fc_ring_open(fc_ring *r, unsigned entries, unsigned nbufs, unsigned bufsize, const char **stage)
{
    (void)entries; (void)nbufs; (void)bufsize;
    memset(r, 0, sizeof(*r));
    *stage = "fastc1k was built without liburing";
    return -ENOSYS;
}
static void fc_ring_close(fc_ring *r) { (void)r; }
static inline int fc_accept_multi(fc_ring *r, int lfd, uint64_t ud) { (void)r; (void)lfd; (void)ud; return -ENOSYS; }
static inline int fc_recv_multi(fc_ring *r, int fd, uint64_t ud) { (void)r; (void)fd; (void)ud; return -ENOSYS; }
static inline int fc_send(fc_ring *r, int fd, const void *p, unsigned n, uint64_t ud)
{ (void)r; (void)fd; (void)p; (void)n; (void)ud; return -ENOSYS; }
static inline int fc_poll(fc_ring *r, int fd, unsigned events, uint64_t ud)
{ (void)r; (void)fd; (void)events; (void)ud; return -ENOSYS; }
static inline int fc_cancel_fd(fc_ring *r, int fd, uint64_t ud) { (void)r; (void)fd; (void)ud; return -ENOSYS; }
static inline int fc_cancel(fc_ring *r, uint64_t t, uint64_t ud) { (void)r; (void)t; (void)ud; return -ENOSYS; }
static inline int fc_enter(fc_ring *r, int wait_ms) { (void)r; (void)wait_ms; return -ENOSYS; }
static inline unsigned fc_reap(fc_ring *r) { (void)r; return 0; }
static inline int fc_more_data(fc_ring *r, unsigned from, unsigned n, uint64_t ud)
{ (void)r; (void)from; (void)n; (void)ud; return 0; }
static inline char *fc_buf(fc_ring *r, unsigned bid) { (void)r; (void)bid; return NULL; }
static inline void fc_buf_put(fc_ring *r, unsigned bid) { (void)r; (void)bid; }

#endif
#endif
