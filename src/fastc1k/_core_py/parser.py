"""The request parser, as core/parser.pxi (rule for rule the same; a differential test
compares them through parse_request()): request heads (RFC 9112 2-5) and the chunked body
decoder (RFC 9112 7.1), resumable across reads."""
from __future__ import annotations

import re

from ..config import ServerConfig
from .consts import MAX_CHUNK_LINE

__all__ = ["ParseError", "Head", "parse_head", "parse_request", "ChunkDecoder"]

# --- grammar (RFC 9110 5.6.2, RFC 9112 3, 5, 7.1) -------------------------------------
# token = 1*tchar ; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
# request-target: origin-form or absolute-form; any VCHAR or obs-text, no CTL or SP
TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
# HTTP-version = HTTP-name "/" DIGIT "." DIGIT
VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# field-line = field-name ":" OWS field-value OWS ; field-value = *field-content
# field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
FIELD_LINE = re.compile(rb"([" + _TCHAR + rb"]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*")
# chunk-size [ chunk-ext ] CRLF ; chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[\x09\x20-\x7e\x80-\xff]*)?)")
# what a chunk line may look like before its LF arrives: anything else is rejected at once
# (as the C engine's byte-wise decoder does), not when the line ends
CHUNK_LINE_START = re.compile(rb"[0-9A-Fa-f]{0,16}|[0-9A-Fa-f]{1,16}(?:[ \t]*|[ \t]*;[\x09\x20-\x7e\x80-\xff]*\r?|\r)")
CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
BARE_LF = re.compile(rb"(?<!\r)\n")

# connection states

# chunked decoder states
CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER = range(4)


class ParseError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Head:
    """A parsed request head."""
    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "length", "chunked", "expect_continue")

    def __init__(self) -> None:
        self.length = 0
        self.chunked = False
        self.expect_continue = False


def parse_head(buf: bytearray | bytes, pos: int, cfg: ServerConfig) -> tuple[Head | None, int]:
    """Parse one request head at buf[pos:]. Returns (head, end) or (None, pos) if incomplete.

    Raises ParseError(status) for anything the README table rejects.
    """
    n = len(buf)
    # RFC 9112 2.2: ignore at least one empty line before the request line
    while buf.startswith(b"\r\n", pos):
        pos += 2
    nl = buf.find(b"\n", pos)
    if nl < 0:
        partial = n - pos - (1 if n > pos and buf[n - 1] == 13 else 0)
        if partial > cfg.max_request_line:
            raise ParseError(414)
        return None, pos
    if nl == pos or buf[nl - 1] != 13:
        raise ParseError(400)  # bare LF
    if nl - 1 - pos > cfg.max_request_line:
        raise ParseError(414)
    parts = bytes(buf[pos:nl - 1]).split(b" ")
    if len(parts) != 3:
        raise ParseError(400)
    method, target, version = parts
    m = VERSION.fullmatch(version)
    if m is None:
        raise ParseError(400)
    ver = (m.group(1), m.group(2))
    if ver != (b"1", b"1") and ver != (b"1", b"0"):
        raise ParseError(505)
    if TOKEN.fullmatch(method) is None or TARGET.fullmatch(target) is None:
        raise ParseError(400)
    if target[:1] == b"/":
        path_q = target
    else:
        low = target[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            rest = target[target.index(b"//") + 2:]
            slash = rest.find(b"/")
            path_q = rest[slash:] if slash >= 0 else b"/"
            if slash == 0 or rest[:1] in (b"?", b""):
                raise ParseError(400)  # empty authority
        else:
            raise ParseError(400)  # authority-form, asterisk-form
    start = nl + 1  # header section begins here
    end = buf.find(b"\r\n\r\n", nl - 1)
    if end < 0:
        if n - start > cfg.max_header_bytes:
            raise ParseError(431)
        if BARE_LF.search(buf, start):
            raise ParseError(400)
        return None, pos
    end += 4
    if end - start > cfg.max_header_bytes:
        raise ParseError(431)

    h = Head()
    h.method = method.decode("ascii")
    h.target = target
    q = path_q.find(b"?")
    if q >= 0:
        h.path, h.query = path_q[:q].decode("latin-1"), path_q[q + 1:].decode("latin-1")
    else:
        h.path, h.query = path_q.decode("latin-1"), ""
    h.version = "HTTP/1.1" if ver[1] == b"1" else "HTTP/1.0"
    headers: list[tuple[bytes, bytes]] = []
    hosts = lengths = 0
    te: list[bytes] = []
    conn_tokens: list[bytes] = []
    if end - start > 2:
        lines = bytes(buf[start:end - 4]).split(b"\r\n")
        if len(lines) > cfg.max_headers:
            raise ParseError(431)
        for line in lines:
            fm = FIELD_LINE.fullmatch(line)
            if fm is None:
                raise ParseError(400)  # no colon, space before colon, obs-fold, CTL, bare CR/LF
            name = fm.group(1).lower()
            value = fm.group(2)
            headers.append((name, value))
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                lengths += 1
                if lengths > 1 or CONTENT_LENGTH.fullmatch(value) is None:
                    raise ParseError(400)
                h.length = int(value)
            elif name == b"transfer-encoding":
                te += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"connection":
                conn_tokens += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                h.expect_continue = value.lower() == b"100-continue"
    h.headers = headers
    if hosts > 1 or (hosts == 0 and h.version == "HTTP/1.1"):
        raise ParseError(400)
    if te:
        if lengths or h.version == "HTTP/1.0":
            raise ParseError(400)  # RFC 9112 6.1: smuggling vectors; reject (as nginx does)
        if b"" in te or te.count(b"chunked") > 1 or (b"chunked" in te and te[-1] != b"chunked"):
            raise ParseError(400)
        if te != [b"chunked"]:
            raise ParseError(501)
        h.chunked = True
    elif h.length > cfg.max_body:
        raise ParseError(413)
    if b"close" in conn_tokens:
        h.keep_alive = False
    else:
        h.keep_alive = h.version == "HTTP/1.1" or b"keep-alive" in conn_tokens
    return h, end


def parse_request(data: bytes, config: ServerConfig | None = None) -> tuple:
    """Parse one whole request from `data` (for differential tests and fuzzing).

    Returns (status, method, target, version, headers, keep_alive, body, consumed):
    status 0 = a complete request (body decoded), -1 = incomplete, else the error status.
    The C engine's `parse_request` returns the same tuple.
    """
    cfg = config or ServerConfig()
    try:
        head, pos = parse_head(data, 0, cfg)
        if head is None:
            return (-1, None, None, None, None, None, None, 0)
        if head.chunked:
            body, pos = _dechunk(data, pos, cfg)
            if body is None:
                return (-1, None, None, None, None, None, None, 0)
        else:
            if len(data) - pos < head.length:
                return (-1, None, None, None, None, None, None, 0)
            body = bytes(data[pos:pos + head.length])
            pos += head.length
    except ParseError as e:
        return (e.status, None, None, None, None, None, None, 0)
    return (0, head.method, head.target, head.version, head.headers, head.keep_alive, body, pos)


def _dechunk(data: bytes, pos: int, cfg: ServerConfig) -> tuple[bytes | None, int]:
    """Decode a whole chunked body at data[pos:] (used by parse_request)."""
    st = ChunkDecoder()
    out = bytearray()
    pos, done = st.feed(data, pos, cfg, out)
    return (bytes(out), pos) if done else (None, pos)


class ChunkDecoder:
    """Chunked body decoder, resumable across reads (RFC 9112 7.1)."""
    __slots__ = ("state", "remaining", "total", "trailer_bytes")

    def __init__(self) -> None:
        self.state = CHUNK_SIZE
        self.remaining = 0
        self.total = 0
        self.trailer_bytes = 0

    def feed(self, buf, pos: int, cfg: ServerConfig, out: bytearray | None) -> tuple[int, bool]:
        n = len(buf)
        while pos < n:
            st = self.state
            if st == CHUNK_SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if n - pos > MAX_CHUNK_LINE or CHUNK_LINE_START.fullmatch(bytes(buf[pos:n])) is None:
                        raise ParseError(400)
                    return pos, False
                if nl - pos > MAX_CHUNK_LINE:
                    raise ParseError(400)
                m = CHUNK_LINE.fullmatch(bytes(buf[pos:nl]))
                if m is None:
                    raise ParseError(400)
                size = int(m.group(1), 16)
                self.total += size
                if self.total > cfg.max_body:
                    raise ParseError(413)
                pos = nl + 2
                if size == 0:
                    self.state = TRAILER
                else:
                    self.state, self.remaining = CHUNK_DATA, size
            elif st == CHUNK_DATA:
                take = min(self.remaining, n - pos)
                if out is not None:
                    out += buf[pos:pos + take]
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = CHUNK_CRLF
            elif st == CHUNK_CRLF:
                if n - pos < 2:
                    if buf[pos] != 13:
                        raise ParseError(400)
                    return pos, False
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise ParseError(400)
                pos += 2
                self.state = CHUNK_SIZE
            else:  # TRAILER: field lines until an empty line, then done
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if self.trailer_bytes + n - pos > cfg.max_header_bytes:
                        raise ParseError(431)
                    return pos, False
                self.trailer_bytes += nl + 2 - pos
                if self.trailer_bytes > cfg.max_header_bytes:
                    raise ParseError(431)
                if nl == pos:
                    return nl + 2, True
                if FIELD_LINE.fullmatch(bytes(buf[pos:nl])) is None:
                    raise ParseError(400)
                pos = nl + 2
        return pos, False


