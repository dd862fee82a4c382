"""README "HTTP behaviour", row by row: routes, methods, connection rules, request syntax.

Limits and timers are in test_limits.py, request bodies in test_bodies.py, abusive and
many-client traffic in test_robustness.py. Every response is checked by h11 and for
Server/Date/Content-Length (tests/_client.py).
"""
from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastc1k import Routes

from _client import H11Client, RawClient, assert_error_and_close, build_request, fetch

HEALTH = b'{"status":"ok"}'


def send_expect_close(server, data: bytes, status: int, method: str = "GET") -> None:
    with RawClient(server.address) as c:
        c.send(data, [method])
        assert_error_and_close(c, status)


# --- built-in routes ---------------------------------------------------------------------

def test_health(server):
    with H11Client(server.address) as c:
        resp = c.request("GET", "/api/health")
    assert resp.status == 200
    assert resp.body == HEALTH
    assert resp.header("content-type") == b"application/json"
    assert resp.header("content-length") == b"15"
    assert resp.header("server") == b"fastc1k"


def test_health_with_query(server):
    assert fetch(server.address, build_request(target="/api/health?probe=1&x")).body == HEALTH


def test_absolute_form_target(server):
    """RFC 9112 3.2.2: a server MUST accept the absolute form; the path routes."""
    for target in ("http://localhost/api/health", "https://localhost:8443/api/health?x=1"):
        assert fetch(server.address, build_request(target=target)).body == HEALTH


def test_data_fields(server):
    with H11Client(server.address) as c:
        first, second = c.request("GET", "/api/data"), c.request("GET", "/api/data")
    assert first.status == second.status == 200
    assert first.header("content-type") == b"application/json"
    a, b = json.loads(first.body), json.loads(second.body)
    assert set(a) == {"id", "timestamp", "worker"}
    assert all(type(v) is int for v in a.values())
    assert b["id"] == a["id"] + 1
    assert abs(a["timestamp"] - time.time() * 1000) < 5000
    assert a["worker"] == b["worker"] == os.getpid()  # in-process server


def _metrics(server) -> dict[str, dict]:
    """{family: {labels-tuple: value}} from /metrics, checked to parse as Prometheus text."""
    with H11Client(server.address) as c:
        resp = c.request("GET", "/metrics")
    assert resp.status == 200
    assert resp.header("content-type").startswith(b"text/plain")
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(resp.body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_parse_and_count(server):
    before = _metrics(server)
    assert "fastc1k_requests_total" in before, sorted(before)
    with H11Client(server.address) as c:
        for _ in range(3):
            c.request("GET", "/api/health")
        c.request("GET", "/nope")
    after = _metrics(server)
    total = lambda m, name, **labels: m[name][tuple(sorted(labels.items()))]  # noqa: E731
    delta = total(after, "fastc1k_requests_total") - total(before, "fastc1k_requests_total")
    assert 4 <= delta <= 6, delta  # 4 requests, plus the /metrics requests themselves
    assert total(after, "fastc1k_responses_total", status="404") - total(before, "fastc1k_responses_total",
                                                                        status="404") == 1
    per_worker = after["fastc1k_requests_total"][(("worker", str(os.getpid())),)]
    assert per_worker == total(after, "fastc1k_requests_total")


# --- methods -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/health", "/api/data", "/metrics", "/static", "/bytes", "/big"])
def test_head_is_get_without_body(server, path):
    with RawClient(server.address) as c:
        get = c.request("GET", path)
        head = c.request("HEAD", path)
        # A body after the HEAD response would show up as garbage before this one.
        again = c.request("GET", "/api/health")
    assert head.status == get.status == 200 and head.body == b"" and again.body == HEALTH
    assert head.header("content-type") == get.header("content-type")
    if path in ("/api/health", "/static", "/bytes", "/big"):  # fixed-length bodies
        assert head.header("content-length") == get.header("content-length")
    names = lambda r: sorted(n.lower() for n, _ in r.headers)  # noqa: E731
    assert names(head) == names(get)


def test_head_of_unknown_path(server):
    with RawClient(server.address) as c:
        get = c.request("GET", "/missing")
        head = c.request("HEAD", "/missing")
        assert c.request("GET", "/api/health").status == 200
    assert head.status == get.status == 404 and head.body == b""
    assert head.header("content-length") == get.header("content-length")


def test_unknown_path_404_keeps_connection(server):
    with RawClient(server.address) as c:
        resp = c.request("GET", "/no/such/path")
        assert resp.status == 404 and resp.connection != b"close"
        assert c.request("GET", "/api/health").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "BREW", "M" * 200, "get"])
def test_wrong_method_405_with_allow(server, method):
    """Any token is a method (RFC 9110 9.1); an unknown one on a known path is 405."""
    with RawClient(server.address) as c:
        resp = c.request(method, "/api/health")
        assert resp.status == 405 and resp.connection != b"close"
        allow = {m.strip() for m in resp.header("allow").split(b",")}
        assert allow == {b"GET", b"HEAD"}
        assert c.request("GET", "/api/health").status == 200


def test_405_and_404_with_body_keep_framing(server):
    """The body of a rejected-but-kept request is consumed, not parsed as the next request."""
    with RawClient(server.address) as c:
        c.send(build_request("POST", "/api/health", body=b"GET /evil HTTP/1.1\r\n\r\n")
               + build_request("POST", "/missing", body=b"x" * 1000)
               + build_request("GET", "/api/health"), ["POST", "POST", "GET"])
        assert [r.status for r in c.read_responses(3)] == [405, 404, 200]


def test_handler_route_allow_lists_its_methods(server):
    resp = fetch(server.address, build_request("DELETE", "/echo"))
    assert resp.status == 405
    assert {m.strip() for m in resp.header("allow").split(b",")} == {b"GET", b"HEAD", b"POST", b"PUT"}


# --- connection rules ----------------------------------------------------------------------

def test_http11_keep_alive_by_default(server):
    with RawClient(server.address) as c:
        for _ in range(3):
            resp = c.request("GET", "/api/health")
            assert resp.status == 200 and resp.connection != b"close"
        assert c.still_open()


def test_http11_connection_close(server):
    with RawClient(server.address) as c:
        resp = c.request("GET", "/api/health", headers=[("Connection", "close")])
        assert resp.status == 200 and resp.connection == b"close"
        c.expect_eof()


def _open_after(server, seconds: float) -> int:
    time.sleep(seconds)
    k = server.counters()
    return k["accepted"] - k["closed"]


def test_close_after_a_whole_answered_request_does_not_linger(server):
    """Nothing unread, nothing to reset: the server closes at once (as nginx does) instead of
    waiting up to a second for the client's FIN; input after the closing request still gets
    the lingering close (the client must read its answer, not a reset)."""
    with RawClient(server.address) as c:
        assert c.request("GET", "/api/health", headers=[("Connection", "close")]).status == 200
        c.expect_eof()
        assert _open_after(server, 0.3) == 0  # while this client still holds its end open
    with RawClient(server.address) as c:
        c.send(build_request(headers=[("Connection", "close")]) + build_request(), ["GET"])
        assert c.read_response().status == 200
        c.expect_eof()
        assert _open_after(server, 0.3) == 1  # lingering: reading until our FIN or LINGER_MS


@pytest.mark.parametrize("value", ["Close", "keep-alive, close", "CLOSE"])
def test_connection_close_token_case_and_list(server, value):
    with RawClient(server.address) as c:
        assert c.request("GET", "/api/health", headers=[("Connection", value)]).connection == b"close"
        c.expect_eof()


def test_http10_closes_by_default(server):
    with RawClient(server.address) as c:
        resp = c.request("GET", "/api/health", version="HTTP/1.0")
        assert resp.status == 200 and resp.body == HEALTH
        assert resp.connection in (b"", b"close")
        c.expect_eof()


@pytest.mark.parametrize("value", ["keep-alive", "Keep-Alive"])
def test_http10_keep_alive(server, value):
    with RawClient(server.address) as c:
        for _ in range(2):
            resp = c.request("GET", "/api/health", version="HTTP/1.0", headers=[("Connection", value)])
            assert resp.status == 200 and resp.connection == b"keep-alive"
        assert c.still_open()
        resp = c.request("GET", "/api/health", version="HTTP/1.0")  # no keep-alive: the last one
        assert resp.status == 200 and resp.connection != b"keep-alive"
        c.expect_eof()


def test_http10_without_host_is_fine(server):
    with RawClient(server.address) as c:
        assert c.request("GET", "/api/health", version="HTTP/1.0", host=False).status == 200


def test_leading_empty_lines_ignored(server):
    with RawClient(server.address) as c:
        c.send(b"\r\n\r\n" + build_request(), ["GET"])
        assert c.read_response().status == 200
        c.send(b"\r\n" + build_request(), ["GET"])  # between keep-alive requests too
        assert c.read_response().status == 200


# --- pipelining ----------------------------------------------------------------------------

def test_pipelined_in_order_with_errors_in_between(server):
    reqs = [("GET", "/padded?1"), ("GET", "/missing"), ("HEAD", "/padded?2"), ("POST", "/api/health"),
            ("GET", "/padded?3"), ("GET", "/api/data"), ("POST", "/echo"), ("GET", "/padded?4")]
    data = b"".join(build_request(m, t, body=b"abc" if m == "POST" else b"") for m, t in reqs)
    with RawClient(server.address) as c:
        c.send(data, [m for m, _ in reqs])
        got = c.read_responses(len(reqs))
    assert [r.status for r in got] == [200, 404, 200, 405, 200, 200, 200, 200]
    assert got[0].body.startswith(b"1.") and got[4].body.startswith(b"3.") and got[7].body.startswith(b"4.")
    assert got[2].body == b"" and got[6].body.startswith(b"3:")


def test_pipelined_byte_by_byte_and_split(server):
    """Requests cut at every byte boundary still parse (the parser resumes mid-token)."""
    data = build_request("GET", "/padded?a") + build_request("POST", "/echo", body=b"hello") + build_request()
    with RawClient(server.address) as c:
        c.parser.expect("GET"), c.parser.expect("POST"), c.parser.expect("GET")
        for i in range(len(data)):
            c.sock.sendall(data[i:i + 1])
        got = c.read_responses(3)
    assert [r.status for r in got] == [200, 200, 200]
    assert got[1].body.startswith(b"5:")


def test_pipelined_3000_in_one_send(server):
    """More responses than one writev can carry (IOV_MAX is 1024) in a single batch."""
    n = 3000
    with RawClient(server.address, timeout=10) as c:
        c.send(build_request("GET", "/static") * n, ["GET"] * n)
        got = c.read_responses(n)
        assert all(r.status == 200 and r.body == b"hello\n" for r in got)
        assert c.request().status == 200


def test_pipeline_stops_at_connection_close(server):
    with RawClient(server.address) as c:
        c.send(build_request() + build_request(headers=[("Connection", "close")]) + build_request("GET", "/static"),
               ["GET", "GET", "GET"])
        first, second = c.read_responses(2)
        assert first.status == second.status == 200 and second.connection == b"close"
        c.expect_eof()  # the third request is not answered


def test_pipeline_stops_at_bad_request(server):
    with RawClient(server.address) as c:
        c.send(build_request() + b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n" + build_request(), ["GET", "GET", "GET"])
        assert c.read_response().status == 200
        assert_error_and_close(c, 400)


# --- request line --------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    b"GET",                                 # one token
    b"GET /api/health",                     # HTTP/0.9 style: no version
    b"/api/health HTTP/1.1",                # no method
    b" /api/health HTTP/1.1",               # empty method
    b"G(T /api/health HTTP/1.1",            # method not a token
    b"GE\x01T /api/health HTTP/1.1",
    b"GET api/health HTTP/1.1",             # target not /... or http(s)://...
    b"GET * HTTP/1.1",
    b"GET ftp://localhost/x HTTP/1.1",
    b"GET /api/he alth HTTP/1.1",           # space inside the target
    b"GET /api/\x00health HTTP/1.1",        # NUL in the target
    b"GET /api/health HTTP/1",              # malformed versions
    b"GET /api/health HTTP/1.1.1",
    b"GET /api/health http/1.1",
    b"GET /api/health HTTP/a.b",
    b"GET /api/health HTTP/11.1",
    b"GET /api/health HTTPS/1.1",
    b"GET /api/health HTTP/1.1 extra",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
])
def test_malformed_request_line_400(server, line):
    send_expect_close(server, line + b"\r\nHost: localhost\r\n\r\n", 400)


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9", b"HTTP/9.9"])
def test_unsupported_version_505(server, version):
    send_expect_close(server, b"GET /api/health " + version + b"\r\nHost: localhost\r\n\r\n", 505)


def test_http2_preface_505(server):
    send_expect_close(server, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505)


def test_bare_lf_request_line_400(server):
    send_expect_close(server, b"GET /api/health HTTP/1.1\nHost: localhost\r\n\r\n", 400)


# --- header section ------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    b"NoColon",                       # header without colon
    b"X-A : b",                       # whitespace before the colon
    b"X-A\t: b",
    b": empty-name",
    b"X(A: b",                        # invalid name bytes
    b"X A: b",
    b"X\x01A: b",
    b"X-\xffA: b",
    b"X-A: a\x00b",                   # NUL / CTL / DEL / bare CR in a value
    b"X-A: a\x01b",
    b"X-A: a\x7fb",
    b"X-A: a\rb",
    b"X-A: a\r\n b",                  # obs-fold
    b"X-A: a\r\n\tb",
    b"X-A: a\nX-B: b",                # bare LF as a line end
])
def test_bad_header_400(server, header):
    send_expect_close(server, b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n\r\n", 400)


def test_header_section_ending_in_bare_lf_400(server):
    send_expect_close(server, b"GET /api/health HTTP/1.1\r\nHost: localhost\n\n", 400)


def test_header_values_tab_and_obs_text_accepted(server):
    """HTAB and obs-text (0x80-0xFF) are legal in field values (RFC 9110 5.5)."""
    resp = fetch(server.address, build_request("GET", "/inspect", headers=[
        (b"X-Tab", b"a\tb"), (b"X-Latin", b"caf\xe9"), (b"X-Ows", b"  padded  ")]))
    assert resp.status == 200
    headers = dict((k, v) for k, v in json.loads(resp.body)["headers"])
    assert headers["x-tab"] == "a\tb" and headers["x-latin"] == "caf\xe9"
    assert headers["x-ows"] == "padded"  # OWS around the value is not part of it


def test_missing_host_400(server):
    send_expect_close(server, b"GET /api/health HTTP/1.1\r\nX-A: b\r\n\r\n", 400)


def test_two_hosts_400(server):
    send_expect_close(server, b"GET /api/health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400)


def test_framing_header_names_case_insensitive(server):
    req = (b"POST /echo HTTP/1.1\r\nhOsT: x\r\ncontent-LENGTH: 3\r\n\r\nabc"
           b"POST /echo HTTP/1.1\r\nHOST: x\r\nTRANSFER-ENCODING: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
           b"GET /api/health HTTP/1.1\r\nhost: x\r\nCONNECTION: CLOSE\r\n\r\n")
    with RawClient(server.address) as c:
        c.send(req, ["POST", "POST", "GET"])
        got = c.read_responses(3)
        assert [r.body[:2] for r in got] == [b"3:", b"2:", b'{"']
        assert got[2].connection == b"close"
        c.expect_eof()


def test_duplicate_host_in_other_case_400(server):
    send_expect_close(server, b"GET /api/health HTTP/1.1\r\nhost: a\r\nHOST: a\r\n\r\n", 400)


def test_date_header_follows_the_clock(server):
    with H11Client(server.address) as c:
        first = c.request().header("date")
        time.sleep(1.1)
        second = c.request().header("date")
    assert first != second  # the cached Date is rewritten every second


def test_host_case_insensitive_name(server):
    assert fetch(server.address, b"GET /api/health HTTP/1.1\r\nhOST: localhost\r\n\r\n").status == 200


# --- Python handler routes -----------------------------------------------------------------

def test_handler_returns_bytes(server):
    with H11Client(server.address) as c:
        resp = c.request("GET", "/bytes")
    assert (resp.status, resp.body) == (200, b"bytes-body")
    assert resp.header("content-type").startswith(b"text/plain")


def test_handler_returns_str(server):
    with H11Client(server.address) as c:
        resp = c.request("GET", "/str")
    assert (resp.status, resp.body) == (200, "str-body \u00fc".encode())


def test_handler_returns_tuple(server):
    with H11Client(server.address) as c:
        resp = c.request("GET", "/tuple")
        assert c.request("GET", "/api/health").status == 200  # connection kept
    assert (resp.status, resp.body) == (201, b"created")
    assert resp.header("x-test") == b"yes" and resp.header("content-type") == b"application/x-test"


def test_handler_sees_the_request(server):
    with H11Client(server.address) as c:
        resp = c.request("POST", "/inspect?a=1&b=%20", headers=[("X-Custom", "Value")], body=b"12345")
    got = json.loads(resp.body)
    assert (got["method"], got["path"], got["query"], got["body_len"]) == ("POST", "/inspect", "a=1&b=%20", 5)
    assert ["x-custom", "Value"] in got["headers"]


@pytest.mark.parametrize("path", ["/raise", "/bad-return", "/bad-status", "/inject", "/int-header"])
def test_handler_error_500_then_close_and_worker_goes_on(server, path):
    with RawClient(server.address) as c:
        c.send(build_request("GET", path) + build_request(), ["GET", "GET"])
        assert_error_and_close(c, 500)  # the pipelined request after it is not answered
    for _ in range(2):
        assert fetch(server.address, build_request()).status == 200
    with H11Client(server.address) as c:
        assert c.request("GET", "/bytes").status == 200


# --- counters: both engines count the same events the same way ------------------------------

@pytest.mark.parametrize("data,status,kind", [
    (b"GET / HTTP/1.1\r\nBad\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, "body_too_large"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported_coding"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "bad_version"),
])
def test_counters_for_rejected_requests(server, data, status, kind):
    before = server.counters()
    send_expect_close(server, data, status)
    after = server.counters()
    delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert delta.get(f'parse_errors{{kind="{kind}"}}') == 1, delta
    assert delta.get(f'responses{{status="{status}"}}') == 1, delta
    assert delta.get("requests") == 1, delta


def test_counters_for_served_requests(server):
    before = server.counters()
    with H11Client(server.address) as c:
        for path in ("/api/health", "/static", "/missing", "/bytes"):
            c.request("GET", path)
    after = server.counters()
    assert after["requests"] - before["requests"] == 4
    assert after['responses{status="200"}'] - before['responses{status="200"}'] == 3
    assert after['responses{status="404"}'] - before['responses{status="404"}'] == 1
    assert after["accepted"] - before["accepted"] == 1
    assert after["bytes_in"] > before["bytes_in"] and after["bytes_out"] > before["bytes_out"]


# --- OPTIONS, absolute-form authority, Upgrade (RFC 9110 9.3.7, RFC 9112 3.2.2, RFC 9110 7.8) ---
def _allow(resp) -> list[bytes]:
    return [m.strip() for m in resp.header("allow").split(b",")]


def test_options_asterisk_200_with_the_server_wide_allow(server):
    with RawClient(server.address) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", ["OPTIONS"])
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"" and resp.header("content-length") == b"0"
        allow = _allow(resp)
        assert set(allow) == {b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"} and len(allow) == len(set(allow))
        assert resp.connection != b"close" and c.request("GET", "/api/health").status == 200


def test_options_on_a_route_200_with_its_allow(server):
    with RawClient(server.address) as c:
        resp = c.request("OPTIONS", "/api/health")
        assert resp.status == 200 and _allow(resp) == [b"GET", b"HEAD", b"OPTIONS"] and resp.body == b""
        resp = c.request("OPTIONS", "/echo")
        assert resp.status == 200 and sorted(_allow(resp)) == [b"GET", b"HEAD", b"OPTIONS", b"POST", b"PUT"]
        assert c.request("OPTIONS", "/no/such/path").status == 404


def test_options_goes_to_a_handler_that_takes_it(make_server):
    routes = Routes()
    routes.handler("/cors", lambda req: (204, {"Access-Control-Allow-Origin": "*"}, b""), methods=["OPTIONS", "GET"])
    srv = make_server(routes)
    with RawClient(srv.address) as c:
        resp = c.request("OPTIONS", "/cors")
        assert resp.status == 204 and resp.header("access-control-allow-origin") == b"*"


def test_absolute_form_authority_replaces_host_for_handlers(server):
    with RawClient(server.address) as c:
        c.send(b"GET http://example.com:81/inspect HTTP/1.1\r\nHost: other.test\r\n\r\n", ["GET"])
        seen = json.loads(c.read_response().body)
        assert ["host", "example.com:81"] in seen["headers"] and ["host", "other.test"] not in seen["headers"]


def test_upgrade_is_not_switched_http_continues(server):
    """Upgrade (RFC 9110 7.8) is a request the server may ignore: no 101, the request is
    answered, and the bytes after it are parsed as the next HTTP request."""
    with RawClient(server.address) as c:
        c.send(b"GET /api/health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
               b"GET /static HTTP/1.1\r\nHost: x\r\n\r\n", ["GET", "GET"])
        first, second = c.read_responses(2)
        assert first.status == 200 and first.header("upgrade") is None
        assert second.status == 200 and second.body == b"hello\n"
