"""The suite's response checker rejects what it must (so a passing suite means something)."""
from __future__ import annotations

from email.utils import formatdate

import pytest

from _client import ResponseParser

DATE = b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"  # placeholder: parse() puts the current date in
GOOD = b"HTTP/1.1 200 OK\r\nServer: fastc1k\r\n" + DATE + b"Content-Length: 2\r\n\r\nok"


def parse(raw: bytes, method: str = "GET"):
    raw = raw.replace(DATE, b"Date: " + formatdate(usegmt=True).encode() + b"\r\n")
    p = ResponseParser()
    p.expect(method)
    return p.feed(raw)


def test_good_response_passes():
    [resp] = parse(GOOD)
    assert (resp.status, resp.body, resp.header("server")) == (200, b"ok", b"fastc1k")
    [resp] = parse(GOOD.replace(b"\r\n\r\nok", b"\r\n\r\n"), "HEAD")
    assert resp.body == b""
    [resp] = parse(b"HTTP/1.1 100 Continue\r\n\r\n" + GOOD)
    assert resp.interim == [100]


@pytest.mark.parametrize("raw", [
    GOOD.replace(DATE, b""),                                            # no Date
    GOOD.replace(DATE, b"Date: Sat, 28 Nov 2026 6:20:12 GMT\r\n"),      # not IMF-fixdate (1-digit hour)
    GOOD.replace(DATE, b"Date: Sat, 28 Nov 1999 06:20:12 GMT\r\n"),     # far from now
    GOOD.replace(DATE, DATE * 2),                                       # two Dates
    GOOD.replace(b"Server: fastc1k\r\n", b""),                          # no Server
    GOOD.replace(b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 2\r\n"),
    GOOD.replace(b"Content-Length: 2\r\n", b"Content-Length: +2\r\n"),
    GOOD.replace(b"Server: fastc1k\r\n", b"Server: fastc1k\n"),         # bare LF
    GOOD.replace(b"Server: fastc1k", b"Bad Name: x\r\nServer: fastc1k"),  # h11: invalid name
    GOOD.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 2000 OK"),
    GOOD.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 200 O\x00K"),
])
def test_bad_response_rejected(raw):
    with pytest.raises(AssertionError):
        parse(raw)


def test_response_without_content_length_rejected():
    with pytest.raises(AssertionError, match="Content-Length"):
        parse(b"HTTP/1.1 200 OK\r\nServer: fastc1k\r\n" + DATE + b"\r\nok")
