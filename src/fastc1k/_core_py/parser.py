"""The request parser, as core/parser.pxi (rule for rule the same; a differential test
compares them through parse_request()): request heads (RFC 9112 2-5) and the chunked body
decoder (RFC 9112 7.1), resumable across reads."""
from __future__ import annotations

import re

from ..chunked import (A_DONE, A_HEX, A_NEXT, A_SIZE_END, BYTE_CLASS, CS_DATA, CS_DATA_CR, CS_DONE, CS_SIZE0,
                       CS_T0, N_CLASSES, REJECT, TABLE)
from ..config import ServerConfig
from .consts import MAX_CHUNK_LINE

_HEXV = {b: int(chr(b), 16) for b in b"0123456789abcdefABCDEF"}

__all__ = ["ParseError", "Head", "parse_head", "head_next", "HeadScan", "parse_request", "ChunkDecoder"]

# --- grammar (RFC 9110 5.6.2, RFC 9112 3, 5, 7.1) -------------------------------------
# token = 1*tchar ; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
# request-target: origin-form, absolute-form or (OPTIONS only) "*"; URI characters are
# VCHAR: no CTL, no SP, no byte over 0x7E (RFC 9112 3.2; a raw UTF-8 target is a 400)
TARGET = re.compile(rb"[\x21-\x7e]+")
# Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2); no userinfo, path or list
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.vV]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(?::[0-9]*)?")
# HTTP-version = HTTP-name "/" DIGIT "." DIGIT
VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# field-line = field-name ":" OWS field-value OWS ; field-value = *field-content
# field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
FIELD_LINE = re.compile(rb"([" + _TCHAR + rb"]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*")
CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
BARE_LF = re.compile(rb"(?<!\r)\n")


class ParseError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Head:
    """A parsed request head."""
    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "length", "chunked", "expect_continue", "authority")

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
    authority = None
    if target[:1] == b"/":
        path_q = target
    elif target == b"*" and method == b"OPTIONS":
        path_q = target  # asterisk-form (RFC 9112 3.2.4)
    else:
        low = target[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            rest = target[target.index(b"//") + 2:]
            slash = rest.find(b"/")
            path_q = rest[slash:] if slash >= 0 else b"/"
            if slash == 0 or rest[:1] in (b"?", b""):
                raise ParseError(400)  # empty authority
            authority = re.split(rb"[/?]", rest, maxsplit=1)[0]
            if b"@" in authority or HOST.fullmatch(authority) is None:
                raise ParseError(400)  # userinfo (RFC 9110 4.2.4) or not a host[:port]
        else:
            raise ParseError(400)  # authority-form, other asterisk-form
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
    host_empty = False
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
                if HOST.fullmatch(value) is None:
                    raise ParseError(400)  # userinfo, a path, a list: not uri-host [":" port]
                host_empty = not value
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
    if hosts and host_empty and authority is None:
        raise ParseError(400)  # an empty Host names no authority for an origin-form target (nginx: 400)
    h.authority = authority
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


# --- the head scanner (core/parser.pxi head_scan, the same machine) -----------------------
(HS_START, HS_START_LF, HS_METHOD, HS_TARGET0, HS_TARGET, HS_VERSION, HS_RL_LF, HS_H0, HS_NAME, HS_VALUE,
 HS_H_LF, HS_END_LF) = range(12)
_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TARGETCH = frozenset(range(0x21, 0x7F))
_VALUECH = frozenset([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_DIGITS = frozenset(b"0123456789")


class HeadScan:
    """The state of an unfinished head between reads (C keeps it in the Conn, F_SCAN)."""
    __slots__ = ("st", "i", "line", "lines", "seen_cl", "rl", "hdr")

    def __init__(self) -> None:
        self.st = HS_START
        self.i = self.line = self.lines = self.rl = self.hdr = 0
        self.seen_cl = False

    def feed(self, buf, base: int, cfg: ServerConfig) -> int:
        """Advance over the head at buf[base:], from where the last call ended, and reject
        at the first byte no valid head can have, or at a limit (ParseError). Returns the
        head's length once its final CRLF is in, else 0."""
        n = len(buf) - base
        i, st, line, rl, hdr = self.i, self.st, self.line, self.rl, self.hdr
        try:
            while i < n:
                ch = buf[base + i]
                if st == HS_START:
                    if ch == 13:
                        st = HS_START_LF
                    elif ch in _TCHARS:
                        st, rl = HS_METHOD, i
                    else:
                        raise ParseError(400)  # not a request: binary, a TLS ClientHello, a bare LF
                elif st == HS_START_LF:
                    if ch != 10:
                        raise ParseError(400)
                    st = HS_START
                elif st <= HS_VERSION:
                    if ch != 13 and i + 1 - rl > cfg.max_request_line:
                        raise ParseError(414)
                    if st == HS_METHOD:
                        if ch == 32:
                            st = HS_TARGET0
                        elif ch not in _TCHARS:
                            raise ParseError(400)
                    elif st == HS_TARGET0 or st == HS_TARGET:
                        if ch == 32 and st == HS_TARGET:
                            st, line = HS_VERSION, i + 1
                        elif ch not in _TARGETCH:
                            raise ParseError(400)
                        else:
                            st = HS_TARGET
                    else:  # HS_VERSION: "HTTP/" DIGIT "." DIGIT CR
                        k = i - line
                        if k < 5:
                            ok = ch == b"HTTP/"[k]
                        elif k == 5 or k == 7:
                            ok = ch in _DIGITS
                        elif k == 6:
                            ok = ch == 46
                        else:
                            ok = k == 8 and ch == 13
                            st = HS_RL_LF
                        if not ok:
                            raise ParseError(400)
                elif st == HS_RL_LF:
                    if ch != 10:
                        raise ParseError(400)  # a bare CR
                    # the request line is whole: judge it now (version, target form, authority);
                    # without a header section parse_head cannot find a head, only an error
                    parse_head(bytes(buf[base:base + i + 1]), 0, cfg)
                    st, hdr, line = HS_H0, i + 1, i + 1
                else:
                    if i + 1 - hdr > cfg.max_header_bytes:
                        raise ParseError(431)
                    if st == HS_H0:
                        if ch == 13:
                            st = HS_END_LF
                        elif ch in _TCHARS:
                            st = HS_NAME
                        else:
                            raise ParseError(400)  # whitespace (obs-fold), a bare LF, a non-token byte
                    elif st == HS_NAME:
                        if ch == 58:
                            st = HS_VALUE
                        elif ch not in _TCHARS:
                            raise ParseError(400)
                    elif st == HS_VALUE:
                        if ch == 13:
                            st = HS_H_LF
                        elif ch not in _VALUECH:
                            raise ParseError(400)  # NUL, CTL, DEL, a bare LF
                    elif st == HS_H_LF:
                        if ch != 10:
                            raise ParseError(400)  # a bare CR
                        self.lines += 1
                        if self.lines > cfg.max_headers:
                            raise ParseError(431)
                        self._cl_line(bytes(buf[base + line:base + i - 1]))
                        st, line = HS_H0, i + 1
                    else:  # HS_END_LF
                        if ch != 10:
                            raise ParseError(400)
                        i += 1
                        return i
                i += 1
            return 0
        finally:
            self.i, self.st, self.line, self.rl, self.hdr = i, st, line, rl, hdr

    def _cl_line(self, field: bytes) -> None:
        """A field line that has just ended: a second or malformed Content-Length is a 400 now."""
        name, colon, value = field.partition(b":")
        if colon and name.lower() == b"content-length":
            if self.seen_cl or CONTENT_LENGTH.fullmatch(value.strip(b" \t")) is None:
                raise ParseError(400)
            self.seen_cl = True


def head_next(buf, pos: int, cfg: ServerConfig, c, m, mi: int) -> tuple[Head | None, int]:
    """The next request head at buf[pos:], as parse_head returns it, parsed incrementally
    (core/parser.pxi head_next): a head that arrives whole is parsed once; one that does not
    is scanned as it arrives (c.scan, resumed where the last read ended) and parsed once
    complete. So the status depends on the bytes alone, never on how they were split.
    m[mi] counts the bytes looked at."""
    first = None
    if c.scan is None:
        m[mi] += len(buf) - pos
        try:
            head, end = parse_head(buf, pos, cfg)
            if head is not None:
                return head, end
        except ParseError as e:
            first = e
        c.scan = HeadScan()
    sc = c.scan
    seen = sc.i
    try:
        s = sc.feed(buf, pos, cfg)
    except ParseError:
        c.scan = None
        raise
    finally:
        m[mi] += sc.i - seen
    if s == 0 and first is None:
        return None, pos
    c.scan = None
    if first is not None:
        raise first
    m[mi] += s
    return parse_head(buf, pos, cfg)


class _Fresh:
    """A connection with no unfinished head (for parse_request)."""
    __slots__ = ("scan",)

    def __init__(self) -> None:
        self.scan = None


def parse_request(data: bytes, config: ServerConfig | None = None) -> tuple:
    """Parse one whole request from `data` (for differential tests and fuzzing).

    Returns (status, method, target, version, headers, keep_alive, body, consumed):
    status 0 = a complete request (body decoded), -1 = incomplete, else the error status.
    The C engine's `parse_request` returns the same tuple.
    """
    cfg = config or ServerConfig()
    try:
        head, pos = head_next(data, 0, cfg, _Fresh(), [0], 0)  # as the loop parses a head
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
    st = ChunkDecoder(cfg.max_body)
    out = bytearray()
    pos, done = st.feed(data, pos, cfg, out)
    return (bytes(out), pos) if done else (None, pos)


class ChunkDecoder:
    """The chunked body decoder, resumable across reads: fastc1k.chunked's transition table
    walked byte by byte (core/parser.pxi chunk_feed walks the same table)."""
    __slots__ = ("cstate", "body_left", "allowance", "line_len")

    def __init__(self, max_body: int) -> None:
        self.cstate = CS_SIZE0
        self.body_left = 0          # current chunk size / bytes of it left
        self.allowance = max_body   # max_body minus the body decoded so far
        self.line_len = 0           # chunk-size line / trailer section bytes

    def feed(self, buf, pos: int, cfg: ServerConfig, out: bytearray | None) -> tuple[int, bool]:
        """Decode buf[pos:], appending chunk data to `out` (None: discard). Returns (the
        position reached, whether the body is complete); ParseError on a bad byte."""
        n = len(buf)
        st = self.cstate
        while pos < n:
            if st == CS_DATA:
                take = min(self.body_left, n - pos)
                if out is not None:
                    out += buf[pos:pos + take]
                pos += take
                self.body_left -= take
                if self.body_left == 0:
                    st = CS_DATA_CR
                continue
            if st == CS_DONE:
                break
            ch = buf[pos]
            if st < CS_DATA:
                self.line_len += 1
                if self.line_len > MAX_CHUNK_LINE + 2:  # its CRLF counted here
                    raise ParseError(400)
            elif st >= CS_T0:
                self.line_len += 1
                if self.line_len > cfg.max_header_bytes:
                    raise ParseError(431)
            e = TABLE[st * N_CLASSES + BYTE_CLASS[ch]]
            if e == REJECT:
                raise ParseError(400)
            st = e & 31
            act = e >> 5
            pos += 1
            if act == A_HEX:
                if self.line_len > 16:
                    raise ParseError(400)
                self.body_left = self.body_left * 16 + _HEXV[ch]
            elif act == A_SIZE_END:
                if self.body_left > self.allowance:
                    raise ParseError(413)
                self.allowance -= self.body_left
                if self.body_left == 0:
                    st = CS_T0
                    self.line_len = 0
            elif act == A_NEXT:
                self.line_len = 0
            elif act == A_DONE:
                break
        self.cstate = st
        return pos, st == CS_DONE
