"""Request bodies: Content-Length, chunked (RFC 9112 section 7.1), Expect: 100-continue.

The /echo handler answers `<length>:<md5>` of the body it received, so a test sees
whether the body was decoded, not just counted.
"""
from __future__ import annotations

import hashlib

import pytest

from _client import H11Client, RawClient, assert_error_and_close, build_request, fetch

CHUNKED = [("Transfer-Encoding", "chunked")]


def echo_of(body: bytes) -> bytes:
    return b"%d:%s" % (len(body), hashlib.md5(body).hexdigest().encode())


def post_chunked(server, chunked_body: bytes, te: str = "chunked"):
    return fetch(server.address, build_request("POST", "/echo", headers=[("Transfer-Encoding", te)],
                                               body=chunked_body), ("POST",))


def send_expect_close(server, data: bytes, status: int) -> None:
    with RawClient(server.address) as c:
        c.send(data, ["POST"])
        assert_error_and_close(c, status)


# --- Content-Length ----------------------------------------------------------------------------

def test_content_length_body_reaches_handler(server):
    body = bytes(range(256)) * 40
    with H11Client(server.address) as c:
        assert c.request("POST", "/echo", body=body).body == echo_of(body)
        assert c.request("PUT", "/echo", body=b"second").body == echo_of(b"second")


def test_body_discarded_for_static_route_keeps_framing(server):
    """GET with a body to a static route: the body is read and dropped, not parsed."""
    with RawClient(server.address) as c:
        c.send(build_request("GET", "/static", body=b"GET /x HTTP/1.1\r\n\r\n") + build_request(), ["GET", "GET"])
        first, second = c.read_responses(2)
    assert (first.status, first.body, second.status) == (200, b"hello\n", 200)


@pytest.mark.parametrize("value", ["0005", " 5 ", "5\t"])
def test_content_length_leading_zeros_and_ows(server, value):
    resp = fetch(server.address, build_request("POST", "/echo", headers=[("Content-Length", value)]) + b"hello")
    assert resp.body == echo_of(b"hello")


@pytest.mark.parametrize("headers", [
    [("Content-Length", "5"), ("Content-Length", "5")],     # repeated, even equal
    [("Content-Length", "5, 5")],                           # a list
    [("Content-Length", "5,5")],
    [("Content-Length", "+5")],                             # signed
    [("Content-Length", "-5")],
    [("Content-Length", "5a")],                             # non-digit
    [("Content-Length", "0x5")],
    [("Content-Length", "")],
    [("Content-Length", "5 5")],
    [("Content-Length", "1" + "0" * 18)],                   # 19 digits
    [("Content-Length", "9" * 30)],
    [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],  # both
    [("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
])
def test_bad_content_length_400(server, headers):
    send_expect_close(server, build_request("POST", "/echo", headers=headers) + b"hello", 400)


def test_content_length_18_digits_is_parsed_then_413(server):
    """18 digits is the most the parser accepts; the value is over max_body, so 413, not 400."""
    send_expect_close(server, build_request("POST", "/echo", headers=[("Content-Length", "1" + "0" * 17)]), 413)


# --- chunked -------------------------------------------------------------------------------------

def test_chunked_decoded(server):
    resp = post_chunked(server, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert resp.status == 200 and resp.body == echo_of(b"hello world")


def test_chunked_hex_case_and_leading_zeros(server):
    data = b"a" * 10 + b"b" * 171
    resp = post_chunked(server, b"A\r\n" + data[:10] + b"\r\n00000000000000aB\r\n" + data[10:] + b"\r\n0\r\n\r\n")
    assert resp.body == echo_of(data)


@pytest.mark.parametrize("te", ["Chunked", "CHUNKED", "chunked "])
def test_chunked_coding_name_case_insensitive(server, te):
    assert post_chunked(server, b"3\r\nabc\r\n0\r\n\r\n", te=te).body == echo_of(b"abc")


def test_chunk_extensions_ignored(server):
    resp = post_chunked(server, b"5;name=value\r\nhello\r\n6 ; a=\"q;uoted\" ;b\r\n world\r\n0;last\r\n\r\n")
    assert resp.body == echo_of(b"hello world")


def test_trailers_read_and_discarded(server):
    with RawClient(server.address) as c:
        c.send(build_request("POST", "/echo", headers=CHUNKED, body=b"3\r\nabc\r\n0\r\nX-Trailer: v\r\nY: z\r\n\r\n")
               + build_request(), ["POST", "GET"])
        first, second = c.read_responses(2)
    assert first.body == echo_of(b"abc") and second.status == 200


def test_chunked_empty_body(server):
    assert post_chunked(server, b"0\r\n\r\n").body == echo_of(b"")


def test_chunked_pipelined_with_keep_alive(server):
    with RawClient(server.address) as c:
        body = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
        c.send(build_request("POST", "/echo", headers=CHUNKED, body=body) * 3, ["POST"] * 3)
        assert [r.body for r in c.read_responses(3)] == [echo_of(b"wikipedia")] * 3


def test_chunked_byte_by_byte(server):
    """Every chunked state (size, extension, data, CRLF, trailer) resumes across reads."""
    data = build_request("POST", "/echo", headers=CHUNKED, body=b"5;a=b\r\nhello\r\n1\r\nX\r\n0\r\nT: v\r\n\r\n")
    with RawClient(server.address) as c:
        c.parser.expect("POST"), c.parser.expect("GET")
        for i in range(len(data)):
            c.sock.sendall(data[i:i + 1])
        c.sock.sendall(build_request())
        first, second = c.read_responses(2)
    assert first.body == echo_of(b"helloX") and second.status == 200


def test_http10_with_transfer_encoding_400(server):
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing and the
    connection MUST close; nginx answers 400 (a request-smuggling guard). Keep-alive asked
    for here, so an engine that decodes the body and keeps the connection fails."""
    send_expect_close(server, build_request("POST", "/echo", version="HTTP/1.0",
                                            headers=[("Connection", "keep-alive"), *CHUNKED],
                                            body=b"3\r\nabc\r\n0\r\n\r\n"), 400)


@pytest.mark.parametrize("te", ["chunked, chunked", "chunked, gzip", "chunked, identity"])
def test_chunked_twice_or_not_last_400(server, te):
    send_expect_close(server, build_request("POST", "/echo", headers=[("Transfer-Encoding", te)],
                                            body=b"0\r\n\r\n"), 400)


def test_chunked_in_two_header_fields_400(server):
    send_expect_close(server, build_request("POST", "/echo", headers=CHUNKED * 2, body=b"0\r\n\r\n"), 400)


@pytest.mark.parametrize("te", ["gzip", "deflate", "compress", "identity", "gzip, chunked", "x-custom"])
def test_other_transfer_coding_501(server, te):
    """nginx answers 501 to any coding but a lone chunked, even with chunked last."""
    send_expect_close(server, build_request("POST", "/echo", headers=[("Transfer-Encoding", te)],
                                            body=b"0\r\n\r\n"), 501)


@pytest.mark.parametrize("chunks", [
    b"zz\r\nhello\r\n0\r\n\r\n",                         # size not hex
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",                           # no size
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"00000000000000005\r\nhello\r\n0\r\n\r\n",          # 17 hex digits
    b"5\r\nhelloXX\r\n0\r\n\r\n",                        # data not followed by CRLF
    b"5\r\nhello\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",                            # bare LF after the size
    b"5;" + b"e" * 4200 + b"\r\nhello\r\n0\r\n\r\n",      # chunk line over 4 KiB
])
def test_bad_chunk_400(server, chunks):
    send_expect_close(server, build_request("POST", "/echo", headers=CHUNKED, body=chunks), 400)


def test_chunk_line_at_4k_passes(server):
    """4 KiB is the bound of a chunk-size line, CRLF excluded; 4097 bytes is a 400."""
    line = b"5;" + b"e" * 4094
    assert len(line) == 4096
    assert post_chunked(server, line + b"\r\nhello\r\n0\r\n\r\n").body == echo_of(b"hello")
    send_expect_close(server, build_request("POST", "/echo", headers=CHUNKED,
                                            body=line + b"e\r\nhello\r\n0\r\n\r\n"), 400)


def test_many_chunks(server):
    """Per-line bounds (16 digits, 4 KiB) apply to each chunk-size line, not to their sum."""
    body = b"".join(b"%04x;ext=%s\r\n%s\r\n" % (100, b"v" * 100, b"%03d" % i * 33 + b"z") for i in range(500))
    expected = b"".join(b"%03d" % i * 33 + b"z" for i in range(500))
    assert post_chunked(server, body + b"0\r\n\r\n").body == echo_of(expected)


def test_trailer_section_bounded_like_headers(make_server):
    srv = make_server(max_header_bytes=200)
    ok = b"0\r\nX-T: " + b"t" * 150 + b"\r\n\r\n"
    assert post_chunked(srv, ok).body == echo_of(b"")
    send_expect_close(srv, build_request("POST", "/echo", headers=CHUNKED,
                                         body=b"0\r\nX-T: " + b"t" * 300 + b"\r\n\r\n"), 431)


def test_bad_trailer_400(server):
    send_expect_close(server, build_request("POST", "/echo", headers=CHUNKED,
                                            body=b"0\r\nBad Trailer\r\n\r\n"), 400)


def test_chunk_16_hex_digits_passes(server):
    assert post_chunked(server, b"0000000000000005\r\nhello\r\n0\r\n\r\n").body == echo_of(b"hello")


# --- Expect: 100-continue ------------------------------------------------------------------------

def test_expect_100_continue_before_body(server):
    with RawClient(server.address, timeout=2) as c:
        c.send(build_request("POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", "5")]))
        head = c.sock.recv(4096)  # nothing else can come before the body is sent
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n", head
        c.parser.feed(head)
        c.send(b"hello", ["POST"])
        resp = c.read_response()
    assert resp.status == 200 and resp.interim == [100] and resp.body == echo_of(b"hello")


def test_expect_100_continue_chunked(server):
    with RawClient(server.address, timeout=2) as c:
        c.send(build_request("POST", "/echo", headers=[("Expect", "100-Continue"), *CHUNKED]), ["POST"])
        assert c.sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.sock.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        assert c.read_response().body == echo_of(b"abc")


def test_expect_100_continue_with_body_already_sent(server):
    """A client that does not wait for 100 still gets one valid response stream."""
    with H11Client(server.address) as c:
        resp = c.request("POST", "/echo", headers=[("Expect", "100-continue")], body=b"hello")
    assert resp.status == 200 and resp.body == echo_of(b"hello")


def test_expect_over_max_body_413_without_100(make_server):
    srv = make_server(max_body=10)
    with RawClient(srv.address, timeout=2) as c:
        c.send(build_request("POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", "11")]),
               ["POST"])
        resp = assert_error_and_close(c, 413)
    assert resp.interim == []


def test_expect_http10_gets_no_100(server):
    with RawClient(server.address, timeout=2) as c:
        c.send(build_request("POST", "/echo", version="HTTP/1.0", headers=[("Expect", "100-continue")],
                             body=b"hello"), ["POST"])
        resp = c.read_response()
    assert resp.status == 200 and resp.interim == [] and resp.body == echo_of(b"hello")
