# Tunables and constants of the C engine (one place; compile-time enums).

cdef enum:
    MAX_EVENTS = 512            # epoll_wait batch
    ACCEPT_BATCH = 64           # accept4 calls per listener event
    IOV_CAP = 256               # iovecs per writev (16 pipelined responses x 4 pieces, and more)
    ARENA_CAP = 32768           # per-writev scratch for dynamic pieces (/api/data)
    WSGI_COALESCE = 2048        # a WSGI response up to this size is copied into the arena: one piece
    WSGI_SLOW_NS = 20000        # an app call this long: its response goes out at the end of the round (_flush)
    READ_AHEAD = 32             # with a slow app: reads taken before their apps run (epoll; each holds
                                # a buffer till its app has run: the bound on that memory)
    SLOW_STREAK = 8             # an app is slow after this many slow calls in a row (a cold start is not)
    SCRATCH_SIZE = 65536        # lingering-close discard buffer
    MAX_WAIT_MS = 50            # the loop wakes at least this often (signals, timers)
    LINGER_MS = 1000            # read-and-discard window after an error response
    EMFILE_PAUSE_MS = 100       # stop accepting this long when out of fds
    MAX_CHUNK_LINE = 4096       # chunk-size line with extensions, CRLF excluded
    MAX_ANSWER = 0x7FFF0000     # a handler answer's bytes at most (Conn.out_len is 32 bits): else 500
    DATE_LEN = 37               # len("Date: Sat, 28 Nov 2026 06:20:12 GMT\r\n"), checked at import
    ERR_SLOTS = 16              # prebuilt error responses (responses.ERROR_BODIES, checked at import)
    STATUS_SLOTS = 600          # statuses 0..599 index err_slot / status_ctr (checked at import)

# connection states
cdef enum:
    S_FREE = 0
    S_HEAD = 1                  # between requests or reading a head
    S_BODY = 2                  # reading a body (Content-Length or chunked)
    S_LINGER = 3                # write side shut, input discarded until EOF or LINGER_MS

# connection flags
cdef enum:
    F_FRESH = 1 << 0            # accepted, no byte received yet
    F_KEEP = 1 << 1             # the current request keeps the connection
    F_V10 = 1 << 2              # the current request is HTTP/1.0
    F_HEAD = 1 << 3             # the current request is HEAD
    F_WANT_BODY = 1 << 4        # a handler wants the body (collected under the GIL)
    F_CLOSING = 1 << 5          # no more requests: close (lingering) once output is sent
    F_PAUSED = 1 << 6           # EPOLLIN off: waiting for EPOLLOUT (backpressure)
    F_OUT_OWNED = 1 << 7        # conn.out is malloc'd (else it points into prebuilt memory)
    F_REJECTED = 1 << 8         # answered 503 at accept: not counted as active
    F_CHUNKED = 1 << 9          # body is chunked (else Content-Length)
    F_DEFER = 1 << 10           # conn.out waits in Worker.deferred: sent at the end of the round (epoll)
    F_PENDING_PY = 1 << 11      # a handler request waits in Worker._pending
    F_STREAM = 1 << 12          # a WSGI response is still streaming (Worker._streams; pump on EPOLLOUT)
    F_PEER = 1 << 13            # Worker.peer4[fd] holds this connection's remote IPv4 address and port
    F_SCAN = 1 << 15            # an unfinished head at buf[0]: the head scanner's state is in the Conn
    F_CLEAN_CLOSE = 1 << 14     # F_CLOSING after a whole request was answered and nothing else
                                # came: close at once, without lingering (nothing to reset)

# timer lists (one per length; all deadlines in a list have the same offset)
cdef enum:
    T_NONE = 0
    T_HEADER = 1                # head deadline from its first byte; body deadline from head end
    T_IDLE = 2
    T_SEND = 3
    T_LINGER = 4
    T_KINDS = 5

# head scanner states (Conn.cstate while F_SCAN; _core_py/parser.py HeadScan)
cdef enum:
    HS_START = 0                # before the request line: empty lines (CRLF) are skipped
    HS_START_LF = 1
    HS_METHOD = 2
    HS_TARGET0 = 3
    HS_TARGET = 4
    HS_VERSION = 5              # "HTTP/" DIGIT "." DIGIT, then CR
    HS_RL_LF = 6
    HS_H0 = 7                   # start of a field line (CR: the end of the head)
    HS_NAME = 8
    HS_VALUE = 9
    HS_H_LF = 10
    HS_END_LF = 11

# chunked decoder states: fastc1k.chunked's, whose table chunk_feed walks (checked at import)
cdef enum:
    CS_SIZE0 = 0                # the chunk-size line: CS_SIZE0 .. CS_SIZE_LF
    CS_SIZE_LF = 12
    CS_DATA = 13
    CS_DATA_CR = 14
    CS_T0 = 16                  # the trailer section: CS_T0 .. CS_END_LF
    CS_DONE = 21
    CHUNK_STATES = 22
    CHUNK_CLASSES = 13
    CHUNK_REJECT = 0xFF
    A_HEX = 1                   # the table's actions (fastc1k.chunked A_*)
    A_SIZE_END = 2
    A_NEXT = 3
    A_DONE = 4

# response kinds stored in Conn.resp's high bits while a body is read
cdef enum:
    R_404 = 0xFFFF
    R_WSGI = 0xFFFE             # the WSGI app (checked before R_405's bit)
    R_OPTIONS_ALL = 0xFFFD      # OPTIONS *: 200 with the server-wide Allow
    R_405 = 0x8000              # | route index
    R_OPTIONS = 0x4000          # | route index: OPTIONS of a route that does not take it: 200 with its Allow
    MAX_ROUTES = 0x4000         # route indices stay below the R_* bits

# metrics slot word indices: fastc1k.metrics.IDX, checked at import (_check_layout)
cdef enum:
    I_PID = 0
    I_STARTED_MS = 1
    I_ENGINE = 2
    I_ACCEPTED = 3
    I_CLOSED = 4
    I_ACTIVE = 5
    I_REQUESTS = 6
    I_BYTES_IN = 7
    I_BYTES_OUT = 8
    I_RESP_200 = 9              # responses{status=...}: see STATUS_CODES
    I_RESP_OTHER = 21
    I_PE_BAD_REQUEST = 22       # parse_errors{kind=...}
    I_PE_URI_TOO_LONG = 23
    I_PE_HEADERS_TOO_LARGE = 24
    I_PE_BODY_TOO_LARGE = 25
    I_PE_UNSUPPORTED_CODING = 26
    I_PE_BAD_VERSION = 27
    I_TO_HEADER = 28
    I_TO_IDLE = 29
    I_TO_SEND = 30
    I_REJECTED = 31
    I_ACCEPT_PAUSED = 32
    I_HANDLER_ERRORS = 33
    I_POOL_SIZE = 34
    I_POOL_IN_USE = 35
    I_POOL_PEAK = 36
    I_POOL_EXHAUSTED = 37
    I_LOOP_WAITS = 38
    I_LOOP_EVENTS = 39
    I_LAG_MAX = 40
    I_LAG_BUCKET0 = 41
    LAG_BUCKETS = 32
    I_ACCEPT_UNWATCHED = 73
    I_LISTEN_REARM_FAILED = 74
    I_HEAD_SCANNED = 75
