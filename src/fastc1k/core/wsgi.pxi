# WSGI in C (included by _core.pyx; the rules: fastc1k.wsgi): the environ from a parsed head,
# and start_response / `return [body]` for the common request without a Python frame of ours.
from cpython.unicode cimport PyUnicode_DecodeLatin1
from cpython.dict cimport PyDict_Copy, PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject

cdef dict _HEADER_KEYS = wsgi._KEYS     # lower-case name bytes -> environ key (or None: dropped)
cdef object _header_key = wsgi.header_key
cdef object _unquote = wsgi.unquote
cdef object _Exchange = wsgi.Exchange
cdef dict _HEADS = wsgi._HEADS           # (status, tuple(headers)) -> a validated head (wsgi.head_for)
cdef object _ContinueInput = wsgi.ContinueInput
cdef object _attach_body = wsgi.attach_body
cdef object _BytesIO = wsgi.io.BytesIO
cdef str _GET = "GET"
cdef str _V11 = "HTTP/1.1"
cdef str _V10 = "HTTP/1.0"


cdef extern from "<sys/socket.h>" nogil:
    int getpeername(int fd, sockaddr *addr, socklen_t *len)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)
    uint32_t ntohl(uint32_t v)


cdef tuple _peer(Worker w, int fd, Conn *c):
    """(REMOTE_ADDR, REMOTE_PORT): an IPv4 peer is asked once per connection and kept in
    w.peer4 (8 bytes per fd, no Python object per idle connection); others every request."""
    cdef sockaddr_in sa
    cdef socklen_t n = sizeof(sa)
    cdef uint64_t v
    cdef uint32_t ip
    if c.flags & F_PEER:
        v = w.peer4[fd]
    elif getpeername(fd, <sockaddr *>&sa, &n) == 0 and sa.sin_family == AF_INET and n == sizeof(sa):
        v = (<uint64_t>1 << 48) | (<uint64_t>ntohs(sa.sin_port) << 32) | ntohl(sa.sin_addr.s_addr)
        w.peer4[fd] = v
        c.flags |= F_PEER
    else:
        return wsgi.peer_fd(fd)
    ip = <uint32_t>v
    if w.last_ip_str is None or ip != w.last_ip:
        w.last_ip = ip
        w.last_ip_str = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
    return (w.last_ip_str, str((v >> 32) & 0xFFFF))


cdef inline str _latin1(const char *p, size_t n):
    return PyUnicode_DecodeLatin1(p, <Py_ssize_t>n, NULL)


cdef dict _wsgi_environ(dict base, const char *buf, Req *q, size_t hlen, tuple remote):
    """`buf` is the request's first byte; the same keys as wsgi.build_environ, but the body's."""
    cdef dict env = PyDict_Copy(base)
    cdef const char *p
    cdef const char *end
    cdef const char *nl
    cdef const char *colon
    cdef const char *v
    cdef const char *ve
    cdef const char *tend = q.target + q.target_len
    cdef char low[128]
    cdef size_t i, nn
    cdef PyObject *k
    env["REQUEST_METHOD"] = _GET if q.method_len == 3 and memcmp(q.method, b"GET", 3) == 0 \
        else _latin1(q.method, q.method_len)
    path = _latin1(q.path, q.path_len)
    env["PATH_INFO"] = _unquote(path, "latin-1") if memchr(q.path, 37, q.path_len) != NULL else path
    if q.path >= q.target and q.path + q.path_len < tend:
        env["QUERY_STRING"] = _latin1(q.path + q.path_len + 1, <size_t>(tend - q.path - q.path_len - 1))
    else:
        env["QUERY_STRING"] = ""
    env["SERVER_PROTOCOL"] = _V11 if q.v11 else _V10
    env["REMOTE_ADDR"] = remote[0]
    env["REMOTE_PORT"] = remote[1]
    p = buf + q.hdr_start
    end = buf + hlen - 2                    # the final CRLF
    while p < end:
        nl = <const char *>memchr(p, 10, <size_t>(end - p))
        if nl == NULL:
            break
        colon = <const char *>memchr(p, 58, <size_t>(nl - p))
        if colon == NULL:                   # cannot happen: the parser checked every line
            p = nl + 1
            continue
        nn = <size_t>(colon - p)
        if nn <= sizeof(low):
            for i in range(nn):
                low[i] = p[i] + 32 if 65 <= p[i] <= 90 else p[i]
            name = PyBytes_FromStringAndSize(low, nn)
        else:
            name = PyBytes_FromStringAndSize(p, nn).lower()
        k = PyDict_GetItem(_HEADER_KEYS, name)
        key = <object>k if k != NULL else _header_key(name)
        if key is not None:
            v = colon + 1
            ve = nl - 1                     # the CR
            while v < ve and (v[0] == 32 or v[0] == 9):
                v += 1
            while ve > v and (ve[-1] == 32 or ve[-1] == 9):
                ve -= 1
            value = _latin1(v, <size_t>(ve - v))
            k = PyDict_GetItem(env, key)
            if k != NULL:
                value = <object>k + "," + value
            PyDict_SetItem(env, key, value)
        p = nl + 1
    if q.authority != NULL:  # an absolute-form target's authority replaces Host (RFC 9112 3.2.2)
        env["HTTP_HOST"] = _latin1(q.authority, q.authority_len)
    return env


@cython.final
@cython.freelist(4)
cdef class _StartResponse:
    """The C engine's start_response. The common case, one call with a head validated before
    (a hit in wsgi._HEADS), stays here; anything else (a head not seen yet, exc_info, a second
    call, write()) goes to a wsgi.Exchange made then, which holds the rules."""
    cdef object app, env, inp
    cdef tuple hit          # the validated head: (status code, head bytes, app's Content-Length, has Date)
    cdef object ex          # the wsgi.Exchange, once one is needed
    cdef bint head_only, v11, keep_alive

    def __call__(self, status, headers, exc_info=None):
        cdef PyObject *h
        if self.ex is None and self.hit is None and exc_info is None and type(headers) is list:
            h = PyDict_GetItem(_HEADS, (status, tuple(headers)))  # (unhashable: NULL, no error)
            if h != NULL:
                self.hit = <tuple>h
                return self.write
        return self.exchange().start_response(status, headers, exc_info)

    def write(self, data):
        return self.exchange().write(data)

    cdef object exchange(self):
        if self.ex is None:
            ex = _Exchange(self.app, self.env, self.head_only, self.v11, self.keep_alive)
            ex.input = self.inp
            if self.hit is not None:
                ex.status, ex.prefix, ex.length, ex.has_date = self.hit
            self.ex = ex
        return self.ex


cdef bytes _list_head(tuple hit, list result):
    """The head of a `return [body]` that needs no framing (all bytes, the app's Content-Length
    absent or exact, a status with a body); None: wsgi.Exchange.finish decides."""
    cdef int code = hit[0]
    cdef Py_ssize_t total = 0, length = hit[2]
    if code < 200 or code == 204 or code == 304:
        return None
    for x in result:
        if type(x) is not bytes:
            return None
        total += PyBytes_GET_SIZE(x)
    if length < 0:
        return hit[1] + b"Content-Length: %d\r\n" % total
    return hit[1] if length == total else None
