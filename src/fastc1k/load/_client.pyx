# The load generator's hot loop: one epoll loop over N client connections, run with
# the GIL released. Python is called once per control tick (by default each second),
# never per request.
#
# Strategy
# - Requests are prebuilt bytes; a batch of k pipelined requests is one send/writev.
# - Responses are framed by a streaming parser that keeps only a small line buffer per
#   connection (status line, header lines of interest, chunk-size lines); bodies are
#   skipped by length, never copied. Header lines we do not care about are skipped
#   with memchr.
# - Every in-flight request has an entry in the connection's ring: intended send time,
#   actual send time, request index. On a response: corrected latency = now - intended
#   (coordinated-omission corrected, as wrk2) and service time = now - sent.
# - Open loop: request j of this process is due at start + j / rate and belongs to
#   connection j mod N, so connection i's k-th request is due at start + (i + kN)/rate.
#   A free connection sends when its request falls due; a busy one sends its backlog as
#   soon as an answer frees it, with latency still measured from the due time.
# - Latency goes into two HdrHistogram-layout counts arrays (lowest 1 us, highest 1 h,
#   3 significant digits: the same index function as the hdrhistogram package), so the
#   Python side loads them into hdrh.HdrHistogram without conversion.
from cpython.bytes cimport PyBytes_AsString, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastc1k.includes.system cimport *
from fastc1k.load._sys cimport fc1k_epoll_pwait2

import socket as _socket


cdef enum:
    RBUF_SIZE = 65536
    LBUF = 256              # kept bytes of a line split across reads (status / header / chunk size)
    MAX_LINE = 1048576      # a response line longer than this is a bad response
    MAX_EVENTS = 512
    MAX_DEPTH = 256
    NSTATUS = 600
    HOUSEKEEP_NS = 10000000     # ramp, retries: every 10 ms
    TIMEOUT_SCAN_NS = 100000000  # connect / read timeouts, retries: every 100 ms
    LATE_NS = 1000000           # a send more than 1 ms after its due time is late

# connection states
cdef enum:
    S_IDLE = 0        # slot not in use (beyond the target count)
    S_RETRY = 1       # waiting to reconnect after a failure
    S_CONNECTING = 2
    S_OPEN = 3

# parser states
cdef enum:
    P_STATUS = 0
    P_HEADER = 1
    P_BODY_CL = 2
    P_CHUNK_SIZE = 3
    P_CHUNK_DATA = 4
    P_CHUNK_CRLF = 5
    P_TRAILER = 6
    P_BODY_EOF = 7

# response header flags
cdef enum:
    F_HAS_CL = 1
    F_CHUNKED = 2
    F_CLOSE = 4
    F_KEEPALIVE = 8
    F_HTTP10 = 16
    F_TE_OTHER = 32

# counters (cumulative); the Python side names them with COUNTER_NAMES, same order
cdef enum:
    C_SENT = 0
    C_DONE
    C_OK
    C_REFUSED
    C_RESET
    C_CONNECT_TIMEOUT
    C_READ_TIMEOUT
    C_ADDRNOTAVAIL
    C_EMFILE
    C_BAD_RESPONSE
    C_CONNECT_ERROR
    C_CONNECTS_OK
    C_CONNECTS_FAILED
    C_SCHEDULED
    C_LATE
    C_GEN_LATE
    C_DROPPED
    C_BYTES_IN
    C_BYTES_OUT
    C_UNANSWERED
    C_OPEN
    N_COUNTERS

COUNTER_NAMES = (
    "sent", "done", "ok", "refused", "reset", "connect_timeout", "read_timeout",
    "addrnotavail", "emfile", "bad_response", "connect_error", "connects_ok",
    "connects_failed", "scheduled", "late_sends", "generator_late", "dropped",
    "bytes_in", "bytes_out", "unanswered", "connections_open",
)
assert len(COUNTER_NAMES) == N_COUNTERS

HIST_LOWEST = 1
HIST_HIGHEST = 3600 * 1000000     # 1 h in microseconds
HIST_DIGITS = 3
cdef int64_t H_MAX = 3600 * 1000000
cdef uint64_t CTL_TAG = 0xFFFFFFFFFFFFFFFF    # epoll tag of the control fd
cdef int64_t CL_MAX = 100000000000000         # Content-Length digits guard
# layout for (1, 1h, 3 digits): sub_bucket_count 2048, half count 1024 (magnitude 10),
# unit magnitude 0; the package's _counts_index_for, in C
cdef inline int64_t hist_index(int64_t v) noexcept nogil:
    cdef int64_t bucket, sub
    if v < 0:
        v = 0
    elif v > H_MAX:
        v = H_MAX
    bucket = (64 - __builtin_clzll(<unsigned long long>(v | 2047))) - 11
    sub = v >> bucket
    return ((bucket + 1) << 10) + (sub - 1024)

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
    enum: PR_SET_TIMERSLACK


cdef struct Slot:
    int64_t intended
    int64_t sent
    int req


cdef struct Conn:
    int fd
    int state
    uint32_t gen          # bumped per socket, so stale events in a batch are ignored
    uint32_t events       # registered epoll events
    int64_t deadline      # connect deadline (CONNECTING) or retry time (RETRY)
    int64_t next_k        # open loop: index of this connection's next request
    int head              # ring of in-flight requests: [head, head + count)
    int count
    int written           # entries of the ring fully written, from head
    int64_t wr_off        # bytes written of the entry after them
    int pstate
    int status
    int flags
    int64_t left          # body / chunk bytes left
    int lbuf_len          # true length of the pending partial line (may exceed LBUF);
                          # its first LBUF bytes are in Client.lbufs, apart, so that the
                          # timeout scan walks small structs


cdef inline int ring_pos(int i, int depth) noexcept nogil:
    # (i % depth) for 0 <= i < 2 * depth, without a division
    return i - depth if i >= depth else i


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic_ns():
    """CLOCK_MONOTONIC in ns, the clock every worker schedules by (system-wide)."""
    return mono_ns()


cdef inline bint name_is(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t ln) noexcept nogil:
    # ASCII case-insensitive compare; OR 0x20 folds letters and leaves '-' alone
    cdef Py_ssize_t i
    if n != ln:
        return False
    for i in range(n):
        if (p[i] | 0x20) != lower[i]:
            return False
    return True


cdef inline bint has_token(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t ln) noexcept nogil:
    # comma-separated list contains the token (case-insensitive)
    cdef Py_ssize_t i = 0, s, e
    while i < n:
        while i < n and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
            i += 1
        s = i
        while i < n and p[i] != b',':
            i += 1
        e = i
        while e > s and (p[e - 1] == b' ' or p[e - 1] == b'\t'):
            e -= 1
        if name_is(p + s, e - s, lower, ln):
            return True
    return False


cdef inline bint last_token_is(const char *p, Py_ssize_t n, const char *lower, Py_ssize_t ln) noexcept nogil:
    cdef Py_ssize_t e = n, s
    while e > 0 and (p[e - 1] == b' ' or p[e - 1] == b'\t'):
        e -= 1
    s = e
    while s > 0 and p[s - 1] != b',' and p[s - 1] != b' ' and p[s - 1] != b'\t':
        s -= 1
    return name_is(p + s, e - s, lower, ln)


cdef inline void _clear_exchange(Conn *c) noexcept nogil:
    """Forget a connection's requests in flight and its response parser state."""
    c.count = 0
    c.head = 0
    c.written = 0
    c.wr_off = 0
    c.pstate = P_STATUS
    c.flags = 0
    c.lbuf_len = 0


cdef class Client:
    cdef:
        int ep
        int ctl_fd
        bint use_pwait2
        Conn *conns
        Slot *ring
        int cap
        int depth
        int target
        int active_upto
        double ramp_rate
        int64_t ramp_t0
        int ramp_base
        sockaddr_in dst
        sockaddr_in *srcs
        int nsrc
        int src_offset
        # prebuilt requests and the weighted mix
        object req_objs
        const char **rq_data
        Py_ssize_t *rq_len
        char *rq_head
        int nreq
        int *mix
        int mixlen
        uint32_t mix_pos
        # open loop schedule
        bint open_loop
        double rate
        double interval_ns
        int64_t sched_start
        int64_t sched_j
        int64_t sched_sent
        int64_t sched_counted     # due sends of started slots since the rebase
        int sched_n
        int64_t next_sched
        # timeouts, ns
        int64_t connect_timeout
        int64_t request_timeout
        int64_t retry_delay
        int64_t next_hk
        int64_t next_scan
        int64_t cnt[N_COUNTERS]
        int64_t *status_cnt
        int counts_len
        int64_t *hist_c
        int64_t *hist_s
        int64_t max_c
        int64_t max_s
        char *rbuf
        char *lbufs
        bint started

    def __cinit__(self):
        self.ep = -1
        self.ctl_fd = -1

    def __init__(self, str host, int port, list requests, list mix, int capacity, int depth,
                 int connections, bint open_loop=False, double rate=0.0, double ramp_rate=0.0,
                 double connect_timeout=2.0, double request_timeout=5.0,
                 double retry_delay=0.1, list source_ips=None, int src_offset=0,
                 int counts_len=23552, int ctl_fd=-1):
        """requests: [(bytes, is_head)]; mix: request indices, cycled (weights expanded)."""
        cdef int i
        if depth < 1 or depth > MAX_DEPTH:
            raise ValueError(f"pipeline depth must be 1..{MAX_DEPTH}")
        if capacity < 0 or connections < 0 or connections > capacity:
            raise ValueError("connections must be 0..capacity")
        if not requests or not mix:
            raise ValueError("no requests")
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.cap = capacity
        self.depth = depth
        self.target = connections
        self.ramp_rate = ramp_rate
        self.counts_len = counts_len
        self.connect_timeout = <int64_t>(connect_timeout * 1e9)
        self.request_timeout = <int64_t>(request_timeout * 1e9)
        self.retry_delay = <int64_t>(retry_delay * 1e9)
        self.ctl_fd = ctl_fd
        self.open_loop = open_loop
        self.rate = rate
        self.use_pwait2 = True
        memset(self.cnt, 0, sizeof(self.cnt))
        memset(&self.dst, 0, sizeof(self.dst))
        self.dst.sin_family = AF_INET
        self.dst.sin_port = _socket.htons(port)
        self.dst.sin_addr.s_addr = int.from_bytes(_socket.inet_aton(host), "little")

        self.conns = <Conn *>calloc(max(capacity, 1), sizeof(Conn))
        self.ring = <Slot *>calloc(max(capacity, 1) * depth, sizeof(Slot))
        self.status_cnt = <int64_t *>calloc(NSTATUS, sizeof(int64_t))
        self.hist_c = <int64_t *>calloc(counts_len, sizeof(int64_t))
        self.hist_s = <int64_t *>calloc(counts_len, sizeof(int64_t))
        self.rbuf = <char *>malloc(RBUF_SIZE)
        self.lbufs = <char *>malloc(<size_t>max(capacity, 1) * LBUF)
        self.nreq = len(requests)
        self.req_objs = [bytes(r[0]) for r in requests]
        self.rq_data = <const char **>calloc(self.nreq, sizeof(char *))
        self.rq_len = <Py_ssize_t *>calloc(self.nreq, sizeof(Py_ssize_t))
        self.rq_head = <char *>calloc(self.nreq, 1)
        self.mixlen = len(mix)
        self.mix = <int *>calloc(self.mixlen, sizeof(int))
        source_ips = source_ips or []
        self.nsrc = len(source_ips)
        self.srcs = <sockaddr_in *>calloc(max(self.nsrc, 1), sizeof(sockaddr_in))
        if (self.conns == NULL or self.ring == NULL or self.status_cnt == NULL or self.hist_c == NULL
                or self.hist_s == NULL or self.rbuf == NULL or self.lbufs == NULL or self.rq_data == NULL
                or self.rq_len == NULL or self.rq_head == NULL or self.mix == NULL or self.srcs == NULL):
            raise MemoryError()
        for i in range(self.nreq):
            self.rq_data[i] = PyBytes_AsString(self.req_objs[i])
            self.rq_len[i] = PyBytes_GET_SIZE(self.req_objs[i])
            self.rq_head[i] = 1 if requests[i][1] else 0
        for i in range(self.mixlen):
            if not 0 <= mix[i] < self.nreq:
                raise ValueError("mix index out of range")
            self.mix[i] = mix[i]
        for i in range(self.nsrc):
            self.srcs[i].sin_family = AF_INET
            self.srcs[i].sin_addr.s_addr = int.from_bytes(_socket.inet_aton(source_ips[i]), "little")
        self.src_offset = src_offset
        for i in range(capacity):
            self.conns[i].fd = -1
        # 1 ns timer slack: open-loop sends wake on time instead of up to 50 us late
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
        self.ep = epoll_create1(EPOLL_CLOEXEC)
        if self.ep < 0:
            raise OSError(errno, "epoll_create1")
        cdef epoll_event ev
        if ctl_fd >= 0:
            ev.events = EPOLLIN
            ev.data.u64 = CTL_TAG
            if epoll_ctl(self.ep, EPOLL_CTL_ADD, ctl_fd, &ev) < 0:
                raise OSError(errno, "epoll_ctl(control fd)")

    def __dealloc__(self):
        cdef int i
        if self.conns != NULL:
            for i in range(self.cap):
                if self.conns[i].fd >= 0:
                    close(self.conns[i].fd)
        if self.ep >= 0:
            close(self.ep)
        free(self.conns)
        free(self.ring)
        free(self.status_cnt)
        free(self.hist_c)
        free(self.hist_s)
        free(self.rbuf)
        free(self.lbufs)
        free(self.rq_data)
        free(self.rq_len)
        free(self.rq_head)
        free(self.mix)
        free(self.srcs)

    # ---- Python-facing control (called once per tick or on a command) ----

    def start(self, int64_t start_ns):
        """Begin at start_ns (CLOCK_MONOTONIC): connections open from then (ramped)."""
        self.started = True
        self.ramp_t0 = start_ns
        self.ramp_base = 0
        self.next_hk = start_ns
        self.next_scan = start_ns
        self._rebase(start_ns)

    def set_connections(self, int n):
        if n < 0 or n > self.cap:
            raise ValueError(f"connections must be 0..{self.cap} in this process")
        cdef int64_t now = mono_ns()
        self.target = n
        # a ramp goes on from what is open now
        self.ramp_base = min(self.active_upto, n)
        self.ramp_t0 = now
        self._rebase(now)
        self.next_hk = now

    def set_rate(self, double rate):
        if rate < 0:
            raise ValueError("rate must be >= 0")
        if not self.open_loop:
            raise ValueError("set_rate: this is a closed-loop client (started without a rate)")
        self.rate = rate
        self._rebase(mono_ns())

    def set_ramp(self, double ramp_rate):
        self.ramp_rate = ramp_rate

    cdef void _rebase(self, int64_t now) noexcept:
        # a new schedule from now; sends that were due and not sent are dropped
        cdef int i
        if self.open_loop:
            self.cnt[C_DROPPED] += (self.sched_counted - self.sched_sent
                                    if self.sched_counted > self.sched_sent else 0)
            self.interval_ns = 1e9 / self.rate if self.rate > 0 else 0.0
        self.sched_start = now
        self.sched_j = 0
        self.sched_sent = 0
        self.sched_counted = 0
        self.sched_n = self.target
        self.next_sched = now
        for i in range(self.cap):
            self.conns[i].next_k = 0

    def run(self, int64_t deadline_ns):
        """Run the loop until deadline_ns or until the control fd is readable.
        Returns True when the control fd is readable."""
        cdef bint ctl
        if not self.started:
            raise RuntimeError("start() first")
        with nogil:
            ctl = self._loop(deadline_ns)
        return ctl

    def counters(self):
        """Cumulative counters as a tuple in COUNTER_NAMES order, and {status: n} for non-2xx."""
        cdef int i
        st = {}
        for i in range(NSTATUS):
            if self.status_cnt[i]:
                st[i] = self.status_cnt[i]
        return tuple([self.cnt[i] for i in range(N_COUNTERS)]), st

    def take_interval(self):
        """Nonzero (index, count) pairs of both histograms since the last call, and their
        exact maxima in us; the interval histograms are then cleared."""
        cdef int i
        cdef list c = [], s = []
        for i in range(self.counts_len):
            if self.hist_c[i]:
                c.append((i, self.hist_c[i]))
                self.hist_c[i] = 0
            if self.hist_s[i]:
                s.append((i, self.hist_s[i]))
                self.hist_s[i] = 0
        r = (c, self.max_c, s, self.max_s)
        self.max_c = 0
        self.max_s = 0
        return r

    def record_for_test(self, int64_t corrected_us, int64_t service_us):
        """Record one value pair exactly as the loop does (for the layout tests)."""
        self._record(corrected_us, service_us)

    def close_all(self):
        cdef int i
        for i in range(self.cap):
            if self.conns[i].state != S_IDLE:
                self._close(i)
                self.conns[i].state = S_IDLE
        self.active_upto = 0
        self.target = 0

    # ---- the loop (no GIL) ----

    cdef inline void _record(self, int64_t c_us, int64_t s_us) noexcept nogil:
        self.hist_c[hist_index(c_us)] += 1
        self.hist_s[hist_index(s_us)] += 1
        if c_us > self.max_c:
            self.max_c = c_us
        if s_us > self.max_s:
            self.max_s = s_us

    cdef bint _loop(self, int64_t deadline) noexcept nogil:
        cdef epoll_event evs[MAX_EVENTS]
        cdef timespec ts
        cdef int n, i, ci
        cdef int64_t now, wake, wait_ns
        cdef uint64_t u
        cdef bint ctl = False
        cdef Conn *c
        while True:
            now = mono_ns()
            if now >= deadline:
                return False
            if now >= self.next_hk:
                self._housekeep(now)
            if self.open_loop and self.rate > 0 and self.sched_n > 0:
                self._advance_schedule(now)
            wake = deadline
            if self.next_hk < wake:
                wake = self.next_hk
            if self.open_loop and self.rate > 0 and self.sched_n > 0 and self.next_sched < wake:
                wake = self.next_sched
            wait_ns = wake - now
            if wait_ns < 0:
                wait_ns = 0
            if self.use_pwait2:
                ts.tv_sec = wait_ns // 1000000000
                ts.tv_nsec = wait_ns % 1000000000
                n = fc1k_epoll_pwait2(self.ep, evs, MAX_EVENTS, &ts)
                if n < 0 and errno == ENOSYS:
                    self.use_pwait2 = False
                    continue
            else:
                n = epoll_wait(self.ep, evs, MAX_EVENTS, <int>((wait_ns + 999999) // 1000000))
            if n <= 0:
                continue
            for i in range(n):
                u = evs[i].data.u64
                if u == CTL_TAG:
                    ctl = True
                    continue
                ci = <int><uint32_t>u
                c = &self.conns[ci]
                if c.gen != <uint32_t>(u >> 32) or c.fd < 0:
                    continue        # stale: the socket was replaced in this batch
                if c.state == S_CONNECTING:
                    self._connected(ci, mono_ns())
                elif c.state == S_OPEN:
                    if (evs[i].events & EPOLLOUT) and c.written < c.count:
                        if self._flush(ci) < 0:
                            continue
                    if evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                        self._readable(ci)
            if ctl:
                return True

    cdef void _housekeep(self, int64_t now) noexcept nogil:
        cdef int allowed, ci
        cdef double x
        cdef Conn *c
        self.next_hk = now + HOUSEKEEP_NS
        # ramp: open slots [active_upto, allowed); close slots beyond the target
        if self.ramp_rate > 0:
            allowed = self.ramp_base + <int>(self.ramp_rate * (now - self.ramp_t0) / 1e9)
            if allowed > self.target:
                allowed = self.target
        else:
            allowed = self.target
        if self.active_upto > self.target:
            for ci in range(self.target, self.active_upto):
                if self.conns[ci].state != S_IDLE:
                    self._close(ci)
                    self.conns[ci].state = S_IDLE
            self.active_upto = self.target
        while self.active_upto < allowed:
            ci = self.active_upto
            self.active_upto += 1
            if self.open_loop and self.rate > 0 and ci < self.sched_n:
                # a slot opened by the ramp owes nothing from before it existed: its
                # schedule starts at its first due time from now
                x = ((now - self.sched_start) / self.interval_ns - ci) / self.sched_n
                self.conns[ci].next_k = <int64_t>x + 1 if x > 0 else 0
            self._start_conn(ci, now)
        if now < self.next_scan:
            return
        self.next_scan = now + TIMEOUT_SCAN_NS
        for ci in range(self.active_upto):
            c = &self.conns[ci]
            if c.state == S_RETRY:
                if c.deadline <= now:
                    self._start_conn(ci, now)
            elif c.state == S_CONNECTING:
                if c.deadline <= now:
                    self._fail(ci, C_CONNECT_TIMEOUT, now)
            elif c.state == S_OPEN and c.count > 0:
                if now - self.ring[ci * self.depth + c.head].sent > self.request_timeout:
                    self.cnt[C_READ_TIMEOUT] += 1
                    self.cnt[C_UNANSWERED] += c.count - 1
                    self._close(ci)
                    self._start_conn(ci, now)

    cdef void _advance_schedule(self, int64_t now) noexcept nogil:
        cdef int64_t t
        cdef int ci
        cdef Conn *c
        while True:
            t = self.sched_start + <int64_t>(self.sched_j * self.interval_ns)
            if t > now:
                self.next_sched = t
                return
            ci = <int>(self.sched_j % self.sched_n)
            self.sched_j += 1
            if ci >= self.active_upto:
                continue                    # not opened yet (ramp): nothing is owed
            self.cnt[C_SCHEDULED] += 1
            self.sched_counted += 1
            c = &self.conns[ci]
            if c.state == S_OPEN and c.count < self.depth:
                if now - t > LATE_NS:
                    self.cnt[C_GEN_LATE] += 1      # the loop itself noticed the due time late
                self._send_due(ci, now)

    cdef inline int64_t _intended(self, int ci, int64_t k) noexcept nogil:
        return self.sched_start + <int64_t>((ci + k * self.sched_n) * self.interval_ns)

    cdef void _start_conn(self, int ci, int64_t now) noexcept nogil:
        cdef Conn *c = &self.conns[ci]
        cdef int fd, one = 1, e
        cdef epoll_event ev
        cdef sockaddr_in *src
        _clear_exchange(c)
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            e = errno
            self._fail(ci, C_EMFILE if (e == EMFILE or e == ENFILE) else C_CONNECT_ERROR, now)
            return
        c.fd = fd
        c.gen += 1
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if self.nsrc > 0:
            # IP_BIND_ADDRESS_NO_PORT (24): the port is picked at connect() per 4-tuple,
            # so each source address gives its own ~28k ports to the same destination
            setsockopt(fd, IPPROTO_IP, 24, &one, sizeof(one))
            src = &self.srcs[(ci + self.src_offset) % self.nsrc]
            if bind(fd, <sockaddr *>src, sizeof(sockaddr_in)) < 0:
                e = errno
                self._fail(ci, C_ADDRNOTAVAIL if (e == EADDRNOTAVAIL or e == EADDRINUSE) else C_CONNECT_ERROR, now)
                return
        ev.events = EPOLLOUT
        ev.data.u64 = (<uint64_t>c.gen << 32) | <uint32_t>ci
        c.events = EPOLLOUT
        if epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev) < 0:
            self._fail(ci, C_EMFILE if errno == ENOMEM else C_CONNECT_ERROR, now)
            return
        c.state = S_CONNECTING
        c.deadline = now + self.connect_timeout
        if connect(fd, <sockaddr *>&self.dst, sizeof(sockaddr_in)) < 0:
            e = errno
            if e == EINPROGRESS or e == EINTR:
                return
            self._fail_errno(ci, e, now)
            return
        self._connected(ci, now)

    cdef void _connected(self, int ci, int64_t now) noexcept nogil:
        cdef Conn *c = &self.conns[ci]
        cdef int err = 0
        cdef socklen_t elen = sizeof(err)
        cdef epoll_event ev
        if getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0:
            err = errno
        if err != 0:
            if err == EINPROGRESS:
                return
            self._fail_errno(ci, err, now)
            return
        c.state = S_OPEN
        self.cnt[C_CONNECTS_OK] += 1
        self.cnt[C_OPEN] += 1
        ev.events = EPOLLIN
        ev.data.u64 = (<uint64_t>c.gen << 32) | <uint32_t>ci
        c.events = EPOLLIN
        epoll_ctl(self.ep, EPOLL_CTL_MOD, c.fd, &ev)
        self._send_due(ci, now)

    cdef void _fail_errno(self, int ci, int e, int64_t now) noexcept nogil:
        if e == ECONNREFUSED:
            self._fail(ci, C_REFUSED, now)
        elif e == ETIMEDOUT:
            self._fail(ci, C_CONNECT_TIMEOUT, now)
        elif e == ECONNRESET or e == ECONNABORTED or e == EPIPE:
            self._fail(ci, C_RESET, now)
        elif e == EADDRNOTAVAIL or e == EADDRINUSE:
            self._fail(ci, C_ADDRNOTAVAIL, now)
        elif e == EMFILE or e == ENFILE:
            self._fail(ci, C_EMFILE, now)
        else:
            self._fail(ci, C_CONNECT_ERROR, now)

    cdef void _fail(self, int ci, int counter, int64_t now) noexcept nogil:
        # a connect that failed: count it, retry after retry_delay
        self.cnt[counter] += 1
        self.cnt[C_CONNECTS_FAILED] += 1
        self._close(ci)
        self.conns[ci].state = S_RETRY
        self.conns[ci].deadline = now + self.retry_delay

    cdef void _close(self, int ci) noexcept nogil:
        cdef Conn *c = &self.conns[ci]
        if c.fd >= 0:
            close(c.fd)          # also leaves the epoll set
            c.fd = -1
        if c.state == S_OPEN:
            self.cnt[C_OPEN] -= 1
        c.state = S_IDLE
        _clear_exchange(c)

    cdef inline int _next_req(self) noexcept nogil:
        cdef int r = self.mix[self.mix_pos]
        self.mix_pos += 1
        if self.mix_pos >= <uint32_t>self.mixlen:
            self.mix_pos = 0
        return r

    cdef void _send_due(self, int ci, int64_t now) noexcept nogil:
        # queue the requests this connection may send now, then write them in one call
        cdef Conn *c = &self.conns[ci]
        cdef int room = self.depth - c.count
        cdef int n = 0, pos
        cdef int64_t t
        cdef Slot *s
        if room <= 0:
            return
        if self.open_loop:
            if ci >= self.sched_n or self.rate <= 0:
                return
            while n < room:
                t = self._intended(ci, c.next_k)
                if t > now:
                    break
                if now - t > LATE_NS:
                    self.cnt[C_LATE] += 1
                pos = ring_pos(c.head + c.count, self.depth)
                s = &self.ring[ci * self.depth + pos]
                s.intended = t
                s.sent = now
                s.req = self._next_req()
                c.count += 1
                c.next_k += 1
                n += 1
            self.sched_sent += n
        else:
            while n < room:
                pos = ring_pos(c.head + c.count, self.depth)
                s = &self.ring[ci * self.depth + pos]
                s.intended = now
                s.sent = now
                s.req = self._next_req()
                c.count += 1
                n += 1
        if n:
            self.cnt[C_SENT] += n
            self._flush(ci)

    cdef int _flush(self, int ci) noexcept nogil:
        # write ring entries [written, count); 0 ok (maybe partial), -1 connection lost
        cdef Conn *c = &self.conns[ci]
        cdef iovec iov[MAX_DEPTH]
        cdef int k, niov = 0, req, e
        cdef ssize_t w
        cdef Py_ssize_t off
        cdef uint32_t want
        cdef epoll_event ev
        cdef int base = ci * self.depth
        for k in range(c.written, c.count):
            req = self.ring[base + ring_pos(c.head + k, self.depth)].req
            off = c.wr_off if k == c.written else 0
            iov[niov].iov_base = <void *>(self.rq_data[req] + off)
            iov[niov].iov_len = self.rq_len[req] - off
            niov += 1
        if niov == 0:
            return 0
        while True:
            if niov == 1:
                w = send(c.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
            else:
                w = writev(c.fd, iov, niov)
            if w >= 0:
                break
            e = errno
            if e == EINTR:
                continue
            if e == EAGAIN:                 # == EWOULDBLOCK on Linux
                w = 0
                break
            self.cnt[C_RESET] += 1
            self.cnt[C_UNANSWERED] += c.count - 1 if c.count > 0 else 0
            self._close(ci)
            c.state = S_RETRY               # reconnect from the next scan, not recursively
            c.deadline = 0
            return -1
        self.cnt[C_BYTES_OUT] += w
        # advance over what was written
        k = 0
        while k < niov and <size_t>w >= iov[k].iov_len:
            w -= iov[k].iov_len
            c.written += 1
            c.wr_off = 0
            k += 1
        if k < niov:
            c.wr_off += w
        want = EPOLLIN | EPOLLOUT if c.written < c.count else EPOLLIN
        if want != c.events:
            ev.events = want
            ev.data.u64 = (<uint64_t>c.gen << 32) | <uint32_t>ci
            c.events = want
            epoll_ctl(self.ep, EPOLL_CTL_MOD, c.fd, &ev)
        return 0

    cdef void _readable(self, int ci) noexcept nogil:
        cdef Conn *c = &self.conns[ci]
        cdef ssize_t n
        cdef int r, e
        cdef int64_t now = 0
        while True:
            n = recv(c.fd, self.rbuf, RBUF_SIZE, 0)
            if n > 0:
                now = mono_ns()
                self.cnt[C_BYTES_IN] += n
                r = self._feed(ci, self.rbuf, n, now)
                if r != 0:
                    if r < 0:
                        self.cnt[C_BAD_RESPONSE] += 1
                        self.cnt[C_UNANSWERED] += c.count - 1 if c.count > 0 else 0
                        self._close(ci)
                        c.state = S_RETRY
                        c.deadline = now + self.retry_delay
                    else:
                        # the server said close: the rest of the pipeline is not answered
                        self.cnt[C_UNANSWERED] += c.count
                        self._close(ci)
                        if r == 2:
                            c.state = S_RETRY
                            c.deadline = now + self.retry_delay
                        else:
                            self._start_conn(ci, now)
                    return
                if n < RBUF_SIZE:
                    break
            elif n == 0:
                now = mono_ns()
                if c.pstate == P_BODY_EOF and c.count > 0:
                    self._complete(ci, now)       # body delimited by the close
                    self.cnt[C_UNANSWERED] += c.count
                elif c.count > 0:
                    self.cnt[C_RESET] += 1         # closed with requests outstanding
                    self.cnt[C_UNANSWERED] += c.count - 1
                self._close(ci)
                self._start_conn(ci, now)
                return
            else:
                e = errno
                if e == EINTR:
                    continue
                if e == EAGAIN:                 # == EWOULDBLOCK on Linux
                    break
                now = mono_ns()
                self.cnt[C_RESET] += 1
                self.cnt[C_UNANSWERED] += c.count - 1 if c.count > 0 else 0
                self._close(ci)
                self._start_conn(ci, now)
                return
        # closed loop refills a drained pipeline in one write (as wrk does): topping it
        # up after every partial read costs a syscall per few responses
        if (self.open_loop and c.count < self.depth) or c.count == 0:
            self._send_due(ci, now if now else mono_ns())

    cdef int _take_line(self, Conn *c, char *lbuf, const char *buf, Py_ssize_t n, Py_ssize_t *pos,
                        const char **line, Py_ssize_t *llen) noexcept nogil:
        # 1: a whole line (without CRLF) in line/llen; 2: the same, but a line split across
        #    reads and longer than LBUF, of which line/llen hold the first LBUF bytes;
        # 0: all consumed, the line is incomplete; -1: a line over MAX_LINE
        cdef const char *p = buf + pos[0]
        cdef Py_ssize_t rem = n - pos[0], seg, keep
        cdef const char *nl = <const char *>memchr(p, b'\n', rem)
        if nl == NULL:
            keep = LBUF - c.lbuf_len
            if keep > rem:
                keep = rem
            if keep > 0:
                memcpy(lbuf + c.lbuf_len, p, keep)
            c.lbuf_len += rem
            pos[0] = n
            return -1 if c.lbuf_len > MAX_LINE else 0
        seg = nl - p
        pos[0] += seg + 1
        if c.lbuf_len == 0:
            line[0] = p
            llen[0] = seg
        else:
            keep = LBUF - c.lbuf_len
            if keep > seg:
                keep = seg
            if keep > 0:
                memcpy(lbuf + c.lbuf_len, p, keep)
            c.lbuf_len += seg
            line[0] = lbuf
            if c.lbuf_len > LBUF:
                llen[0] = LBUF
                c.lbuf_len = 0
                return 2
            llen[0] = c.lbuf_len
            c.lbuf_len = 0
        if llen[0] > 0 and line[0][llen[0] - 1] == b'\r':
            llen[0] -= 1
        return 1

    cdef int _feed(self, int ci, const char *buf, Py_ssize_t n, int64_t now) noexcept nogil:
        # parse n bytes: 0 ok, 1 close after a complete response, -1 bad response
        cdef Conn *c = &self.conns[ci]
        cdef Py_ssize_t pos = 0, llen, take, i, colon, vs
        cdef const char *line
        cdef const char *hit
        cdef int64_t v
        cdef int r, d
        cdef bint trunc
        while pos < n:
            if c.pstate == P_BODY_CL or c.pstate == P_CHUNK_DATA:
                take = n - pos
                if take > c.left:
                    take = c.left
                pos += take
                c.left -= take
                if c.left == 0:
                    if c.pstate == P_BODY_CL:
                        r = self._complete(ci, now)
                        if r != 0:
                            return r
                    else:
                        c.pstate = P_CHUNK_CRLF
                continue
            if c.pstate == P_BODY_EOF:
                return 0
            r = self._take_line(c, self.lbufs + <size_t>ci * LBUF, buf, n, &pos, &line, &llen)
            if r <= 0:
                return r
            trunc = r == 2
            if c.pstate == P_STATUS:
                if llen == 0 and c.count > 0:
                    continue                # tolerate a stray CRLF between responses
                # HTTP/1.x SP 3DIGIT [SP reason]
                if (llen < 12 or line[0] != b'H' or line[1] != b'T' or line[2] != b'T'
                        or line[3] != b'P' or line[4] != b'/' or line[5] != b'1' or line[6] != b'.'
                        or (line[7] != b'0' and line[7] != b'1') or line[8] != b' '
                        or not (b'1' <= line[9] <= b'5') or not (b'0' <= line[10] <= b'9')
                        or not (b'0' <= line[11] <= b'9') or (llen > 12 and line[12] != b' ')):
                    return -1
                c.status = (line[9] - 48) * 100 + (line[10] - 48) * 10 + (line[11] - 48)
                c.flags = F_HTTP10 if line[7] == b'0' else 0
                c.left = 0
                c.pstate = P_HEADER
            elif c.pstate == P_HEADER:
                if llen == 0:
                    r = self._headers_done(ci, now)
                    if r != 0:
                        return r
                    continue
                if line[0] == b' ' or line[0] == b'\t':
                    return -1               # obs-fold is not allowed in responses either
                hit = <const char *>memchr(line, b':', llen)
                colon = hit - line if hit != NULL else llen
                if colon == llen:
                    if trunc:
                        continue            # a name longer than LBUF: not one we read
                    return -1
                r = line[0] | 0x20
                if r != b'c' and r != b't':
                    continue                # not a header we read
                if trunc:
                    # over LBUF and split across reads: fine unless it is one we read
                    if (name_is(line, colon, b"content-length", 14)
                            or name_is(line, colon, b"transfer-encoding", 17)
                            or name_is(line, colon, b"connection", 10)):
                        return -1
                    continue
                vs = colon + 1
                while vs < llen and (line[vs] == b' ' or line[vs] == b'\t'):
                    vs += 1
                if name_is(line, colon, b"content-length", 14):
                    v = 0
                    if vs == llen:
                        return -1
                    for i in range(vs, llen):
                        if line[i] == b' ' or line[i] == b'\t':
                            break
                        if not (b'0' <= line[i] <= b'9') or v > CL_MAX:
                            return -1
                        v = v * 10 + (line[i] - 48)
                    if (c.flags & F_HAS_CL) and v != c.left:
                        return -1
                    c.left = v
                    c.flags |= F_HAS_CL
                elif name_is(line, colon, b"transfer-encoding", 17):
                    if last_token_is(line + vs, llen - vs, b"chunked", 7):
                        c.flags |= F_CHUNKED
                    else:
                        c.flags |= F_TE_OTHER
                elif name_is(line, colon, b"connection", 10):
                    if has_token(line + vs, llen - vs, b"close", 5):
                        c.flags |= F_CLOSE
                    if has_token(line + vs, llen - vs, b"keep-alive", 10):
                        c.flags |= F_KEEPALIVE
            elif c.pstate == P_CHUNK_SIZE:
                if llen <= 0:
                    return -1
                v = 0
                d = 0
                for i in range(llen):
                    r = line[i]
                    if b'0' <= r <= b'9':
                        r -= 48
                    elif b'a' <= (r | 0x20) <= b'f':
                        r = (r | 0x20) - 87
                    elif r == b';' or r == b' ' or r == b'\t':
                        break
                    else:
                        return -1
                    if d >= 15:
                        return -1
                    v = v * 16 + r
                    d += 1
                if d == 0:
                    return -1
                if v == 0:
                    c.pstate = P_TRAILER
                else:
                    c.left = v
                    c.pstate = P_CHUNK_DATA
            elif c.pstate == P_CHUNK_CRLF:
                if llen != 0:
                    return -1
                c.pstate = P_CHUNK_SIZE
            elif c.pstate == P_TRAILER:
                if llen == 0:
                    r = self._complete(ci, now)
                    if r != 0:
                        return r
        return 0

    cdef int _headers_done(self, int ci, int64_t now) noexcept nogil:
        cdef Conn *c = &self.conns[ci]
        cdef bint head_req
        if c.count == 0:
            return -1                       # an answer to nothing we asked
        if 100 <= c.status < 200:
            c.pstate = P_STATUS             # interim response: the final one follows
            c.flags = 0
            return 0
        head_req = self.rq_head[self.ring[ci * self.depth + c.head].req]
        if head_req or c.status == 204 or c.status == 304:
            return self._complete(ci, now)
        if c.flags & F_CHUNKED:
            c.pstate = P_CHUNK_SIZE
            return 0
        if c.flags & F_TE_OTHER:
            c.pstate = P_BODY_EOF
            return 0
        if c.flags & F_HAS_CL:
            if c.left == 0:
                return self._complete(ci, now)
            c.pstate = P_BODY_CL
            return 0
        c.pstate = P_BODY_EOF               # delimited by the server closing
        return 0

    cdef int _complete(self, int ci, int64_t now) noexcept nogil:
        # a whole response: record it, pop its request; 1 if the connection must close,
        # 2 if it must close after an error status
        cdef Conn *c = &self.conns[ci]
        cdef Slot *s
        cdef int st = c.status
        cdef bint closing
        if c.count == 0:
            return -1
        s = &self.ring[ci * self.depth + c.head]
        self._record((now - s.intended) // 1000, (now - s.sent) // 1000)
        c.head = ring_pos(c.head + 1, self.depth)
        c.count -= 1
        if c.written > 0:
            c.written -= 1
        else:
            c.wr_off = 0                    # answered before it was fully written
        self.cnt[C_DONE] += 1
        if 200 <= st < 300:
            self.cnt[C_OK] += 1
        elif 0 <= st < NSTATUS:
            self.status_cnt[st] += 1
        closing = (c.flags & F_CLOSE) or ((c.flags & F_HTTP10) and not (c.flags & F_KEEPALIVE))
        c.pstate = P_STATUS
        c.flags = 0
        c.left = 0
        if not closing:
            return 0
        # closed after an error status (a 503 at a connection limit): reconnect after
        # retry_delay like a failed connect, not at once, or one shed client becomes a storm
        return 2 if st >= 400 else 1
