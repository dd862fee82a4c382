"""Both engines answer the same bytes to the same input, over real sockets.

test_differential.py compares the parsers in-process; this compares whole servers:
status, headers, bodies, interim responses and whether the connection ends, for the
mutated-request stream of test_wire_fuzz.py. Date values are masked; routes whose
bodies vary by design (/api/data, /metrics) are left out of the seeds.
"""
from __future__ import annotations

import os
import re
import socket

import pytest
from hypothesis import HealthCheck, Phase, given, settings

import fastc1k

from _client import RawClient, build_request
from conftest import ENGINES, TEST_DEFAULTS, make_routes
from test_wire_fuzz import VALID, mutated

# The fuzz seeds, plus requests at the limits configured below (line 200, header section
# 300, 8 fields, body 500) so that small edits cross them.
SEEDS = [seed.replace(b"/api/data", b"/static") for seed in VALID] + [
    build_request("GET", "/static?" + "q" * (200 - len("GET /static? HTTP/1.1"))),
    b"GET /static HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (300 - 20) + b"\r\n\r\n",
    b"GET /static HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(7)) + b"\r\n",
    build_request("POST", "/echo", body=b"b" * 500),
    build_request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")],
                  body=b"1f4;e=1\r\n" + b"c" * 500 + b"\r\n0\r\nX-T: 1\r\n\r\n"),
    build_request("PUT", "/api/health", body=b"x" * 20) + build_request("GET", "/nope", version="HTTP/1.0"),
]
DATE = re.compile(rb"\r\nDate: [^\r\n]*\r\n")

AGREE = settings(max_examples=300, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def both():
    if not {"python", "c"} <= set(ENGINES):
        pytest.skip("needs both engines in FASTC1K_TEST_ENGINES")
    if not fastc1k.c_available():
        if os.environ.get("FASTC1K_NO_EXTENSIONS") == "1":
            pytest.skip("C engine not built (FASTC1K_NO_EXTENSIONS=1)")
        pytest.fail("the C engine did not load and FASTC1K_NO_EXTENSIONS is not set")
    cfg = fastc1k.ServerConfig(**{**TEST_DEFAULTS, "max_request_line": 200, "max_header_bytes": 300,
                                  "max_headers": 8, "max_body": 500})
    with fastc1k.running_server(cfg, make_routes(), engine="python") as py, \
            fastc1k.running_server(cfg, make_routes(), engine="c") as c:
        yield py, c


def answer(server, data: bytes) -> tuple[bytes, str]:
    with RawClient(server.address, timeout=2) as c:
        try:
            c.sock.sendall(data)
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raw, reset = c.read_until_close(timeout=2)
    return DATE.sub(b"\r\nDate: -\r\n", raw), "reset" if reset else "eof"


@AGREE
@given(data=mutated(SEEDS))
def test_engines_answer_alike(both, data):
    py, c = both
    assert answer(py, data) == answer(c, data)
