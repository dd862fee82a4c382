"""Memory per idle keep-alive connection (bench/METHOD.md §6), every server.

FASTC1K_BENCH_IDLE connections (default 10,000), one request each, then idle, on a server
started for this measurement alone; RSS delta / connection over the server's processes,
kernel slab delta / connection and the C engine's connection struct size beside it."""
import os

from bench import workloads


def test_idle_memory(benchmark, fresh_server):
    n = int(os.environ.get("FASTC1K_BENCH_IDLE", "10000"))
    benchmark.group = f"memory per idle connection, {n} connections, fresh server"
    out = {}
    benchmark.pedantic(lambda: out.update(workloads.idle_memory(fresh_server, n)), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()})
    benchmark.extra_info["server"] = fresh_server.spec.name
    assert out["answered"] == n
