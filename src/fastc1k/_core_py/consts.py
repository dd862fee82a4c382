"""Tunables and constants of the pure engine: core/consts.pxi's, with the same names and
values. The C engine checks its compile-time copies against this module when it is
imported (_core.pyx _check_layout), so the two cannot drift apart."""
from __future__ import annotations

MAX_EVENTS = 512            # events taken from one wait
ACCEPT_BATCH = 64           # accepts per listener event
IOV_CAP = 256               # pieces per send (16 pipelined responses x 4 pieces, and more)
SCRATCH_SIZE = 65536        # lingering-close discard read
MAX_WAIT_MS = 50            # the loop wakes at least this often (signals, timers)
LINGER_MS = 1000            # read-and-discard window after an error response
EMFILE_PAUSE_MS = 100       # stop accepting this long when out of fds
MAX_ANSWER = 0x7FFF0000     # a handler answer's bytes at most (C's Conn.out_len is 32 bits): else 500
MAX_CHUNK_LINE = 4096       # chunk-size line with extensions, CRLF excluded

# connection states
S_FREE = 0
S_HEAD = 1                  # between requests or reading a head
S_BODY = 2                  # reading a body (Content-Length or chunked)
S_LINGER = 3                # write side shut, input discarded until EOF or LINGER_MS

# connection flags
F_FRESH = 1 << 0            # accepted, no byte received yet
F_KEEP = 1 << 1             # the current request keeps the connection
F_V10 = 1 << 2              # the current request is HTTP/1.0
F_HEAD = 1 << 3             # the current request is HEAD
F_WANT_BODY = 1 << 4        # a handler wants the body
F_CLOSING = 1 << 5          # no more requests: close (lingering) once output is sent
F_PAUSED = 1 << 6           # reading off: waiting for the socket to drain (backpressure)
F_OUT_OWNED = 1 << 7        # (C only: conn.out is malloc'd)
F_REJECTED = 1 << 8         # answered 503 at accept: not counted as active
F_CHUNKED = 1 << 9          # body is chunked (else Content-Length)
F_DEFER = 1 << 10           # (C only, epoll: conn.out is sent at the end of the event round)
F_PENDING_PY = 1 << 11      # a handler request waits for its body
F_STREAM = 1 << 12          # a WSGI response is still streaming (conn.ex; pumped when writable)
F_PEER = 1 << 13            # (C only: Worker._peers holds the remote address; Python: conn.peer)
F_SCAN = 1 << 15            # an unfinished head at buf[0]: Conn.scan holds the head scanner's state
F_CLEAN_CLOSE = 1 << 14     # F_CLOSING after a whole request was answered and nothing else
                            # came: close at once, without lingering (nothing to reset)

# timer lists (one per length; all deadlines in a list have the same offset)
T_NONE = 0
T_HEADER = 1                # head deadline from its first byte; body deadline from head end
T_IDLE = 2
T_SEND = 3
T_LINGER = 4
T_KINDS = 5

# the answer chosen at the head, given after the body (Conn.resp)
R_404 = 0xFFFF
R_WSGI = 0xFFFE             # the WSGI app (checked before R_405's bit)
R_OPTIONS_ALL = 0xFFFD      # OPTIONS *: 200 with the server-wide Allow
R_405 = 0x8000              # | route index
R_OPTIONS = 0x4000          # | route index: OPTIONS of a route that does not take it: 200 with its Allow
MAX_ROUTES = 0x4000         # route indices stay below the R_* bits

# metrics slot word indices (the C engine's I_* enums, checked against the same layout)
from .. import metrics as _metrics  # noqa: E402

_IDX = _metrics.IDX
I_PID, I_STARTED_MS, I_ENGINE, I_ACCEPTED, I_CLOSED, I_ACTIVE, I_REQUESTS, I_BYTES_IN, I_BYTES_OUT = (
    _IDX[k] for k in ("pid", "started_ms", "engine", "accepted", "closed", "active", "requests", "bytes_in",
                      "bytes_out"))
I_RESP_200 = _IDX['responses{status="200"}']
I_TO_HEADER, I_TO_IDLE, I_TO_SEND = (_IDX[f'timeouts{{kind="{k}"}}'] for k in ("header", "idle", "send"))
I_REJECTED, I_ACCEPT_PAUSED, I_HANDLER_ERRORS = (
    _IDX[k] for k in ("rejected_max_connections", "accept_paused", "handler_errors"))
I_POOL_SIZE, I_POOL_IN_USE, I_POOL_PEAK, I_POOL_EXHAUSTED = (
    _IDX[k] for k in ("pool_size", "pool_in_use", "pool_peak", "pool_exhausted"))
I_LOOP_WAITS, I_LOOP_EVENTS, I_LAG_MAX = (_IDX[k] for k in ("loop_waits", "loop_events", "loop_lag_max_us"))
I_LAG_BUCKET0 = _IDX['loop_lag_bucket{le_us="1"}']
I_ACCEPT_UNWATCHED, I_LISTEN_REARM_FAILED = _IDX["accept_unwatched"], _IDX["listen_rearm_failed"]
I_HEAD_SCANNED = _IDX["head_bytes_scanned"]
# parse error status -> its counter (parse_errors{kind=...})
I_PARSE_ERROR = {s: _IDX[f'parse_errors{{kind="{k}"}}'] for k, s in _metrics.PARSE_ERROR_STATUS.items()}
I_PE_BAD_REQUEST = _IDX['parse_errors{kind="bad_request"}']
