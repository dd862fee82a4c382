# The in-place HTTP/1.1 request parser (RFC 9112), rule for rule the same as
# fastc1k._core_py.parser (parse_head, ChunkDecoder: the reference; a differential test compares
# them through parse_request()). Nothing is copied: Req points into the buffer.
#
# Strategy: a head is parsed whole once its terminating CRLFCRLF is in the buffer (each
# read re-parses from the request line: heads are small and this keeps no state); bodies
# are streamed through the chunked decoder's table (fastc1k.chunked), its state in the Conn.

# RFC 9110 5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
cdef uint8_t TCHAR[256]
# request-target bytes: VCHAR (no CTL, no SP, no byte over 0x7E: RFC 9112 3.2 wants URI syntax)
cdef uint8_t TARGETCH[256]
# uri-host bytes of a reg-name or IPv4address (RFC 3986 3.2.2), pct-encoded loosely: no "@", "/", ","
cdef uint8_t HOSTCH[256]
# field-value bytes after the colon: SP / HTAB / VCHAR / obs-text (OWS included)
cdef uint8_t VALUECH[256]
cdef const char *HTTP_NAME = b"HTTP/"
# hex digit value + 1 (0 = not a hex digit)
cdef uint8_t HEXV[256]
# the chunked decoder's rules: fastc1k.chunked.BYTE_CLASS and TABLE, copied at import
cdef uint8_t CHUNK_CLASS[256]
cdef uint8_t CHUNK_TABLE[CHUNK_STATES * CHUNK_CLASSES]


cdef int _init_tables() except -1:
    cdef int i
    for i in range(256):
        TCHAR[i] = 1 if (48 <= i <= 57 or 65 <= i <= 90 or 97 <= i <= 122
                         or i in b"!#$%&'*+-.^_`|~") else 0
        TARGETCH[i] = 1 if 0x21 <= i <= 0x7e else 0
        HOSTCH[i] = 1 if (48 <= i <= 57 or 65 <= i <= 90 or 97 <= i <= 122 or i in b"-._~!$&'()*+;=%") else 0
        VALUECH[i] = 1 if (i == 9 or 0x20 <= i <= 0x7e or i >= 0x80) else 0
        HEXV[i] = 0
    for i in range(10):
        HEXV[48 + i] = i + 1
    for i in range(6):
        HEXV[65 + i] = 11 + i
        HEXV[97 + i] = 11 + i
    from . import chunked
    if (len(chunked.TABLE) != CHUNK_STATES * CHUNK_CLASSES or chunked.N_CLASSES != CHUNK_CLASSES
            or chunked.REJECT != CHUNK_REJECT
            or (chunked.CS_SIZE0, chunked.CS_SIZE_LF, chunked.CS_DATA, chunked.CS_DATA_CR, chunked.CS_T0,
                chunked.CS_DONE) != (CS_SIZE0, CS_SIZE_LF, CS_DATA, CS_DATA_CR, CS_T0, CS_DONE)
            or (chunked.A_HEX, chunked.A_SIZE_END, chunked.A_NEXT, chunked.A_DONE)
            != (A_HEX, A_SIZE_END, A_NEXT, A_DONE)):
        raise ImportError("fastc1k._core was built for another chunked decoder table")
    for i in range(256):
        CHUNK_CLASS[i] = chunked.BYTE_CLASS[i]
    for i in range(CHUNK_STATES * CHUNK_CLASSES):
        CHUNK_TABLE[i] = chunked.TABLE[i]
    return 0

_init_tables()


cdef inline bint ci_eq(const char *p, size_t n, const char *lower, size_t ln) noexcept nogil:
    """p[:n] equals the lower-case ASCII string `lower`, ignoring case."""
    cdef size_t i
    if n != ln:
        return False
    for i in range(n):
        if (<uint8_t>p[i] | 0x20) != <uint8_t>lower[i]:
            return False
    return True


cdef bint host_ok(const char *v, size_t n) noexcept nogil:
    """Host = uri-host [ ":" port ] (RFC 9110 7.2): a reg-name or IPv4 address, or an IP
    literal in brackets, then an optional port; no userinfo, path or list (the reference is
    _core_py/parser.py HOST). An empty value passes here (judged by the target's form)."""
    cdef size_t i = 0
    cdef uint8_t ch
    if n and v[0] == 91:  # "[" IP-literal "]"
        i = 1
        while i < n and v[i] != 93:
            ch = <uint8_t>v[i]
            if not (HEXV[ch] or ch == 58 or ch == 46 or ch == 118 or ch == 86):
                return False
            i += 1
        if i == n or i == 1:
            return False
        i += 1
    else:
        while i < n and HOSTCH[<uint8_t>v[i]]:
            i += 1
    if i < n:
        if v[i] != 58:
            return False
        i += 1
        while i < n:
            if not (48 <= v[i] <= 57):
                return False
            i += 1
    return True


cdef inline bint _is_ows(char c) noexcept nogil:
    return c == 32 or c == 9


cdef inline void _strip(const char **p, size_t *n) noexcept nogil:
    while n[0] and _is_ows(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] and _is_ows(p[0][n[0] - 1]):
        n[0] -= 1


cdef ssize_t _find_crlfcrlf(const char *b, size_t start, size_t n) noexcept nogil:
    cdef const char *p
    cdef size_t i = start
    while i + 3 < n:
        p = <const char *>memchr(b + i + 3, 10, n - i - 3)
        if p == NULL:
            return -1
        i = <size_t>(p - b) - 3
        if b[i] == 13 and b[i + 1] == 10 and b[i + 2] == 13:
            return <ssize_t>i
        i += 1
    return -1


cdef size_t _parse_fast(const char *b, size_t pos, size_t n, Req *r, const Limits *lim) noexcept nogil:
    """The common case in one pass: a complete, well-formed head within every limit, with an
    origin-form target and no Transfer-Encoding. Returns its end, or 0 for anything else,
    which parse_head's full path then judges (so every error status comes from there, in
    the reference's order; this path only accepts what that path would accept, alike)."""
    cdef const char *p = b + pos
    cdef const char *e = b + n
    cdef const char *s
    cdef const char *v
    cdef size_t ln, vn, count = 0, hosts = 0, i
    cdef bint conn_close = False, conn_ka = False, has_length = False
    cdef int64_t length = 0
    # request-line = method SP origin-form SP "HTTP/1." ("0" / "1") CRLF
    s = p
    while p < e and TCHAR[<uint8_t>p[0]]:
        p += 1
    if p == s or p >= e or p[0] != 32:
        return 0
    r.method = s
    r.method_len = <size_t>(p - s)
    p += 1
    s = p
    if p >= e or p[0] != 47:
        return 0
    while p < e and TARGETCH[<uint8_t>p[0]]:
        p += 1
    if p >= e or p[0] != 32:
        return 0
    r.target = s
    r.target_len = <size_t>(p - s)
    p += 1
    if (e - p < 10 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != 49 and p[7] != 48)
            or p[8] != 13 or p[9] != 10 or <size_t>(p + 8 - (b + pos)) > lim.max_line):
        return 0
    r.v11 = p[7] == 49
    p += 10
    r.hdr_start = <size_t>(p - b)
    # field-line CRLF ... CRLF
    while True:
        if p >= e:
            return 0
        if p[0] == 13:
            if p + 1 >= e or p[1] != 10:
                return 0
            p += 2
            break
        s = p
        while p < e and TCHAR[<uint8_t>p[0]]:
            p += 1
        if p == s or p >= e or p[0] != 58:
            return 0
        ln = <size_t>(p - s)
        p += 1
        v = p
        while p < e and VALUECH[<uint8_t>p[0]]:
            p += 1
        if p + 1 >= e or p[0] != 13 or p[1] != 10:
            return 0
        vn = <size_t>(p - v)
        _strip(&v, &vn)
        p += 2
        count += 1
        if ln == 4 and ci_eq(s, 4, b"host", 4):
            hosts += 1
            if vn == 0 or not host_ok(v, vn):
                return 0
        elif ci_eq(s, ln, b"content-length", 14):
            if has_length or vn == 0 or vn > 18:
                return 0
            has_length = True
            for i in range(vn):
                if not (48 <= v[i] <= 57):
                    return 0
                length = length * 10 + (v[i] - 48)
        elif ci_eq(s, ln, b"transfer-encoding", 17):
            return 0
        elif ci_eq(s, ln, b"connection", 10):
            _conn_list(v, vn, &conn_close, &conn_ka)
        elif ci_eq(s, ln, b"expect", 6):
            r.expect_continue = ci_eq(v, vn, b"100-continue", 12)
    if (<size_t>(p - b) - r.hdr_start > lim.max_hdr or count > lim.max_headers or hosts > 1
            or (hosts == 0 and r.v11) or <uint64_t>length > lim.max_body):
        return 0
    s = <const char *>memchr(r.target, 63, r.target_len)
    r.path = r.target
    r.path_len = r.target_len if s == NULL else <size_t>(s - r.target)
    r.content_length = length
    r.chunked = 0
    r.keep_alive = (not conn_close) and (r.v11 or conn_ka)
    return <size_t>(p - b)


@cython.cdivision(True)  # a constant divisor
cdef ssize_t parse_head(const char *b, size_t n, Req *r, const Limits *lim) noexcept nogil:
    """Parse one request head at b[:n].

    Returns the head's length (leading empty lines and final CRLF included) when complete,
    0 when more input is needed (r.skip = leading empty lines that may be dropped), or
    -status for anything the README table rejects.
    """
    cdef size_t pos = 0, nl, ls, le, s1, s2, i, k, start, end, ln, lines, vn, hosts = 0, lengths = 0
    cdef size_t rest, slash
    cdef const char *p
    cdef const char *v
    cdef const char *pq
    cdef size_t pqn
    cdef bint te_any = False, te_empty = False, te_other = False, te_last_chunked = False
    cdef bint conn_close = False, conn_ka = False, host_empty = False
    cdef int te_chunked = 0
    cdef int64_t length = 0

    r.skip = 0
    # RFC 9112 2.2: ignore at least one empty line (CRLF) before the request-line
    while pos + 1 < n and b[pos] == 13 and b[pos + 1] == 10:
        pos += 2
    r.skip = pos
    k = _parse_fast(b, pos, n, r, lim)
    if k:
        return <ssize_t>k
    p = <const char *>memchr(b + pos, 10, n - pos)
    if p == NULL:
        ln = n - pos
        if ln and b[n - 1] == 13:
            ln -= 1
        return -414 if ln > lim.max_line else 0
    nl = p - b
    if nl == pos or b[nl - 1] != 13:
        return -400  # bare LF
    if nl - 1 - pos > lim.max_line:
        return -414

    # request-line = method SP request-target SP HTTP-version
    ls = pos
    le = nl - 1
    p = <const char *>memchr(b + ls, 32, le - ls)
    if p == NULL:
        return -400
    s1 = p - b
    p = <const char *>memchr(b + s1 + 1, 32, le - s1 - 1)
    if p == NULL:
        return -400  # HTTP/0.9 style: no version
    s2 = p - b
    # HTTP-version = HTTP-name "/" DIGIT "." DIGIT  (exactly 8 bytes: a third SP fails here)
    if (le - s2 - 1 != 8 or memcmp(b + s2 + 1, b"HTTP/", 5) != 0 or not (48 <= b[s2 + 6] <= 57)
            or b[s2 + 7] != 46 or not (48 <= b[s2 + 8] <= 57)):
        return -400
    if b[s2 + 6] != 49 or (b[s2 + 8] != 49 and b[s2 + 8] != 48):
        return -505
    r.v11 = b[s2 + 8] == 49
    # method = token
    if s1 == ls:
        return -400
    for i in range(ls, s1):
        if not TCHAR[<uint8_t>b[i]]:
            return -400
    # request-target: origin-form or absolute-form
    if s2 == s1 + 1:
        return -400
    for i in range(s1 + 1, s2):
        if not TARGETCH[<uint8_t>b[i]]:
            return -400
    r.method = b + ls
    r.method_len = s1 - ls
    r.target = b + s1 + 1
    r.target_len = s2 - s1 - 1
    if r.target[0] == 47:
        pq = r.target
        pqn = r.target_len
    elif ((r.target_len >= 7 and ci_eq(r.target, 7, b"http://", 7))
          or (r.target_len >= 8 and ci_eq(r.target, 8, b"https://", 8))):
        rest = 7 if r.target[4] == 58 else 8      # after "//"
        if rest == r.target_len or r.target[rest] == 47 or r.target[rest] == 63:
            return -400  # empty authority
        p = <const char *>memchr(r.target + rest, 47, r.target_len - rest)
        if p == NULL:
            pq = b"/"
            pqn = 1
        else:
            pq = p
            pqn = r.target_len - <size_t>(p - r.target)
        r.authority = r.target + rest
        r.authority_len = 0
        while rest + r.authority_len < r.target_len and r.authority[r.authority_len] != 47 \
                and r.authority[r.authority_len] != 63:
            r.authority_len += 1
        if memchr(r.authority, 64, r.authority_len) != NULL or not host_ok(r.authority, r.authority_len):
            return -400  # userinfo (RFC 9110 4.2.4) or not a host[:port]
    elif r.target_len == 1 and r.target[0] == 42 and r.method_len == 7 and memcmp(r.method, b"OPTIONS", 7) == 0:
        pq = r.target  # asterisk-form (RFC 9112 3.2.4)
        pqn = 1
    else:
        return -400  # authority-form, other asterisk-form
    p = <const char *>memchr(pq, 63, pqn)
    r.path = pq
    r.path_len = pqn if p == NULL else <size_t>(p - pq)

    # header section: field lines, then an empty line
    start = nl + 1
    r.hdr_start = start
    if <ssize_t>(nl - 1) + 4 > <ssize_t>n:
        end = <size_t>-1
    else:
        end = <size_t>_find_crlfcrlf(b, nl - 1, n)
    if end == <size_t>-1:
        if n - start > lim.max_hdr:
            return -431
        for i in range(start, n):
            if b[i] == 10 and b[i - 1] != 13:
                return -400
        return 0
    end += 4
    if end - start > lim.max_hdr:
        return -431
    if end - start > 2:
        # count field lines (split at CRLF) before judging any: 431 wins over 400; a line
        # takes at least 2 bytes, so a short section cannot hold too many
        if (end - 4 - start) // 2 + 1 > lim.max_headers:
            lines = 1
            i = start
            while True:
                p = <const char *>memchr(b + i, 10, end - 4 - i)
                if p == NULL:
                    break
                k = p - b
                if k > start and b[k - 1] == 13:
                    lines += 1
                i = k + 1
            if lines > lim.max_headers:
                return -431
        i = start
        while i < end - 2:
            # field-line = field-name ":" OWS field-value OWS, then CRLF. The section ends
            # in CRLFCRLF and CR is neither a tchar nor a value byte: both scans stop in it.
            p = b + i
            while TCHAR[<uint8_t>p[0]]:
                p += 1
            ln = <size_t>(p - (b + i))
            if ln == 0 or p[0] != 58:
                return -400  # no name, or a non-token byte (space, CR, LF) before the colon
            v = p + 1
            p = v
            while VALUECH[<uint8_t>p[0]]:
                p += 1
            if p[0] != 13 or p[1] != 10:
                return -400  # NUL, CTL, DEL, bare CR or LF in the value
            k = <size_t>(p - b)
            vn = <size_t>(p - v)
            _strip(&v, &vn)
            p = b + i
            if ci_eq(p, ln, b"host", 4):
                hosts += 1
                if not host_ok(v, vn):
                    return -400  # userinfo, a path, a list: not uri-host [":" port]
                host_empty = vn == 0
            elif ci_eq(p, ln, b"content-length", 14):
                lengths += 1
                if lengths > 1 or vn == 0 or vn > 18:
                    return -400
                length = 0
                for s2 in range(vn):
                    if not (48 <= v[s2] <= 57):
                        return -400
                    length = length * 10 + (v[s2] - 48)
            elif ci_eq(p, ln, b"transfer-encoding", 17):
                _te_list(v, vn, &te_any, &te_empty, &te_chunked, &te_other, &te_last_chunked)
            elif ci_eq(p, ln, b"connection", 10):
                _conn_list(v, vn, &conn_close, &conn_ka)
            elif ci_eq(p, ln, b"expect", 6):
                r.expect_continue = ci_eq(v, vn, b"100-continue", 12)
            i = k + 2
    r.content_length = 0
    r.chunked = 0
    if hosts > 1 or (hosts == 0 and r.v11):
        return -400
    if hosts and host_empty and r.authority == NULL:
        return -400  # an empty Host names no authority for an origin-form target (nginx: 400)
    if te_any:
        if lengths or not r.v11:
            return -400  # RFC 9112 6.1: smuggling vectors (both framings; TE in HTTP/1.0), as nginx
        if te_empty or te_chunked > 1 or (te_chunked and not te_last_chunked):
            return -400
        if te_other:
            return -501
        r.chunked = 1
    else:
        if <uint64_t>length > lim.max_body:
            return -413
        r.content_length = length
    r.keep_alive = (not conn_close) and (r.v11 or conn_ka)
    return <ssize_t>end


cdef ssize_t _cl_line(const char *p, size_t n, bint *seen) noexcept nogil:
    """A field line that has just ended: a second or malformed Content-Length is a 400 now."""
    cdef const char *colon = <const char *>memchr(p, 58, n)
    cdef const char *v
    cdef size_t vn, i
    if colon == NULL or not ci_eq(p, <size_t>(colon - p), b"content-length", 14):
        return 0
    v = colon + 1
    vn = n - <size_t>(v - p)
    _strip(&v, &vn)
    if seen[0] or vn == 0 or vn > 18:
        return -400
    for i in range(vn):
        if not (48 <= v[i] <= 57):
            return -400
    seen[0] = True
    return 0


cdef ssize_t head_scan(const char *b, size_t n, Conn *c, const Limits *lim, Req *q) noexcept nogil:
    """The head scanner: advance over b[c.line_len:n], the bytes not seen yet, and reject at
    the first byte no valid head can have (binary junk, a TLS ClientHello, a bad version,
    a bare CR or LF, a line starting with whitespace, a repeated or malformed
    Content-Length once its line ends), or at a limit. Returns the head's length once its
    final CRLF is in, 0 for more (its state kept in c), or -status. _core_py/parser.py
    HeadScan is the same machine. Each byte is looked at once: a head trickled byte by
    byte costs its length, not its length squared."""
    cdef size_t i = c.line_len, k
    cdef uint8_t st = c.cstate, ch
    cdef bint ok
    cdef uint64_t a = <uint64_t>c.allowance
    cdef size_t line = <uint32_t>a, lines = <uint32_t>(a >> 32) & 0x3FFFFFFF
    cdef bint seen_cl = (a >> 62) & 1
    cdef size_t rl = <uint32_t>c.body_left, hdr = <uint32_t>(c.body_left >> 32)
    cdef ssize_t r = 0
    while i < n:
        ch = <uint8_t>b[i]
        if st == HS_START:
            if ch == 13:
                st = HS_START_LF
            elif TCHAR[ch]:
                st = HS_METHOD
                rl = i
            else:
                r = -400  # not a request: binary, a TLS ClientHello, a bare LF
                break
        elif st == HS_START_LF:
            if ch != 10:
                r = -400
                break
            st = HS_START
        elif st <= HS_VERSION:
            if ch != 13 and i + 1 - rl > lim.max_line:
                r = -414
                break
            if st == HS_METHOD:
                if ch == 32:
                    st = HS_TARGET0
                elif not TCHAR[ch]:
                    r = -400
                    break
            elif st == HS_TARGET0 or st == HS_TARGET:
                if ch == 32 and st == HS_TARGET:
                    st = HS_VERSION
                    line = i + 1
                elif not TARGETCH[ch]:
                    r = -400
                    break
                else:
                    st = HS_TARGET
            else:  # HS_VERSION: "HTTP/" DIGIT "." DIGIT CR
                k = i - line
                if k < 5:
                    ok = ch == <uint8_t>HTTP_NAME[k]
                elif k == 5 or k == 7:
                    ok = 48 <= ch <= 57
                elif k == 6:
                    ok = ch == 46
                else:
                    ok = k == 8 and ch == 13
                    st = HS_RL_LF
                if not ok:
                    r = -400
                    break
        elif st == HS_RL_LF:
            if ch != 10:
                r = -400  # a bare CR
                break
            # the request line is whole: judge it now (version, target form, authority);
            # without a header section parse_head cannot find a head, only an error
            r = parse_head(b, i + 1, q, lim)
            if r < 0:
                break
            r = 0
            hdr = line = i + 1
            st = HS_H0
        else:
            if i + 1 - hdr > lim.max_hdr:
                r = -431
                break
            if st == HS_H0:
                if ch == 13:
                    st = HS_END_LF
                elif TCHAR[ch]:
                    st = HS_NAME
                else:
                    r = -400  # whitespace (obs-fold), a bare LF, a non-token byte
                    break
            elif st == HS_NAME:
                if ch == 58:
                    st = HS_VALUE
                elif not TCHAR[ch]:
                    r = -400
                    break
            elif st == HS_VALUE:
                if ch == 13:
                    st = HS_H_LF
                elif not VALUECH[ch]:
                    r = -400  # NUL, CTL, DEL, a bare LF
                    break
            elif st == HS_H_LF:
                if ch != 10:
                    r = -400  # a bare CR
                    break
                lines += 1
                if lines > lim.max_headers:
                    r = -431
                    break
                r = _cl_line(b + line, i - 1 - line, &seen_cl)
                if r < 0:
                    break
                line = i + 1
                st = HS_H0
            else:  # HS_END_LF
                if ch != 10:
                    r = -400
                    break
                r = <ssize_t>(i + 1)
                i += 1
                break
        i += 1
    c.line_len = <uint32_t>i
    c.cstate = st
    c.allowance = <int64_t>(<uint64_t>line | (<uint64_t>lines << 32) | (<uint64_t>seen_cl << 62))
    c.body_left = <uint64_t>rl | (<uint64_t>hdr << 32)
    return r


cdef ssize_t head_next(const char *b, size_t n, Req *q, Conn *c, const Limits *lim,
                       uint64_t *scanned) noexcept nogil:
    """The next request head at b[:n], as parse_head returns it, parsed incrementally: a
    head that arrives whole is parsed once (the fast path); one that does not is scanned
    as it arrives (head_scan, resumed where the last read ended) and parsed once complete.
    So the status depends on the bytes alone, never on how they were split into reads."""
    cdef ssize_t r = 0, s
    cdef size_t seen
    if not (c.flags & F_SCAN):
        scanned[0] += n
        r = parse_head(b, n, q, lim)
        if r > 0:
            return r
        c.line_len = 0
        c.cstate = HS_START
        c.allowance = 0
        c.body_left = 0
        c.flags |= F_SCAN
    seen = c.line_len
    s = head_scan(b, n, c, lim, q)
    scanned[0] += c.line_len - seen
    if s == 0 and r == 0:
        q.skip = 0
        return 0
    c.flags &= ~F_SCAN
    if s < 0 or r != 0:
        return s if s < 0 else r
    memset(q, 0, sizeof(Req))
    scanned[0] += <size_t>s
    return parse_head(b, <size_t>s, q, lim)


cdef inline void _te_list(const char *v, size_t vn, bint *te_any, bint *te_empty, int *te_chunked,
                          bint *te_other, bint *te_last_chunked) noexcept nogil:
    """Transfer-Encoding = #transfer-coding: every element, empty ones included."""
    cdef const char *p = v
    cdef const char *end = v + vn
    cdef const char *c
    cdef size_t n
    while True:
        c = <const char *>memchr(p, 44, end - p)
        if c == NULL:
            c = end
        n = c - p
        _strip(&p, &n)
        te_any[0] = True
        if n == 0:
            te_empty[0] = True
            te_last_chunked[0] = False
        elif ci_eq(p, n, b"chunked", 7):
            te_chunked[0] += 1
            te_last_chunked[0] = True
        else:
            te_other[0] = True
            te_last_chunked[0] = False
        if c == end:
            break
        p = c + 1


cdef inline void _conn_list(const char *v, size_t vn, bint *close, bint *ka) noexcept nogil:
    cdef const char *p = v
    cdef const char *end = v + vn
    cdef const char *c
    cdef size_t n
    while True:
        c = <const char *>memchr(p, 44, end - p)
        if c == NULL:
            c = end
        n = c - p
        _strip(&p, &n)
        if ci_eq(p, n, b"close", 5):
            close[0] = True
        elif ci_eq(p, n, b"keep-alive", 10):
            ka[0] = True
        if c == end:
            break
        p = c + 1


cdef ssize_t chunk_feed(Conn *c, const char *b, size_t n, const Limits *lim,
                        size_t *doff, size_t *dlen) noexcept nogil:
    """Advance the chunked decoder over b[:n] (RFC 9112 7.1): fastc1k.chunked's transition
    table (CHUNK_TABLE), byte by byte, as _core_py/parser.py ChunkDecoder walks it.

    Returns the bytes consumed (-status on error). It stops after each run of chunk data,
    reported as b[doff:doff+dlen] (dlen = 0: none); c.cstate == CS_DONE at the end of
    the trailer section.
    """
    cdef size_t i = 0, take
    cdef uint8_t ch, st, e, act
    dlen[0] = 0
    while i < n:
        st = c.cstate
        if st == CS_DATA:
            take = n - i
            if take > c.body_left:
                take = <size_t>c.body_left
            doff[0] = i
            dlen[0] = take
            c.body_left -= take
            if c.body_left == 0:
                c.cstate = CS_DATA_CR
            return <ssize_t>(i + take)
        if st == CS_DONE:
            return <ssize_t>i
        ch = <uint8_t>b[i]
        if st < CS_DATA:
            c.line_len += 1
            if c.line_len > MAX_CHUNK_LINE + 2:  # its CRLF counted here
                return -400
        elif st >= CS_T0:
            c.line_len += 1
            if c.line_len > lim.max_hdr:
                return -431
        e = CHUNK_TABLE[st * CHUNK_CLASSES + CHUNK_CLASS[ch]]
        if e == CHUNK_REJECT:
            return -400
        c.cstate = e & 31
        act = e >> 5
        i += 1
        if act == A_HEX:
            if c.line_len > 16:
                return -400
            c.body_left = (c.body_left << 4) | (HEXV[ch] - 1)
        elif act == A_SIZE_END:
            if c.body_left > <uint64_t>c.allowance:
                return -413
            c.allowance -= <int64_t>c.body_left
            if c.body_left == 0:
                c.cstate = CS_T0
                c.line_len = 0
        elif act == A_NEXT:
            c.line_len = 0
        elif act == A_DONE:
            return <ssize_t>i
    return <ssize_t>i
