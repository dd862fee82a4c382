# C structs of the engine (included by _core.pxd).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t


ctypedef struct Conn:
    # One per fd, in a table allocated once. An idle keep-alive connection holds no
    # buffer: its cost is these 64 bytes plus the kernel socket.
    char *buf                   # pool buffer while an unfinished request is held, else NULL
    char *out                   # unsent tail of the output (prebuilt memory or malloc'd)
    uint64_t body_left          # Content-Length left, or current chunk size / left
    int64_t allowance           # chunked: max_body minus the body decoded so far
    int32_t tprev, tnext        # timer list links (fds), -1 at the ends
    uint32_t deadline           # ms since the loop started
    uint32_t buf_len            # bytes in buf (unparsed input starts at buf[0])
    uint32_t out_len
    uint32_t line_len           # chunk line length / trailer section bytes
    uint16_t flags              # F_*
    uint16_t resp               # route index, R_404 or R_405|index: the answer after the body
    uint8_t state               # S_*
    uint8_t tkind               # T_*
    uint8_t cstate              # CS_*


ctypedef struct Req:
    # A parsed request head; pointers into the connection's buffer.
    const char *method
    const char *target
    const char *path
    const char *authority       # absolute-form: the target's host[:port] (replaces Host), else NULL
    size_t method_len, target_len, path_len, authority_len
    size_t skip                 # leading empty lines before the request line
    size_t hdr_start            # offset of the header section
    int64_t content_length      # 0 when absent
    uint8_t v11, chunked, keep_alive, expect_continue


ctypedef struct Limits:
    size_t max_line, max_hdr, max_headers
    uint64_t max_body


ctypedef struct TList:
    int32_t head, tail
    uint32_t length_ms


ctypedef struct Pool:
    char **free                 # stack of free buffers (capacity = max)
    char **slabs
    uint32_t nfree, total, max, grow, bufsize, nslabs, peak


ctypedef struct RouteC:
    const char *path
    size_t path_len
    int kind
    const char *methods         # b" GET HEAD " : a method m is allowed iff " m " occurs
    size_t methods_len
    const char *head            # STATIC: route.head (status line .. Content-Length)
    size_t head_len
    const char *tail            # STATIC: b"\r\n" + body
    size_t tail_len
    char *full                  # STATIC: head + Date + tail, the whole HTTP/1.1 keep-alive answer
    size_t full_len             # in one piece (one send); its Date is rewritten by _tick
    const char *h405            # error head of a 405 with this route's Allow
    size_t h405_len
    const char *hopt            # head of the 200 to OPTIONS, with this route's Allow
    size_t hopt_len
    int status
    bint wants_body
    bint get_ok, head_ok        # fast path of the method check


ctypedef struct UConn:
    # The io_uring backend's part of a connection (a second table, allocated only for it).
    char *sbuf                  # the send in flight: the kernel reads it until its completion
    char *pbuf                  # output queued behind that send
    char *xbuf                  # input that arrived while writing and did not fit in buf
    uint32_t slen, soff, plen, xlen
    uint8_t flags               # U_*
