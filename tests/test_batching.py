"""Pipelined requests are answered with responses written together (README, "HTTP
behaviour"), observed from outside: the server runs under strace and the test counts the
write syscalls on the connection's fd.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import fastc1k

from _client import RawClient, build_request

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")

# Stops when its stdin closes (a signal would reach strace, not the server).
SERVER = """
import sys, threading
from fastc1k import Routes, Server, ServerConfig
routes = Routes()
routes.static("/static", b"hello\\n")
routes.handler("/bytes", lambda req: b"bytes-body")
srv = Server(ServerConfig(host="127.0.0.1", port=0), routes, engine=sys.argv[1])
threading.Thread(target=lambda: (sys.stdin.read(), srv.stop(False)), daemon=True).start()
print(srv.address[1], flush=True)
srv.serve_forever()
"""
WRITES = re.compile(r"^\d+\s+(write|writev|send|sendto|sendmsg)\((\d+),", re.M)
ACCEPTED = re.compile(r"^\d+\s+accept4?\(\d+,.*\)\s+=\s+(\d+)", re.M)


def test_pipelined_responses_written_together(engine, tmp_path):
    trace = tmp_path / "strace.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastc1k.__file__)), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), "-e",
                             "trace=accept,accept4,write,writev,send,sendto,sendmsg",
                             sys.executable, "-c", SERVER, engine],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        port = int(proc.stdout.readline())
        paths = ["/api/health", "/static", "/missing", "/bytes", "/api/data"] * 10  # every kind of answer
        n = len(paths)
        with RawClient(("127.0.0.1", port)) as c:
            c.send(b"".join(build_request("GET", p) for p in paths), ["GET"] * n)
            assert [r.status for r in c.read_responses(n)] == [404 if p == "/missing" else 200 for p in paths]
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = trace.read_text()
    [fd] = ACCEPTED.findall(text)
    writes = [m for m in WRITES.findall(text) if m[1] == fd]
    assert 1 <= len(writes) <= 3, f"{len(writes)} write calls for {n} pipelined responses: {writes[:10]}"
