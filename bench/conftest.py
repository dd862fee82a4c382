"""Fixtures of the bench suite (`make bench` = pytest bench --benchmark-autosave).

`server` is parametrized over FASTC1K_BENCH_SERVERS (default: floor, nginx, c, python,
uvloop, uvicorn); each server is started once per session, pinned to core 0 in a cpu
cgroup of its own, and skipped with its reason when it cannot run here. Each benchmark
round is one bounded load run (bench/workloads.py: about N requests, capped in time).
The "time" pytest-benchmark records and compares is the figure that matters, server CPU
per request (user + sys, from /proc), not wall time: wall time here measures the load
generator as much as the server (bench/METHOD.md §1). extra_info holds
the rest: user/sys split, req/s, wall time per request, errors, p99, quota.
FASTC1K_BENCH_ROUNDS (default 3) and FASTC1K_BENCH_SCALE (default 1) size the runs.
"""
from __future__ import annotations

import os
import statistics

import pytest

from bench import drivers, servers, workloads


def pytest_generate_tests(metafunc):
    for fixture in ("server", "fresh_server"):
        if fixture in metafunc.fixturenames:
            names = servers.selected()
            metafunc.parametrize(fixture, names, ids=names, indirect=True)


@pytest.fixture(scope="session")
def _server_pool():
    pool: dict[str, servers.RunningServer] = {}
    yield pool
    for s in pool.values():
        s.stop()


@pytest.fixture
def server(request, _server_pool) -> servers.RunningServer:
    name = request.param
    spec = servers.SERVERS[name]
    why = spec.unavailable() or drivers.driver_missing()
    if why:
        pytest.skip(f"{name}: {why}")
    if name not in _server_pool:
        _server_pool[name] = servers.RunningServer(spec)
    return _server_pool[name]


@pytest.fixture
def fresh_server(request):
    """A server started for this test alone (idle memory is measured before any workload)."""
    spec = servers.SERVERS[request.param]
    why = spec.unavailable()
    if why:
        pytest.skip(f"{request.param}: {why}")
    s = servers.RunningServer(spec)
    yield s
    s.stop()


def rounds() -> int:
    return int(os.environ.get("FASTC1K_BENCH_ROUNDS", "3"))


class ServerCpuClock:
    """The "timer" of a load benchmark: advanced by each round's server CPU per request
    (in seconds), so pytest-benchmark's statistics are over that figure."""

    __name__ = "server_cpu_per_request"

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def __repr__(self) -> str:
        return self.__name__


def run_workload(benchmark, server: servers.RunningServer, wname: str) -> list[dict]:
    """Benchmark one workload against one server; figures into benchmark.extra_info."""
    w = workloads.WORKLOADS[wname]
    if w.path not in server.spec.paths:
        pytest.skip(f"{server.spec.name} does not serve {w.path}")
    if w.close and not server.spec.closes:
        pytest.skip(f"{server.spec.name} does not honour Connection: close")
    benchmark.group = w.title
    if w.connections <= 1000:  # warm-up, not recorded (wrk needs longer than 1 s to open 10,000)
        workloads.measure_run(server, w, duration=1, max_requests=0)
    results: list[dict] = []
    clock = ServerCpuClock()

    def one_round() -> None:
        r = workloads.measure_run(server, w)
        results.append(r)
        clock.now += r["cpu_us"] / 1e6

    if not hasattr(benchmark, "_timer"):
        pytest.fail("this pytest-benchmark has no BenchmarkFixture._timer (known in 4.x and 5.x)")
    benchmark._timer = clock  # pytest-benchmark reads this attribute when it builds each round's runner
    benchmark.pedantic(one_round, rounds=rounds(), iterations=1, warmup_rounds=0)
    info = benchmark.extra_info
    for key in ("cpu_us", "user_us", "sys_us", "rps", "p99_us", "requests"):
        vals = [r[key] for r in results if r[key] is not None]
        if vals:
            info[key] = round(statistics.median(vals), 3)
    info["wall_us_per_request"] = round(statistics.median(r["elapsed_s"] / max(r["requests"], 1) * 1e6
                                                          for r in results), 3)
    info["errors"] = sum(sum(r["errors"].values()) for r in results)
    info["quota"] = results[0]["quota"]
    info["driver"] = results[0]["driver"]
    info["server"] = server.spec.name
    return results
