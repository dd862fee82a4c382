# WSGI in C (included by _core.pyx; the rules: fastc1k.wsgi): the environ from a parsed head,
# and start_response / `return [body]` for the common request without a Python frame of ours.
from cpython.unicode cimport PyUnicode_DecodeLatin1
from cpython.dict cimport PyDict_Copy, PyDict_GetItem, PyDict_SetItem, PyDict_SetDefault
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.pythread cimport PyThread_get_thread_ident

cdef extern from "Python.h":
    object PyMethod_New2 "PyMethod_New" (object func, object self)
    Py_ssize_t PyDict_GET_SIZE(object d)

cdef dict _HEADER_KEYS = wsgi._KEYS     # lower-case name bytes -> environ key (or None: dropped)
cdef object _header_key = wsgi.header_key
cdef object _unquote = wsgi.unquote
cdef object _Exchange = wsgi.Exchange
cdef dict _HEADS = wsgi._HEADS           # (status, tuple(headers)) -> a validated head (wsgi.head_for)
cdef object _ContinueInput = wsgi.ContinueInput
cdef object _close_iterable = wsgi.close_iterable
cdef object _FileWrapper = wsgi.FileWrapper
cdef Py_ssize_t _WHOLE_EXTRA = wsgi.WHOLE_EXTRA
cdef object _chain = itertools.chain
cdef object _attach_body = wsgi.attach_body
cdef object _EMPTY_INPUT = wsgi.EMPTY_INPUT
cdef dict _RUNNING = {}  # thread ident -> the WSGI Worker whose loop runs there (Worker.run): an app
                         # call runs on its worker's thread, so write() finds its connection there
cdef str _GET = "GET"
cdef str _V11 = "HTTP/1.1"
cdef str _V10 = "HTTP/1.0"


cdef extern from "<sys/socket.h>" nogil:
    int getpeername(int fd, sockaddr *addr, socklen_t *len)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)
    uint32_t ntohl(uint32_t v)


cdef str _REMOTE_ADDR = "REMOTE_ADDR"
cdef str _REMOTE_PORT = "REMOTE_PORT"


cdef int _set_peer(dict env, Worker w, int fd, Conn *c) except -1:
    """REMOTE_ADDR and REMOTE_PORT: an IPv4 peer is asked once per connection and kept in
    w.peer4 (8 bytes per fd, no Python object per idle connection); others every request."""
    cdef sockaddr_in sa
    cdef socklen_t n = sizeof(sa)
    cdef uint64_t v
    cdef uint32_t ip, port
    cdef char digits[8]
    cdef int i = 8
    if c.flags & F_PEER:
        v = w.peer4[fd]
    elif getpeername(fd, <sockaddr *>&sa, &n) == 0 and sa.sin_family == AF_INET and n == sizeof(sa):
        v = (<uint64_t>1 << 48) | (<uint64_t>ntohs(sa.sin_port) << 32) | ntohl(sa.sin_addr.s_addr)
        w.peer4[fd] = v
        c.flags |= F_PEER
    else:
        env[_REMOTE_ADDR], env[_REMOTE_PORT] = wsgi.peer_fd(fd)
        return 0
    ip = <uint32_t>v
    if w.last_ip_str is None or ip != w.last_ip:
        w.last_ip = ip
        w.last_ip_str = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
    env[_REMOTE_ADDR] = w.last_ip_str
    port = <uint32_t>((v >> 32) & 0xFFFF)
    while True:  # str(port) without a Python int
        i -= 1
        digits[i] = <char>(48 + port % 10)
        port //= 10
        if port == 0:
            break
    env[_REMOTE_PORT] = _latin1(digits + i, <size_t>(8 - i))
    return 0


# A direct-mapped cache of header lines seen before, so a name already seen is no bytes
# object and dict lookup, and a value seen before (Host, User-Agent, Accept ...) is no new
# str: slot = hash of the lower-case name; it keeps the name's environ key (None: dropped)
# and the last value with its str. Touched with the GIL held only.
cdef enum:
    HK_SLOTS = 64           # a power of two
    HK_NAME = 40
    HK_VALUE = 120

cdef struct HKey:
    size_t nlen             # 0: empty slot
    size_t vlen
    PyObject *key           # owned: the environ key or None
    PyObject *vstr          # owned: the str of `value` (NULL: none yet)
    char name[HK_NAME]
    char value[HK_VALUE]

cdef HKey _hk[HK_SLOTS]

cdef char _last_path[HK_VALUE]
cdef size_t _last_path_len = 0
cdef object _last_path_info = None    # PATH_INFO of _last_path


cdef inline str _latin1(const char *p, size_t n):
    return PyUnicode_DecodeLatin1(p, <Py_ssize_t>n, NULL)


cdef str _PATH_INFO = "PATH_INFO"


cdef dict _wsgi_environ(dict base, const char *buf, Req *q, size_t hlen, Worker w, int fd, Conn *c):
    """`buf` is the request's first byte; the same keys as wsgi.build_environ, but the body's."""
    global _last_path_len, _last_path_info
    cdef dict env = PyDict_Copy(base)
    cdef const char *p
    cdef const char *end
    cdef const char *nl
    cdef const char *colon
    cdef const char *v
    cdef const char *ve
    cdef const char *tend = q.target + q.target_len
    cdef char low[HK_NAME]
    cdef size_t i, nn, vn
    cdef uint32_t h
    cdef Py_ssize_t size
    cdef PyObject *k
    cdef HKey *slot
    env["REQUEST_METHOD"] = _GET if q.method_len == 3 and memcmp(q.method, b"GET", 3) == 0 \
        else _latin1(q.method, q.method_len)
    if _last_path_info is not None and q.path_len == _last_path_len and memcmp(q.path, _last_path, q.path_len) == 0:
        env[_PATH_INFO] = _last_path_info
    else:
        path = _latin1(q.path, q.path_len)
        if memchr(q.path, 37, q.path_len) != NULL:
            path = _unquote(path, "latin-1")
        env[_PATH_INFO] = path
        if q.path_len <= HK_VALUE:
            memcpy(_last_path, q.path, q.path_len)
            _last_path_len = q.path_len
            _last_path_info = path
    if q.path >= q.target and q.path + q.path_len < tend:
        env["QUERY_STRING"] = _latin1(q.path + q.path_len + 1, <size_t>(tend - q.path - q.path_len - 1))
    else:
        env["QUERY_STRING"] = ""
    env["SERVER_PROTOCOL"] = _V11 if q.v11 else _V10
    _set_peer(env, w, fd, c)
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
        v = colon + 1
        ve = nl - 1                         # the CR
        while v < ve and (v[0] == 32 or v[0] == 9):
            v += 1
        while ve > v and (ve[-1] == 32 or ve[-1] == 9):
            ve -= 1
        vn = <size_t>(ve - v)
        slot = NULL
        if nn <= HK_NAME:
            h = 2166136261u                 # FNV-1a of the lower-case name
            for i in range(nn):
                low[i] = p[i] + 32 if 65 <= p[i] <= 90 else p[i]
                h = (h ^ <uint8_t>low[i]) * 16777619u
            slot = &_hk[h & (HK_SLOTS - 1)]
            if slot.nlen != nn or memcmp(slot.name, low, nn) != 0:
                name = PyBytes_FromStringAndSize(low, nn)
                k = PyDict_GetItem(_HEADER_KEYS, name)
                key = <object>k if k != NULL else _header_key(name)
                Py_XDECREF(slot.key)
                Py_XDECREF(slot.vstr)
                Py_INCREF(key)
                slot.key, slot.vstr, slot.nlen = <PyObject *>key, NULL, nn
                memcpy(slot.name, low, nn)
            key = <object>slot.key
        else:
            name = PyBytes_FromStringAndSize(p, nn).lower()
            k = PyDict_GetItem(_HEADER_KEYS, name)
            key = <object>k if k != NULL else _header_key(name)
        if key is not None:
            if slot != NULL and slot.vstr != NULL and slot.vlen == vn and memcmp(slot.value, v, vn) == 0:
                value = <object>slot.vstr
            else:
                value = _latin1(v, vn)
                if slot != NULL and vn <= HK_VALUE:
                    Py_XDECREF(slot.vstr)
                    Py_INCREF(value)
                    slot.vstr, slot.vlen = <PyObject *>value, vn
                    memcpy(slot.value, v, vn)
            size = PyDict_GET_SIZE(env)
            k = PyDict_SetDefault(env, key, value)
            if PyDict_GET_SIZE(env) == size:  # a repeated header: joined with ","
                PyDict_SetItem(env, key, <object>k + "," + value)
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
    cdef int fd             # the connection (write() may send on it: Exchange.flow)

    def __call__(self, status, headers, exc_info=None):
        global _last_status, _last_items, _last_hit
        cdef PyObject *h
        cdef Py_ssize_t i
        if self.ex is None and self.hit is None and exc_info is None and type(headers) is list:
            if _last_hit is not None and status is _last_status and len(<list>headers) == len(_last_items):
                for i in range(len(_last_items)):  # the very same (immutable) header tuples
                    if PyList_GET_ITEM(headers, i) != PyTuple_GET_ITEM(_last_items, i):
                        break
                else:
                    self.hit = _last_hit
                    return PyMethod_New2(_SR_WRITE, self)
            items = tuple(headers)
            h = PyDict_GetItem(_HEADS, (status, items))  # (unhashable: NULL, no error)
            if h != NULL:
                self.hit = _last_hit = <tuple>h
                _last_status, _last_items = status, items
                return PyMethod_New2(_SR_WRITE, self)
        return self.exchange().start_response(status, headers, exc_info)

    def write(self, data):
        return self.exchange().write(data)

    cdef object exchange(self):
        cdef Worker w
        if self.ex is None:
            ex = _Exchange(self.app, self.env, self.head_only, self.v11, self.keep_alive)
            ex.input = self.inp
            if self.hit is not None:
                ex.status, ex.prefix, ex.length, ex.has_date = self.hit
            wo = _RUNNING.get(PyThread_get_thread_ident())
            if wo is not None:  # (None: called from another thread; write() then only buffers)
                w = <Worker>wo
                ex.flow(self.fd, w._wsgi_out, w.config.send_timeout, w._slot, I_BYTES_OUT, w.efd, w._wsgi_grace)
            self.ex = ex
        return self.ex


cdef object _SR_WRITE = _StartResponse.write  # bound per call without an attribute lookup
# the last head found in _HEADS: the same status str and the same header tuples (all
# immutable) are the same head, without hashing them
cdef object _last_status = None
cdef tuple _last_items = ()
cdef tuple _last_hit = None


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


cdef int _pull_whole(object it, list chunks, Py_ssize_t length) except -2:
    """Take `it`'s items into chunks by wsgi.Exchange.finish's rule (up to the first body byte;
    then, with the app's Content-Length reached, up to WHOLE_EXTRA more to find the end).
    1: the iterable ended; 0: the rule stopped (more may come); -1: the last item is not bytes."""
    cdef Py_ssize_t total = 0, extra = 0
    cdef bint committed = False
    while not committed or (0 <= length <= total and extra < _WHOLE_EXTRA):
        c = next(it, _END)
        if c is _END:
            return 1
        chunks.append(c)
        if type(c) is not bytes:
            return -1
        if committed:
            extra += 1
        if PyBytes_GET_SIZE(c):
            committed = True
            total += PyBytes_GET_SIZE(c)
    return 0


cdef object _END = object()
