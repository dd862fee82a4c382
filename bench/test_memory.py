"""Memory per idle keep-alive connection (bench/METHOD.md §6), every server.

FASTC1K_BENCH_IDLE connections (default 10,000), one request each, then idle; RSS delta /
connection over the server's processes, kernel slab delta / connection beside it."""
import os

from bench import workloads


def test_idle_memory(benchmark, server):
    n = int(os.environ.get("FASTC1K_BENCH_IDLE", "10000"))
    benchmark.group = f"memory per idle connection, {n} connections"
    out = {}
    benchmark.pedantic(lambda: out.update(workloads.idle_memory(server, n)), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()})
    benchmark.extra_info["server"] = server.spec.name
    assert out["answered"] == n
