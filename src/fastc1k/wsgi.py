"""WSGI (PEP 3333) for both engines: the environ, start_response, framing and streaming.
(Over 700 lines: every rule both engines share is here, in one place, as the C engine's
fast paths defer to it.)

The engines parse a request as for any route and read its body (up to max_body, before
the call; larger ones get 413 from the parser) - except a request that says `Expect:
100-continue` and has sent no body byte yet: its wsgi.input is a ContinueInput, which
answers 100 Continue and reads the body from the socket only if the app reads it (an
app that never does gets its response out, and the connection closes after it).

Then one Exchange per request:
  run()   calls the app and iterates it until the status and headers are final (the first
          non-empty body chunk, the end of the iterable, or a write()); it validates them
          and decides the framing. False: answer `status` instead (500: the app failed,
          logged once with the traceback; 413/408/400: a 100-continue body read on
          demand was too large, late or malformed). After it: `status`, `head` (status line .. framing header; the engine
          adds Date unless the app sent one, Connection and the blank line), `has_date`,
          `keep_alive`, `body` (the first body pieces, framed) and `done`.
  pump(fd, counters)  when not done: sends the rest itself, one iterable item (or one
          sendfile of a wsgi.file_wrapper file) at a time, until the socket is full
          (BLOCKED: call again on EPOLLOUT), the end (DONE) or a failure (ABORT: close
          the connection; the head is out, so no 500 can follow). A 1 GiB response never
          sits in memory: at most one item and its unsent tail.
  close() calls the iterable's close(), once, whatever happened (engines call it when
          the connection closes early too).
  flow(fd, out, timeout, ...)  lets write() send itself (flow control, below).

write(): PEP 3333 has it return once its data is sent or buffered for sending. Up to
WRITE_BUFFER bytes are held (they go out with the head, the whole response at once); past that, write() sends
the head and what it holds on the socket itself, waiting (poll) for room up to send_timeout
without progress - the worker is busy in this app call anyway (one call at a time per worker,
as bjoern's) - so a 1 GiB body written in pieces never sits in memory. A client that stops
reading (TimeoutError) or leaves (BrokenPipeError, ConnectionResetError) makes write() raise
in the app, and the engine closes the connection (`sent`: the head is out, no 500 can follow).

Framing: the app's Content-Length if it gave one (a body that falls short closes the
connection; excess is cut); else Content-Length when the whole body is known at commit
(a list or tuple, a file_wrapper file); else chunked on HTTP/1.1 and close-delimited on
HTTP/1.0. HEAD and 204/304 send no body. Hop-by-hop headers, CR/LF or non-latin-1 in the
status or headers, or a malformed status line are the app's errors: 500.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import re
import select
import socket
import sys
import time
from typing import Any, Callable
from urllib.parse import unquote

from .responses import CONN_CLOSE, CONN_KEEP_ALIVE

__all__ = ["Exchange", "FileWrapper", "ContinueInput", "BodyTooLarge", "base_environ", "build_environ", "attach_body", "EMPTY_INPUT",
           "header_key", "head_for", "DONE", "BLOCKED", "ABORT"]

log = logging.getLogger("fastc1k")

DONE, BLOCKED, ABORT = 0, 1, 2
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade"))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(r"([1-9][0-9]{2}) [^\x00-\x1f\x7f]*")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # CTLs except HTAB (RFC 9110 5.5)
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
SENDFILE_MAX = 1 << 30
WHOLE_EXTRA = 4  # items taken past the first body byte to find the end of a Content-Length body
WRITE_BUFFER = 256 << 10  # write(): bytes held before they are sent synchronously (Exchange.flow)
# write() when it cannot send itself (no flow(); the engine's send of the connection in flight, as
# io_uring's may be; called from the iterable after run()): bytes it may hold unsent, past it AppError
WRITE_MAX = 64 << 20


class BodyTooLarge(Exception):
    """ContinueInput: the body read on demand passed max_body (answered 413)."""


class BodyTimeout(Exception):
    """ContinueInput: the client did not send the body it announced in time (answered 408)."""


class BadBody(Exception):
    """ContinueInput: the body read on demand is malformed (answered 400)."""


class AppError(Exception):
    """The app broke the WSGI contract (bad status, header, body type ...): answered 500."""


# --- environ ------------------------------------------------------------------------------
_KEYS: dict[bytes, str | None] = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def header_key(name: bytes) -> str | None:
    """Lower-case header name -> environ key; None for names with "_" (dropped: "X_Forwarded_For"
    would otherwise pass for X-Forwarded-For, as nginx and gunicorn reason)."""
    key = _KEYS.get(name, "")
    if key == "":
        key = None if b"_" in name else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


def base_environ(server_name: str, server_port: int, multiprocess: bool) -> dict[str, Any]:
    """The keys every request of one worker shares (copied per request; wsgi.input: that of
    a request without a body)."""
    return {
        "SCRIPT_NAME": "", "SERVER_NAME": server_name, "SERVER_PORT": str(server_port),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": multiprocess, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "wsgi.file_wrapper": FileWrapper,
        "wsgi.input": EMPTY_INPUT,  # attach_body() or a ContinueInput replaces it
    }


def build_environ(base: dict, method: str, path: str, query: str, version: str,
                  headers: list[tuple[bytes, bytes]], body: Any, remote: tuple[str, str],
                  authority: bytes | None = None) -> dict[str, Any]:
    """One request's environ. `path` is the raw target path decoded as latin-1 (as the
    parsers give it): PATH_INFO is it %-decoded to bytes, then as latin-1 (PEP 3333).
    `body` is a ContinueInput, or None: attach_body() gives the body read before the call."""
    env = base.copy()
    env["REQUEST_METHOD"] = method
    env["PATH_INFO"] = unquote(path, "latin-1") if "%" in path else path
    env["QUERY_STRING"] = query
    env["SERVER_PROTOCOL"] = version
    env["REMOTE_ADDR"], env["REMOTE_PORT"] = remote
    for name, value in headers:
        key = _KEYS.get(name, "") or header_key(name)
        if key is None:
            continue
        v = value.decode("latin-1")
        if key in env:
            env[key] += "," + v
        else:
            env[key] = v
    if authority is not None:  # an absolute-form target's authority replaces Host (RFC 9112 3.2.2)
        env["HTTP_HOST"] = authority.decode("latin-1")
    if body is not None:
        env["wsgi.input"] = body
    return env


class EmptyInput(io.BufferedIOBase):
    """wsgi.input of a request without a body: reads nothing. Stateless, so one instance
    (EMPTY_INPUT) serves every such request; close() leaves it open for the next one."""

    def read(self, size: int | None = -1) -> bytes:
        return b""

    read1 = read

    def readinto(self, b) -> int:
        return 0

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


EMPTY_INPUT = EmptyInput()


def attach_body(env: dict, body: bytes) -> None:
    """wsgi.input over a body read before the call (chunked ones decoded: their length is
    known, so CONTENT_LENGTH says it)."""
    if env["wsgi.input"] is EMPTY_INPUT:  # (not a ContinueInput)
        if body:
            env["wsgi.input"] = io.BytesIO(body)
        if body or "CONTENT_LENGTH" in env:
            env["CONTENT_LENGTH"] = str(len(body))


def _wait(fd: int, deadline: float, events: int) -> None:
    left = deadline - time.monotonic()
    p = select.poll()
    p.register(fd, events)
    if left <= 0 or not p.poll(left * 1000):
        raise BodyTimeout("the request body did not arrive in time")


def peer_fd(fd: int) -> tuple[str, str]:
    """The remote address of a connected socket the caller owns (it stays open)."""
    s = socket.socket(fileno=fd)
    try:
        return peer(s)
    finally:
        s.detach()


def peer(sock: socket.socket) -> tuple[str, str]:
    """(REMOTE_ADDR, REMOTE_PORT)."""
    try:
        addr = sock.getpeername()
        return addr[0], str(addr[1])
    except (OSError, IndexError):
        return "", ""


# --- wsgi.input for Expect: 100-continue ---------------------------------------------------
class ContinueInput(io.RawIOBase):
    """wsgi.input of a request that asked `Expect: 100-continue` and sent no body yet: the
    first read sends 100 Continue and reads the whole body (<= max_body) from the socket,
    blocking this worker for at most header_timeout; until then the client has sent nothing.
    Exactly the body is taken from the socket (a pipelined next request stays there)."""

    def __init__(self, fd: int, length: int, chunked: bool, config: Any) -> None:
        super().__init__()
        self.fd, self.length, self.chunked, self.config = fd, length, chunked, config
        self.consumed = False
        self.final_sent = False  # write() sent the response's head first: no 100 Continue then
        self._data: io.BytesIO | None = None

    def readable(self) -> bool:
        return True

    def _load(self) -> io.BytesIO:
        if self._data is None:
            self.consumed = True
            self._data = io.BytesIO(self._fetch())
        return self._data

    def _fetch(self) -> bytes:
        from ._core_py.parser import ChunkDecoder, ParseError  # the reference decoder
        deadline = time.monotonic() + self.config.header_timeout
        with socket.socket(fileno=os.dup(self.fd)) as s:  # a dup: closing it leaves the engine's fd
            out = memoryview(b"" if self.final_sent else CONTINUE_100)
            while out:
                try:
                    out = out[s.send(out):]
                except BlockingIOError:
                    _wait(self.fd, deadline, select.POLLOUT)
            body = bytearray()
            state = ChunkDecoder(self.config.max_body) if self.chunked else None
            carry = b""  # an unfinished chunk line, already taken from the socket
            while state is not None or len(body) < self.length:
                try:
                    if state is None:
                        data = s.recv(min(self.length - len(body), 65536))
                    else:  # peek: past the body's end may be the next request
                        data = s.recv(65536, socket.MSG_PEEK)
                except BlockingIOError:
                    _wait(self.fd, deadline, select.POLLIN)
                    continue
                if not data:
                    raise BodyTimeout("the client closed before sending its body")
                if state is None:
                    body += data
                    continue
                whole = carry + data
                try:
                    used, done = state.feed(whole, 0, self.config, body)
                except ParseError as exc:
                    raise (BodyTooLarge if exc.status == 413 else BadBody)(
                        f"bad chunked body ({exc.status})") from None
                if done:
                    s.recv(used - len(carry))
                    break
                s.recv(len(data))  # all of it is this body's
                carry = whole[used:]
        return bytes(body)

    def read(self, size: int = -1) -> bytes:
        return self._load().read(size)

    def readinto(self, b) -> int:
        return self._load().readinto(b)

    def readline(self, size: int = -1) -> bytes:
        return self._load().readline(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._load().readlines(hint)

    def __iter__(self):
        return iter(self._load())


# --- wsgi.file_wrapper --------------------------------------------------------------------
class FileWrapper:
    """wsgi.file_wrapper: returned as is by the app, a regular file goes out with sendfile
    from its current position; wrapped by middleware, it is a plain iterable of blocks."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def span(self) -> tuple[int, int, int] | None:
        """(fd, offset, bytes to the end) when sendfile can send it, else None."""
        try:
            fd = self.filelike.fileno()
            st = os.fstat(fd)
            if not (st.st_mode & 0o170000 == 0o100000):  # S_ISREG
                return None
            off = self.filelike.tell() if hasattr(self.filelike, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        return fd, off, max(0, st.st_size - off)


# --- one request ---------------------------------------------------------------------------
def _latin1(s: Any, what: str) -> bytes:
    if type(s) is not str:
        raise AppError(f"{what} must be str, got {type(s).__name__}")
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        raise AppError(f"{what} is not latin-1: {s!r}") from None


_HEADS: dict[tuple, tuple[int, bytes, int, bool]] = {}  # (status, headers) seen -> _check_head()
_HEADS_MAX = 1024


def _check_head(status: Any, headers: Any) -> tuple[int, bytes, int, bool]:
    """Validate start_response's arguments -> (status code, the head's bytes up to the
    framing header, the app's Content-Length or -1, whether the app sent Date)."""
    m = _STATUS.fullmatch(status) if type(status) is str else None
    if m is None:
        raise AppError(f"bad status {status!r}: want '<3 digits> <reason>'")
    lines = [b"HTTP/1.1 ", _latin1(status, "status"), b"\r\n"]
    if type(headers) is not list:
        raise AppError(f"response headers must be a list, got {type(headers).__name__}")
    length, has_date, has_server = -1, False, False
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise AppError(f"a response header must be a (name, value) tuple, got {item!r}")
        name, value = item
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise AppError(f"bad response header name {name!r}")
        v = _latin1(value, f"header {name}")
        if _BAD_VALUE.search(value):
            raise AppError(f"response header {name} holds CR, LF or another control character")
        low = name.lower()
        if low in HOP_BY_HOP:
            raise AppError(f"hop-by-hop header {name!r} is the server's (PEP 3333)")
        if low == "content-length":
            if not value.isdigit() or not value.isascii() or length >= 0:
                raise AppError(f"bad or repeated Content-Length {value!r}")
            length = int(value)
        elif low == "date":
            has_date = True
        elif low == "server":
            has_server = True
        lines += (name.encode("ascii"), b": ", v, b"\r\n")
    if not has_server:
        lines.insert(3, b"Server: fastc1k\r\n")
    return int(m.group(1)), b"".join(lines), length, has_date


def head_for(status: Any, headers: Any) -> tuple[int, bytes, int, bool]:
    """_check_head() with a cache: most apps send the same few heads, validated once, then a
    dict hit on (status, tuple(headers)) (the C engine looks there first, then calls this)."""
    try:
        key = (status, tuple(headers))
        hit = _HEADS.get(key)
    except TypeError:  # unhashable: not a list of (str, str); _check_head says what
        key = hit = None
    if hit is None:
        hit = _check_head(status, headers)
        if key is not None and type(headers) is list:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[key] = hit
    return hit


class Exchange:
    """One WSGI request and its response; see the module docstring for the protocol.
    (Class attributes are the defaults: __init__ sets only what every request has.)"""

    status = 0
    prefix: bytes | None = None   # the head up to the framing header (None: no start_response yet)
    length = -1                   # the app's Content-Length, -1 if none
    has_date = False
    head = b""
    body: list[bytes] = []
    done = True
    chunked = False
    committed = False             # headers final: a body byte was produced or written
    result: Any = None
    it: Any = None
    pending: list[Any] = []       # framed pieces not yet sent (pump; a list of its own once used)
    file: list[int] | None = None  # [in_fd, offset, count] for sendfile
    left = -1                     # Content-Length bytes still to send (-1: no limit)
    written: list[bytes] = []
    held = 0                      # bytes write() buffered (at least those still unsent)
    closed = False
    out: Callable | None = None   # flow(): the engine's hook; None: write() only buffers
    fd = -1                       # flow(): the connection, its send_timeout and bytes counter,
    timeout = 0.0                 # the worker's wake fd and grace()
    counters: Any = None
    index = 0
    wake = -1
    stop_at: float | None = None  # monotonic time write() stops waiting: the worker is stopping
    sent = False                  # write() sent the head itself: the engine sends no head
    broken: OSError | None = None  # what write()'s own send met (the client stopped reading or left)

    def __init__(self, app: Callable, environ: dict, head_only: bool, v11: bool, keep_alive: bool) -> None:
        self.app = app
        self.environ = environ
        self.head_only = head_only
        self.v11 = v11
        self.keep_alive = keep_alive
        self.input = environ.get("wsgi.input")  # as given (middleware may wrap the environ's)

    # the app's side ------------------------------------------------------------------
    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle (PEP 3333)
        elif self.prefix is not None:
            raise AppError("start_response called a second time without exc_info")
        self.status, self.prefix, self.length, self.has_date = head_for(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write(): its data goes out in order before the iterable's items; it
        commits the headers like a body chunk does. Held up to WRITE_BUFFER bytes, then sent
        synchronously (see the module docstring); without flow() bounded by WRITE_MAX (AppError:
        a 500 before the head went out; else the connection closes)."""
        if self.prefix is None:
            raise AppError("write() before start_response")
        if type(data) is not bytes:
            raise AppError(f"write() takes bytes, got {type(data).__name__}")
        if not data:
            return
        self.committed = True
        self.held += len(data)
        if self.sent:
            if self.done:  # HEAD, 204, 304: no body
                self.held = 0
                return
            self._pending().extend(self._frame(data))
            if self.held >= WRITE_BUFFER:
                self._send_now()
            return
        if self.held > WRITE_MAX:  # (after run() the pump sends some: count what is left)
            self.held = sum(map(len, self.pending if self.head else self.written)) + len(data)
            if self.held > WRITE_MAX:
                raise AppError(f"write() would hold {self.held} bytes unsent, over fastc1k.wsgi.WRITE_MAX "
                               f"({WRITE_MAX}): return an iterable to stream a large body")
        if self.head:  # after run(): goes out with the iterable's items
            self._pending().extend(self._frame(data))
            return
        if "written" in self.__dict__:
            self.written.append(data)
        else:
            self.written = [data]  # (the class's empty default is shared)
        if self.held >= WRITE_BUFFER and self.out is not None:
            self._send_head()

    def flow(self, fd: int, out: Callable, timeout: float, counters: Any, index: int, wake: int,
             grace: Callable[[], float | None]) -> None:
        """Let write() send on `fd` itself, waiting up to `timeout` s for room (send_timeout).
        `out(fd)` is asked just before: None if the engine cannot let go of the connection now
        (write() keeps buffering), else (the output the engine still held for it, which it drops
        and write() sends first; the engine's Date line). A stop of the worker (its `wake` fd
        turns readable) bounds the waiting to what `grace()` says is left (None: no stop)."""
        self.fd, self.out, self.timeout, self.counters, self.index = fd, out, timeout, counters, index
        self.wake, self.grace = wake, grace

    def _send_head(self) -> None:
        """write() holds WRITE_BUFFER bytes: the head and them go out now, framed as a stream."""
        if self.status < 200:
            raise AppError(f"interim status {self.status} as a final response")
        got = self.out(self.fd)
        if got is None:
            return
        queued, date = got
        if self.input.__class__ is ContinueInput and not self.input.consumed:
            self.keep_alive = False  # the body the client may still send is not read: close
            self.input.final_sent = True
        self._commit(self.written, False, None)
        conn = CONN_CLOSE if not self.keep_alive else b"" if self.v11 else CONN_KEEP_ALIVE  # (the engines' _add_conn)
        head = b"".join((queued, self.head, b"" if self.has_date else date, conn, b"\r\n"))
        self.sent = True
        self.pending = [head] + ([] if self.done else self.body)
        self.written, self.body = [], []
        self._send_now()

    def _send_now(self) -> None:
        """Send every pending piece, waiting for room; an OSError the client caused is raised
        to the app (and `broken`: the engine closes the connection)."""
        if self.broken is not None:
            raise self.broken
        pending = self.pending
        if len(pending) > 16:
            pending[:] = [b"".join(pending)]
        poll = None
        try:
            while pending:
                try:
                    n = os.writev(self.fd, pending)
                except (BlockingIOError, InterruptedError):
                    if poll is None:
                        poll = self._poll()
                    self._wait_room(poll)
                    continue
                if self.counters is not None:
                    self.counters[self.index] += n
                _drop_sent(pending, n)
        except OSError as exc:
            if isinstance(exc, ConnectionError):  # EPIPE, ECONNRESET: say whose doing it is
                exc = type(exc)(exc.errno, f"{exc.strerror}: the client left; the response is cut")
            self.broken = exc
            raise exc from None
        self.held = 0

    # the engine's side ----------------------------------------------------------------
    def run(self) -> bool:
        """Call the app up to final headers. False: answer `status` instead (500 logged)."""
        try:
            result = self.app(self.environ, self.start_response)
        except Exception as exc:
            return self.failed(exc)
        return self.finish(result)

    def finish(self, result: Any, it: Any = None) -> bool:
        """run() after the app returned `result` (the C engine calls the app itself; `it`:
        result's iterator, when the C engine has begun it: the items it took come first)."""
        if self.sent:
            return self._finish_sent(result, it)
        try:
            self.result = result
            if type(result) is list and self.prefix is not None and not self.written and self.status == 200 \
                    and self.input.__class__ is not ContinueInput:
                # the common `return [body]`: all of it known, nothing to frame, no close()
                total = 0
                for c in result:
                    if type(c) is not bytes:
                        raise AppError(f"the app's iterable yielded {type(c).__name__}, not bytes")
                    total += len(c)
                if self.length < 0 or self.length == total:
                    self.committed = True
                    self.head = self.prefix if self.length >= 0 else \
                        self.prefix + b"Content-Length: %d\r\n" % total
                    self.left = 0
                    if not self.head_only:
                        self.body = result
                    return True
            chunks = self.written
            exhausted = False
            span = None
            if result.__class__ is FileWrapper and not self.written:
                span = result.span()
            if span is not None:
                exhausted = True
            elif type(result) is list or type(result) is tuple:
                for c in result:
                    if type(c) is not bytes:
                        raise AppError(f"the app's iterable yielded {type(c).__name__}, not bytes")
                chunks = chunks + list(result) if chunks else result
                exhausted = True
            else:
                self.it = it = iter(result) if it is None else it
                extra = 0
                # up to the first body byte; then, if its Content-Length is already here (Flask,
                # Falcon), a few items more for the end: the response goes out whole, not streamed
                # (the C engine's _pull_whole takes items by the same rule)
                while not self.committed or (0 <= self.length <= sum(map(len, chunks)) and extra < WHOLE_EXTRA):
                    c = _next(it)
                    if c is None:
                        exhausted = True
                        break
                    if self.committed:
                        extra += 1
                    if c:
                        self.committed = True
                        chunks = chunks + [c] if chunks else [c]
            if self.prefix is None:
                raise AppError("the app returned without calling start_response")
            self.committed = True
            self._commit(chunks, exhausted, span)
        except Exception as exc:
            return self.failed(exc)
        inp = self.input
        if inp.__class__ is ContinueInput and not inp.consumed:
            self.keep_alive = False  # the body the client may still send is not read: close
        if self.done:
            self.close()
        return True

    def _poll(self) -> Any:
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        if self.stop_at is None:
            grace = self.grace()
            if grace is not None:  # stopping already
                self.stop_at = time.monotonic() + grace
            elif self.wake >= 0:
                poll.register(self.wake, select.POLLIN)
        return poll

    def _wait_room(self, poll: Any) -> None:
        """Until fd takes more: up to `timeout` s, less once the worker is stopping."""
        while True:
            left = self.timeout if self.stop_at is None else min(self.timeout, self.stop_at - time.monotonic())
            events = poll.poll(max(0.0, left) * 1000)
            if any(f == self.wake for f, _ in events):  # asked to stop (or another wake-up)
                poll.unregister(self.wake)  # (it stays readable until the loop reads it)
                grace = self.grace()
                if grace is not None:
                    self.stop_at = time.monotonic() + grace
                if len(events) == 1:
                    continue
            if events:
                return
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                raise TimeoutError(errno.ETIMEDOUT, "the server is stopping and the client did not read the "
                                   "rest in time (graceful_timeout): the response is cut and the connection closed")
            raise TimeoutError(errno.ETIMEDOUT, f"the client read nothing for {self.timeout:g} s "
                               "(send_timeout): the response is cut and the connection closed")

    def _finish_sent(self, result: Any, it: Any) -> bool:
        """finish() after write() sent the head: the rest is a stream (pump), or nothing."""
        self.result = result
        if self.broken is not None:  # the app caught write()'s error: the engine closes
            self.close()
            return False
        if not self.done:
            try:
                self.it = iter(result) if it is None else it
            except Exception as exc:
                return self.failed(exc)
        else:
            self.close()
        return True

    def failed(self, exc: Exception) -> bool:
        """The app (or its iterable) raised `exc` before the head went out: False, `status`
        says the answer (500 logged with the traceback; 413/408/400 of a body read on demand).
        After write() sent the head (`sent`): False too, and the engine closes the connection."""
        self.close()
        if self.sent:
            if self.broken is not None and _caused_by(exc, type(self.broken)):
                log.warning("WSGI app %r on %s %s: write(): %s", self.app, self.environ.get("REQUEST_METHOD"),
                            self.environ.get("PATH_INFO"), self.broken)
            else:
                log.error("WSGI app %r failed on %s %s after write() sent the head; closing the connection",
                          self.app, self.environ.get("REQUEST_METHOD"), self.environ.get("PATH_INFO"), exc_info=exc)
            return False
        for kind, status in ((BodyTooLarge, 413), (BodyTimeout, 408), (BadBody, 400)):
            if _caused_by(exc, kind):
                self.status = status
                return False
        log.error("WSGI app %r failed on %s %s; answering 500", self.app, self.environ.get("REQUEST_METHOD"),
                  self.environ.get("PATH_INFO"), exc_info=exc)
        self.status = 500
        return False

    def _commit(self, chunks: list | tuple, exhausted: bool, span: tuple[int, int, int] | None) -> None:
        status = self.status
        no_body = self.head_only or status in (204, 304) or status < 200
        if status < 200:
            raise AppError(f"interim status {status} as a final response")
        length = self.length
        total = sum(map(len, chunks)) if exhausted else -1
        if span is not None and length < 0:
            length = span[2]
            self.head = self.prefix + b"Content-Length: %d\r\n" % length
        elif length < 0 and exhausted and status not in (204, 304):
            length = total
            self.head = self.prefix + b"Content-Length: %d\r\n" % length
        elif length < 0 and status not in (204, 304):
            self.head = self.prefix
            if self.v11:
                self.chunked = True
                self.head += b"Transfer-Encoding: chunked\r\n"
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the close
        else:
            self.head = self.prefix
        self.left = length
        if no_body:
            self.done = True
            return
        if span is not None:
            count = span[2] if length < 0 else min(length, span[2])
            self.file = [span[0], span[1], count]
            self.left = length - count  # > 0: a file shorter than its Content-Length (abort)
            self.done = count == 0
            if self.done and self.left > 0:
                self.keep_alive = False
            return
        if exhausted and (length < 0 or total <= length):  # as it is: nothing to frame or cut
            body = chunks if type(chunks) is list else list(chunks)
            self.left = length - total if length >= 0 else -1
        else:
            body = []
            for c in chunks:
                body += self._frame(c)
        self.done = exhausted
        if exhausted:
            if self.chunked:
                body.append(b"0\r\n\r\n")
            elif self.left > 0:
                self.keep_alive = False  # shorter than its Content-Length: close to mark it
                log.warning("WSGI app %r: body shorter than its Content-Length; closing", self.app)
        self.body = body

    def _frame(self, c: bytes) -> list[bytes]:
        if not c:
            return []
        if self.left >= 0:
            if len(c) > self.left:
                c = c[:self.left]
                if not c:
                    return []
            self.left -= len(c)
        if self.chunked:
            return [b"%x\r\n" % len(c), c, b"\r\n"]
        return [c]

    def pump(self, fd: int, counters: Any = None, index: int = 0) -> int:
        """Send what is left; DONE, BLOCKED (call again on EPOLLOUT) or ABORT (close)."""
        pending = self._pending()
        while True:
            if pending:
                n = self._send(os.writev, fd, pending, counters, index)
                if n < 0:
                    return -n
                _drop_sent(pending, n)
                if pending:
                    return BLOCKED
                continue
            if self.file is not None:
                f = self.file
                if f[2] > 0:
                    n = self._send(os.sendfile, fd, f, counters, index)
                    if n < 0:
                        return -n
                    if n == 0:  # the file shrank under us
                        log.warning("WSGI file_wrapper: file ended early; closing the connection")
                        self.close()
                        return ABORT
                    f[1] += n
                    f[2] -= n
                    continue
                self.file = None
                self.close()
                if self.left > 0:
                    return ABORT
                self.done = True
                return DONE
            if self.done or self.it is None:
                self.done = True
                self.close()
                return DONE
            try:
                c = _next(self.it)
            except Exception:
                log.error("WSGI app %r failed while streaming %s %s; closing the connection", self.app,
                          self.environ.get("REQUEST_METHOD"), self.environ.get("PATH_INFO"), exc_info=True)
                self.close()
                return ABORT
            if c is None:
                self.close()  # before the last bytes go: the client may act on them at once
                if self.chunked:
                    pending.append(b"0\r\n\r\n")
                elif self.left > 0:
                    log.warning("WSGI app %r: body shorter than its Content-Length; closing", self.app)
                    return ABORT
                continue
            pending += self._frame(c)

    def _pending(self) -> list:
        if "pending" not in self.__dict__:  # the class's empty default is shared: a list of our own
            self.pending = []
        return self.pending

    def _send(self, call: Callable, fd: int, what: list, counters: Any, index: int) -> int:
        """One writev (of `what`, the pending pieces) or sendfile (`what`: [in_fd, offset,
        count]): bytes sent, or -BLOCKED, or -ABORT (the client is gone: close)."""
        try:
            n = call(fd, what) if call is os.writev else call(fd, what[0], what[1], min(what[2], SENDFILE_MAX))
        except (BlockingIOError, InterruptedError):
            return -BLOCKED
        except OSError:
            self.close()
            return -ABORT
        if counters is not None:
            counters[index] += n
        return n

    def close(self) -> None:
        """Call the iterable's close() once (PEP 3333), logging what it raises."""
        if self.closed:
            return
        self.closed = True
        self.it = None
        close_iterable(self.result)


def close_iterable(result: Any) -> None:
    """The iterable's close(), if it has one (PEP 3333), logging what it raises."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.error("WSGI iterable's close() raised", exc_info=True)


def _drop_sent(pending: list, n: int) -> None:
    """Take the first n bytes (sent) off the pending pieces."""
    while n:
        k = len(pending[0])
        if n >= k:
            n -= k
            del pending[0]
        else:
            pending[0] = memoryview(pending[0])[n:]
            n = 0


def _next(it: Any) -> bytes | None:
    """The iterable's next item (None at its end); not bytes: the app's error."""
    try:
        c = next(it)
    except StopIteration:
        return None
    if type(c) is not bytes:
        raise AppError(f"the app's iterable yielded {type(c).__name__}, not bytes")
    return c


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, kind):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
