"""Parser micro-benchmarks: fastc1k._core.parse_request (C) against
fastc1k._core_py.parse_request (pure), on the same inputs; both must return the same tuple.

(The buffer pool and the response writer have no Python-level entry point in either
engine, so they are measured only through the HTTP workloads: see test_load.py.)
"""
import importlib

import pytest

from fastc1k.config import ServerConfig

CASES = {
    "wrk-get": b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser-get": (b"GET /api/data?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\n"
                    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
                    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
                    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
                    b"Connection: keep-alive\r\nCookie: session=0123456789abcdef; theme=dark\r\n"
                    b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n"
                    b"Cache-Control: max-age=0\r\n\r\n"),
    "post-length": b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    "post-chunked": (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"),
    "bad-cl-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def _engine(name):
    if name == "python":
        return importlib.import_module("fastc1k._core_py")
    try:
        mod = importlib.import_module("fastc1k._core")
    except ImportError as exc:
        pytest.skip(f"C engine not built: {exc}")
    if not getattr(mod, "ENGINE_READY", False) or not hasattr(mod, "parse_request"):
        pytest.skip("C engine not built yet (placeholder, or no parse_request)")
    return mod


@pytest.mark.parametrize("engine", ["c", "python"])
@pytest.mark.parametrize("case", list(CASES))
def test_parse_request(benchmark, engine, case):
    mod = _engine(engine)
    data, cfg = CASES[case], ServerConfig()
    benchmark.group = f"parser: {case}"
    benchmark.extra_info["engine"] = engine
    got = benchmark(mod.parse_request, data, cfg)
    if engine == "c":  # same answer as the reference engine
        assert got == importlib.import_module("fastc1k._core_py").parse_request(data, cfg)
    assert got[0] in (0, 400)
