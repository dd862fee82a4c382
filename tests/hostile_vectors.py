"""Hostile request vectors and the status the README's "HTTP behaviour" table documents.

One row per vector: (id, bytes sent, expected status). Every non-2xx row must be
answered with that status and `Connection: close`, then a clean close; 2xx rows are
inputs that look hostile but are valid (the parser must not over-reject). The limits
the rows push against are LIMITS (the server under test is configured with them).

Shared by tests/test_hostile.py (live servers, both engines), tests/test_differential.py
(parser seeds) and fuzz/ (the seed corpus).
"""
from __future__ import annotations

LIMITS = dict(max_request_line=1024, max_header_bytes=2048, max_headers=20, max_body=4096,
              buffer_size=4096)

H = b"Host: localhost\r\n"
OK = b"GET /api/health HTTP/1.1\r\n" + H + b"\r\n"


def _get(headers: bytes = b"", target: bytes = b"/api/health", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + headers + b"\r\n"


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\n" + H + headers + b"\r\n" + body


VECTORS: list[tuple[str, bytes, int]] = [
    # -- valid controls: the parser must accept these
    ("control-get", OK, 200),
    ("control-absolute-form", _get(H, b"http://localhost/api/health"), 200),
    ("control-absolute-form-https-upper", _get(H, b"HTTPS://localhost/api/health"), 200),
    ("control-chunked-ext", _post(b"Transfer-Encoding: chunked\r\n", b"5;name=value;x\r\nhello\r\n0\r\n\r\n"), 200),
    ("control-chunked-trailer", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), 200),
    ("control-cl-ows", _post(b"Content-Length:   5  \r\n", b"hello"), 200),
    ("control-cl-leading-zeros", _post(b"Content-Length: 0005\r\n", b"hello"), 200),
    ("control-te-case", _post(b"Transfer-Encoding: Chunked\r\n", b"0\r\n\r\n"), 200),
    ("control-leading-crlf", b"\r\n\r\n" + OK, 200),
    ("control-obs-text-value", _get(H + b"X-A: caf\xc3\xa9\r\n"), 200),
    # -- request smuggling: Content-Length and Transfer-Encoding together
    ("cl-te", _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), 400),
    ("te-cl-zero", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", b"0\r\n\r\n"), 400),
    ("te-http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    # -- Content-Length: duplicate, conflicting, list, signed, spaced, hex, overflow
    ("cl-duplicate-equal", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    ("cl-conflicting", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    ("cl-list", _post(b"Content-Length: 5, 5\r\n", b"hello"), 400),
    ("cl-plus", _post(b"Content-Length: +5\r\n", b"hello"), 400),
    ("cl-minus", _post(b"Content-Length: -5\r\n", b"hello"), 400),
    ("cl-inner-space", _post(b"Content-Length: 1 0\r\n", b"helloworld"), 400),
    ("cl-hex", _post(b"Content-Length: 0x5\r\n", b"hello"), 400),
    ("cl-empty", _post(b"Content-Length: \r\n", b""), 400),
    ("cl-decimal-point", _post(b"Content-Length: 5.0\r\n", b"hello"), 400),
    ("cl-19-digits", _post(b"Content-Length: 1000000000000000000\r\n"), 400),
    ("cl-overflow-u64", _post(b"Content-Length: 18446744073709551621\r\n", b"hello"), 400),
    ("cl-18-digits-over-max-body", _post(b"Content-Length: 999999999999999999\r\n"), 413),
    ("cl-over-max-body", _post(b"Content-Length: 4097\r\n"), 413),
    ("cl-vertical-tab", _post(b"Content-Length: 5\x0b\r\n", b"hello"), 400),
    # -- Transfer-Encoding: other or repeated codings
    ("te-gzip", _post(b"Transfer-Encoding: gzip\r\n"), 501),
    ("te-identity", _post(b"Transfer-Encoding: identity\r\n"), 501),
    ("te-gzip-chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    ("te-chunked-gzip", _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400),
    ("te-chunked-twice", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 400),
    ("te-chunked-two-lines", _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                   b"0\r\n\r\n"), 400),
    ("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501),
    # -- chunked framing: size overflow, non-hex, missing CRLF, extension abuse, body limit
    ("chunk-size-17-hex", _post(b"Transfer-Encoding: chunked\r\n", b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-16-hex-over-max-body", _post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\nhello\r\n"), 413),
    ("chunk-size-not-hex", _post(b"Transfer-Encoding: chunked\r\n", b"5g\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x", _post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", _post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", _post(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-no-crlf", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("chunk-data-too-long", _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-line-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-over-4k", _post(b"Transfer-Encoding: chunked\r\n", b"5;" + b"a" * 4200 + b"\r\nhello\r\n0\r\n\r\n"),
     400),
    ("chunk-ext-many", _post(b"Transfer-Encoding: chunked\r\n", b"5" + b";a=b" * 1100 + b"\r\nhello\r\n0\r\n\r\n"),
     400),
    ("chunk-ext-nul", _post(b"Transfer-Encoding: chunked\r\n", b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunked-over-max-body", _post(b"Transfer-Encoding: chunked\r\n", b"800\r\n" + b"x" * 2048 + b"\r\n"
                                    + b"801\r\n" + b"x" * 2049 + b"\r\n0\r\n\r\n"), 413),
    # request-target: URI characters only (RFC 9112 3.2); absolute-form without userinfo
    ("target-raw-utf8", _get(H, b"/caf\xc3\xa9"), 400),
    ("target-overlong-utf8", _get(H, b"/\xc0\xaf"), 400),
    ("target-byte-ff", _get(H, b"/\xff"), 400),
    ("absolute-form-userinfo", _get(H, b"http://user@localhost/api/health"), 400),
    ("absolute-form-userinfo-password", _get(H, b"http://u:p@localhost/api/health"), 400),
    ("control-absolute-form-port", _get(b"Host: other\r\n", b"http://localhost:8080/api/health"), 200),
    ("control-absolute-form-empty-host", _get(b"Host:\r\n", b"http://localhost/api/health"), 200),
    # Host = uri-host [ ":" port ] (RFC 9112 3.2)
    ("host-userinfo", _get(b"Host: user@localhost:8080\r\n"), 400),
    ("host-path", _get(b"Host: localhost:8080/path\r\n"), 400),
    ("host-list", _get(b"Host: a, b\r\n"), 400),
    ("host-list-no-space", _get(b"Host: a,b\r\n"), 400),
    ("host-bad-port", _get(b"Host: localhost:80a\r\n"), 400),
    ("host-empty-origin-form", _get(b"Host:\r\n"), 400),
    ("host-empty-ows-origin-form", _get(b"Host:   \r\n"), 400),
    ("control-host-port", _get(b"Host: localhost:8080\r\n"), 200),
    ("control-host-ipv6", _get(b"Host: [::1]:8080\r\n"), 200),
    ("control-host-ipv4", _get(b"Host: 127.0.0.1\r\n"), 200),
    ("control-host-empty-port", _get(b"Host: localhost:\r\n"), 200),
    # OPTIONS (RFC 9110 9.3.7): asterisk-form for OPTIONS only
    ("control-options-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 200),
    ("control-options-route", b"OPTIONS /api/health HTTP/1.1\r\n" + H + b"\r\n", 200),
    ("asterisk-form-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    # chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), nothing else
    ("control-chunk-ext-quoted", _post(b"Transfer-Encoding: chunked\r\n",
                                       b'5 ; a = "q;\\"x\\" \xe9" ;b=tok;c\r\nhello\r\n0\r\n\r\n'), 200),
    ("chunk-ext-empty-name", _post(b"Transfer-Encoding: chunked\r\n", b"5;\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-empty-name-value", _post(b"Transfer-Encoding: chunked\r\n", b"5;=v\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-empty-value", _post(b"Transfer-Encoding: chunked\r\n", b"5;a=\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-unbalanced-quote", _post(b"Transfer-Encoding: chunked\r\n", b'5;a="b\r\nhello\r\n0\r\n\r\n'), 400),
    ("chunk-ext-quote-in-token", _post(b"Transfer-Encoding: chunked\r\n", b'5;a=b"c"\r\nhello\r\n0\r\n\r\n'), 400),
    ("chunk-ext-space-in-name", _post(b"Transfer-Encoding: chunked\r\n", b"5;a b\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-trailing-space", _post(b"Transfer-Encoding: chunked\r\n", b"5;a=b \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-trailer-bare-lf-end", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\n"), 400),
    ("chunk-trailer-bare-lf-line", _post(b"Transfer-Encoding: chunked\r\n", b"0\r\nX: a\n\r\n"), 400),
    ("chunk-trailer-obs-fold", _post(b"Transfer-Encoding: chunked\r\n", b"0\r\nX: a\r\n b\r\n\r\n"), 400),
    # -- line folding, bare LF / CR, NUL, invalid tokens
    ("obs-fold", _get(H + b"X-A: a\r\n b\r\n"), 400),
    ("obs-fold-tab", _get(H + b"X-A: a\r\n\tb\r\n"), 400),
    ("bare-lf-everywhere", b"GET /api/health HTTP/1.1\nHost: localhost\n\n", 400),
    ("bare-lf-request-line", b"GET /api/health HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare-lf-header", b"GET /api/health HTTP/1.1\r\nHost: localhost\nX-A: b\r\n\r\n", 400),
    ("bare-cr-value", _get(H + b"X-A: a\rb\r\n"), 400),
    ("bare-cr-line-end", _get(b"Host: localhost\r\rX-A: b\r\n"), 400),
    ("bare-cr-request-line", b"GET /api/health\rHTTP/1.1\r\n" + H + b"\r\n", 400),
    ("nul-value", _get(H + b"X-A: a\x00b\r\n"), 400),
    ("nul-name", _get(H + b"X-\x00A: b\r\n"), 400),
    ("nul-target", _get(H, b"/api/\x00health"), 400),
    ("nul-method", b"G\x00T /api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("ctl-value", _get(H + b"X-A: a\x01b\r\n"), 400),
    ("del-value", _get(H + b"X-A: a\x7fb\r\n"), 400),
    ("method-separator", b"GE(T /api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-high-byte", b"G\xc9T /api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("method-empty", b" /api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-double-space", b"GET  /api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-tab", b"GET\t/api/health HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-trailing-space", b"GET /api/health HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("header-name-space", _get(H + b"X A: b\r\n"), 400),
    ("header-name-at", _get(H + b"X@A: b\r\n"), 400),
    ("header-name-empty", _get(H + b": b\r\n"), 400),
    ("header-space-before-colon", _get(H + b"X-A : b\r\n"), 400),
    ("header-space-before-colon-cl", _post(b"Content-Length : 5\r\n", b"hello"), 400),
    ("header-no-colon", _get(H + b"X-A b\r\n"), 400),
    ("header-leading-space-first", b"GET /api/health HTTP/1.1\r\n Host: localhost\r\n\r\n", 400),
    # -- request targets
    ("authority-form", b"CONNECT localhost:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form-ftp", _get(H, b"ftp://localhost/api/health"), 400),
    ("absolute-form-empty-authority", _get(H, b"http:///api/health"), 400),
    ("target-relative", _get(H, b"api/health"), 400),
    ("target-space", b"GET /api /health HTTP/1.1\r\n" + H + b"\r\n", 400),
    # -- Host
    ("host-missing", _get(b""), 400),
    ("host-twice", _get(H + H), 400),
    # -- versions: HTTP/0.9, HTTP/2 preface, others
    ("http09", b"GET /api/health\r\n", 400),
    ("http09-no-crlf-then-close", b"GET /\r\n\r\n", 400),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("http-1.2", _get(H, version=b"HTTP/1.2"), 505),
    ("http-2.0", _get(H, version=b"HTTP/2.0"), 505),
    ("http-3.0", _get(H, version=b"HTTP/3.0"), 505),
    ("version-lowercase", _get(H, version=b"http/1.1"), 400),
    ("version-two-digit-minor", _get(H, version=b"HTTP/1.10"), 400),
    ("version-garbage", _get(H, version=b"HTTP/x.y"), 400),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
    # -- sizes: request line, header section, header count
    ("request-line-over-limit", _get(H, b"/" + b"a" * 1100), 414),
    ("request-line-over-limit-no-crlf", b"GET /" + b"a" * 1100, 414),
    ("header-section-over-limit", _get(H + b"X-A: " + b"b" * 2100 + b"\r\n"), 431),
    ("header-section-over-limit-no-end", b"GET / HTTP/1.1\r\n" + H + b"X-A: " + b"b" * 2100, 431),
    ("headers-too-many", _get(H + b"".join(b"X-%d: v\r\n" % i for i in range(25))), 431),
    ("headers-many-empty-values", _get(H + b"X-A:\r\n" * 25), 431),
]

ERROR_STATUSES = frozenset(s for _, _, s in VECTORS if s >= 400)
