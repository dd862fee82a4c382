"""The C and pure parsers agree on every input (Hypothesis), and each parser is consistent.

Both engines expose `parse_request(data, config)` -> (status, method, target, version,
headers, keep_alive, body, consumed): status 0 = complete, -1 = incomplete, else the
error status. Inputs are generated from the HTTP/1.1 grammar (request line, the header
fields the parser interprets, chunked and length bodies, the hostile vectors as seeds)
and then mutated (a byte inserted, replaced or dropped, a line end changed, truncation),
under three configurations (defaults, the hostile-suite limits, tiny limits).

CI runs FASTC1K_DIFF_EXAMPLES (default 1500) examples per test; the documented long run:
    FASTC1K_DIFF_EXAMPLES=100000 PYTHONPATH=src pytest tests/test_differential.py -k agree
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastc1k import ServerConfig, _core_py
from hostile_vectors import LIMITS, VECTORS

EXAMPLES = int(os.environ.get("FASTC1K_DIFF_EXAMPLES", "1500"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 5000,
                    suppress_health_check=list(HealthCheck))

# the long run outlasts the suite's default 120 s per-test timeout
pytestmark = pytest.mark.timeout(0 if EXAMPLES > 5000 else 300)

CONFIGS = [ServerConfig(), ServerConfig(**LIMITS),
           ServerConfig(max_request_line=40, max_header_bytes=80, max_headers=3, max_body=16, buffer_size=1024)]
STATUSES = {-1, 0, 400, 413, 414, 431, 501, 505}


def _c_parser():
    try:
        from fastc1k import _core
    except ImportError as exc:
        return None, f"fastc1k._core is not built ({exc})"
    if not getattr(_core, "ENGINE_READY", False):
        return None, "fastc1k._core is still the placeholder build (ENGINE_READY is False)"
    if not hasattr(_core, "parse_request"):
        return None, "fastc1k._core has no parse_request yet"
    return _core.parse_request, ""


C_PARSE, C_WHY = _c_parser()
PARSERS = {"python": _core_py.parse_request}
if C_PARSE is not None:
    PARSERS["c"] = C_PARSE


def normalize(result) -> tuple:
    """The tuple with headers as a list of (bytes, bytes) whatever sequence types were used."""
    status, method, target, version, headers, keep_alive, body, consumed = result
    if headers is not None:
        headers = [(bytes(n), bytes(v)) for n, v in headers]
    return (status, method, None if target is None else bytes(target), version, headers,
            keep_alive, None if body is None else bytes(body), consumed)


# --- the generator ---------------------------------------------------------------------------
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NASTY = [b"", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x7f", b"\xff", b",", b";", b":", b"\r\n", b"\r\n ",
         b"+", b"-", b"0x", b"\x0b"]


def _bytes_from(alphabet: bytes, min_size=0, max_size=12):
    return st.lists(st.sampled_from(list(alphabet)), min_size=min_size, max_size=max_size).map(bytes)


token = _bytes_from(TCHARS, 1, 8)
nasty = st.sampled_from(NASTY)
digits = st.one_of(st.integers(0, 40).map(lambda n: b"%d" % n),
                   st.integers(0, 10 ** 25).map(lambda n: b"%d" % n),
                   _bytes_from(b"0123456789", 1, 22))
hexsize = st.one_of(st.integers(0, 40).map(lambda n: b"%x" % n), _bytes_from(b"0123456789abcdefABCDEF", 1, 20),
                    st.integers(0, 40).map(lambda n: b"%X" % n))

def mostly(good, bad, one_in: int = 12):
    """`good`, except one draw in `one_in` from `bad` (keeps most inputs deep in the parser)."""
    # Hypothesis favours the ends of an integer range, so the bad draw is a middle value.
    return st.integers(0, one_in - 1).flatmap(lambda i: bad if i == one_in // 2 else good)


method = mostly(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE"]),
                st.one_of(st.sampled_from([b"OPTIONS", b"CONNECT", b"PRI", b"get", b"G(T", b""]), token,
                          st.binary(max_size=4)))
target = mostly(st.sampled_from([b"/", b"/api/health", b"/echo?x=1", b"http://h/x", b"https://h", b"HTTP://h/x?q",
                                 b"/caf\xc3\xa9", b"/a%20b?c=d&e"]),
                st.one_of(st.sampled_from([b"*", b"localhost:80", b"http:///x", b"http://", b"ftp://h/", b"/a b",
                                           b"/\x00", b"http://?x", b"http:/x"]),
                          _bytes_from(b"/abc?=&%:@.", 1, 20), st.binary(max_size=8)))
version = mostly(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
                 st.one_of(st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"http/1.1", b"HTTP/1.10", b"HTTP/1",
                                            b"", b"HTTP/3.0", b"HTTP/9.9"]), st.binary(max_size=9)))
eol = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"]), 25)

good_value = st.one_of(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Upgrade", b"100-continue", b"localhost",
                                        b"", b"\xc3\xa9", b"a b", b"x\ty"]), _bytes_from(b"abc ,;=\t\"", 0, 12))
bad_value = st.one_of(st.sampled_from([b"a\x00b", b"a\rb", b"a\nb", b"a\x7f"]), st.binary(max_size=8))
good_name = st.one_of(st.sampled_from([b"Connection", b"Expect", b"X-A", b"Accept", b"connection"]), token)
bad_name = st.one_of(st.sampled_from([b"Host ", b" Host", b"X A", b"", b"X\x00", b"X@Y"]), st.binary(max_size=5))
framing = st.one_of(
    st.tuples(st.sampled_from([b"Content-Length", b"content-length"]),
              st.one_of(digits, st.tuples(digits, nasty, digits).map(b"".join))),
    st.tuples(st.sampled_from([b"Transfer-Encoding", b"transfer-encoding"]),
              st.sampled_from([b"chunked", b"gzip", b"gzip, chunked", b"chunked, gzip", b"chunked, chunked",
                               b"identity", b"Chunked", b" chunked ", b"", b",chunked", b"chunked,"])),
    st.tuples(st.just(b"Host"), st.sampled_from([b"localhost", b"", b"a b"])))
name_value = mostly(st.tuples(mostly(good_name, bad_name), mostly(good_value, bad_value)), framing, 5)
header_line = st.tuples(name_value, mostly(st.sampled_from([b": ", b":", b":\t", b":  "]),
                                           st.sampled_from([b" : ", b"", b"::", b" :"]))).map(
    lambda t: t[0][0] + t[1] + t[0][1])


@st.composite
def chunked_body(draw) -> bytes:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=20))
        size = draw(st.one_of(st.just(b"%x" % len(data)), hexsize))
        ext = draw(st.sampled_from([b"", b";a=b", b";a", b" ; a = \"q\"", b";\x00", b";" + b"e" * 50]))
        out.append(size + ext + draw(eol) + data + draw(eol))
    out.append(draw(st.sampled_from([b"0", b"00", b"0;x=1", b"000000000000000000"])) + draw(eol))
    for _ in range(draw(st.integers(0, 2))):
        out.append(draw(header_line) + draw(eol))
    out.append(draw(eol))
    return b"".join(out)


@st.composite
def request(draw) -> bytes:
    line = draw(st.sampled_from([b" ", b"  ", b"\t"]) if draw(st.integers(0, 9)) == 0 else st.just(b" "))
    start = draw(method) + line + draw(target) + b" " + draw(version)
    if draw(st.integers(0, 9)) == 0:
        start = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\n"])) + start
    headers = [draw(header_line) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.integers(0, 7)):
        headers.insert(draw(st.integers(0, len(headers))), b"Host: localhost")
    body = b""
    kind = draw(st.integers(0, 3))
    if kind == 1:
        body = draw(st.binary(max_size=30))
        headers.append(b"Content-Length: %d" % len(body))
    elif kind == 2:
        headers.append(b"Transfer-Encoding: chunked")
        body = draw(chunked_body())
    head = start + b"".join(draw(eol) + h for h in headers) + draw(eol) + draw(eol)
    data = head + body
    if draw(st.booleans()):  # pipelined follower: consumed must stop at the first request's end
        data += b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    return data


@st.composite
def mutated(draw, base) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0:
            data[pos:pos] = draw(st.sampled_from(NASTY[1:] + [b"a", b"0", b"GET "]))
        elif op == 1 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 2 and pos < len(data):
            del data[pos]
        elif op == 3:
            del data[pos:]
    return bytes(data)


seeds = st.sampled_from([v[1] for v in VECTORS])
inputs = st.one_of(request(), request(), mutated(request()), mutated(seeds), st.binary(max_size=64))
configs = st.sampled_from(CONFIGS)


# --- the properties ----------------------------------------------------------------------------
needs_c = pytest.mark.skipif(C_PARSE is None, reason=f"differential test needs the C parser: {C_WHY}")


@needs_c
@SETTINGS
@given(data=inputs, cfg=configs)
def test_parsers_agree(data, cfg):
    py = normalize(_core_py.parse_request(data, cfg))
    c = normalize(C_PARSE(data, cfg))
    assert c == py, f"C and Python disagree on {data!r}\n  python: {py}\n  c:      {c}"


@needs_c
def test_parsers_agree_on_vectors_and_their_prefixes():
    cfg = ServerConfig(**LIMITS)
    for name, data, _ in VECTORS:
        for cut in range(len(data) + 1):
            py, c = normalize(_core_py.parse_request(data[:cut], cfg)), normalize(C_PARSE(data[:cut], cfg))
            assert c == py, f"{name}: C and Python disagree on {data[:cut]!r}\n  python: {py}\n  c:      {c}"


@pytest.mark.parametrize("parser", sorted(PARSERS))
@SETTINGS
@given(data=inputs, cfg=configs)
def test_parser_is_total_and_consistent(parser, data, cfg):
    """Any input gives a documented status, never an exception; a complete request is
    stable under re-parsing its own bytes, and each of its prefixes is incomplete."""
    parse = PARSERS[parser]
    result = normalize(parse(data, cfg))
    status, consumed = result[0], result[7]
    assert status in STATUSES, result
    if status != 0:
        assert result[1:] == (None,) * 6 + (0,), result
        return
    assert 0 < consumed <= len(data)
    whole = data[:consumed]
    assert normalize(parse(whole, cfg)) == result
    for cut in sorted({1, consumed // 3, consumed // 2, consumed - 2, consumed - 1}):
        if 0 < cut < consumed:
            got = parse(whole[:cut], cfg)[0]
            assert got == -1, f"prefix {whole[:cut]!r} of a complete request gives {got}"


def test_prefixes_of_vectors_never_raise():
    """Every prefix of every vector: a documented status, on every parser."""
    cfg = ServerConfig(**LIMITS)
    for parse in PARSERS.values():
        for _, data, status in VECTORS:
            for cut in range(0, len(data) + 1, max(1, len(data) // 64)):
                assert parse(data[:cut], cfg)[0] in STATUSES
            assert parse(data, cfg)[0] in (0 if status < 300 else status, -1 if status < 300 else status)
