"""HTTP workloads, one group each, every server side by side (figures in extra_info).

    pytest bench/test_load.py --benchmark-autosave
    pytest-benchmark compare --group-by=group --columns=min,median,max
"""
import pytest

from bench.conftest import run_workload


@pytest.mark.parametrize("wname", ["keepalive-c100", "keepalive-c1000", "keepalive-c10000"])
def test_keepalive(benchmark, server, wname):
    results = run_workload(benchmark, server, wname)
    assert all(r["requests"] > 0 for r in results), results


def test_quota_throughput(benchmark, server):
    results = run_workload(benchmark, server, "quota-c1000")
    assert all(r["requests"] > 0 for r in results), results


def test_pipelined(benchmark, server):
    results = run_workload(benchmark, server, "pipelined16-c100")
    assert all(r["requests"] > 0 for r in results), results


def test_api_data(benchmark, server):
    results = run_workload(benchmark, server, "data-c1000")
    assert all(r["requests"] > 0 for r in results), results


def test_new_connection_per_request(benchmark, server):
    results = run_workload(benchmark, server, "newconn-c50")
    assert all(r["requests"] > 0 for r in results), results


def test_python_handler(benchmark, server):
    results = run_workload(benchmark, server, "handler-c100")
    assert all(r["requests"] > 0 for r in results), results
