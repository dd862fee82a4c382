"""The load farm on Dask distributed: a real LocalCluster against the local farm on the same
spec; refusals (unreachable scheduler, workers without fastc1k / another version / no C
extension, a plan the cluster cannot hold, clocks apart); and "two machines": two network
namespaces made here, each running a real ``dask worker``, loading a server through veth
pairs, one of them killed mid-stage.

Runs are open loop at small rates (1-3 s), so the counts are known in advance.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

if os.environ.get("FASTC1K_NO_EXTENSIONS"):
    pytest.skip("the load generator needs its C extension", allow_module_level=True)
distributed = pytest.importorskip("distributed")

import fastc1k  # noqa: E402
from fastc1k import ServerConfig  # noqa: E402
from fastc1k.load import LoadFarm, LoadSpec, run  # noqa: E402
from fastc1k.load.cluster import ClusterError, DaskExecutor  # noqa: E402

from _env import SRC, stop_process  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(pythonpath: str) -> dict:
    return {**os.environ, "PYTHONPATH": pythonpath}


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def server():
    with fastc1k.running_server(ServerConfig(host="127.0.0.1", port=0)) as srv:
        yield srv


def _url(srv, host="127.0.0.1") -> str:
    return f"http://{host}:{srv.address[1]}/api/health"


def test_local_cluster_matches_the_local_farm(cluster, server):
    spec = dict(url=_url(server), connections=20, rate=1000, duration=2.0)
    local = run(LoadSpec(**spec, processes=2))
    farm = LoadFarm(LoadSpec(**spec), executor=DaskExecutor(cluster)).start()
    try:
        time.sleep(2.0 + (farm.started_ns / 1e9 - time.monotonic()))
    finally:
        res = farm.stop()
    a, b = local.summary, res.summary
    assert b["executor"] == "dask" and a["executor"] == "local"
    assert b["processes"] == 2                       # one per worker thread
    assert a["errors"] == b["errors"] == {}
    # the same schedule gives the same counts (within 5 %: stop lands within a tick)
    assert abs(a["requests"] - b["requests"]) <= 0.05 * a["requests"], (a["requests"], b["requests"])
    assert 1800 <= b["requests"] <= 2100
    # the same histogram layout and the same per-second rows
    for h in ("histogram", "service_histogram"):
        x, y = getattr(local, h), getattr(res, h)
        assert (x.lowest_trackable_value, x.highest_trackable_value, x.significant_figures,
                x.counts_len) == (y.lowest_trackable_value, y.highest_trackable_value,
                                  y.significant_figures, y.counts_len)
    assert res.histogram.get_total_count() == b["requests"]
    assert set(local.timeline[0]) == set(res.timeline[0])
    assert [r["t"] for r in res.timeline] == list(range(len(res.timeline)))
    # the per-worker table: one row per process, grouped by machine, adding up
    rows = b["workers"]
    assert len(rows) == 2 and {r["machine"] for r in rows} == {"127.0.0.1"}
    assert len({r["worker"] for r in rows}) == 2
    assert sum(r["requests"] for r in rows) == b["requests"]
    assert all(r["intended_rate"] == 500.0 and not r["lost"] for r in rows)
    assert set(b["clock_offsets"]) == {r["worker"] for r in rows}
    assert all(abs(c["offset_ms"]) < 50 for c in b["clock_offsets"].values())


def test_the_cluster_refuses_a_plan_it_cannot_hold(cluster, server):
    with pytest.raises(ClusterError, match=r"needs 10,000,000 connections and the cluster holds [\d,]+: "
                                           r"tcp://127\.0\.0\.1:\d+ on 127\.0\.0\.1: \d+ processes x [\d,]+ \(fd limit"):
        LoadFarm(LoadSpec(url=_url(server), connections=10_000_000), executor=DaskExecutor(cluster))


def test_clocks_beyond_the_bound_are_refused(cluster, server):
    with pytest.raises(ClusterError, match=r"worker clocks differ from this one by more than 1e-06 ms"):
        LoadFarm(LoadSpec(url=_url(server), connections=2),
                 executor=DaskExecutor(cluster, max_clock_offset=1e-9))


def test_only_the_clocks_of_workers_that_get_processes_are_judged(cluster, server):
    """One farm process on a two-worker cluster: the refusal names only the worker that
    would run it (the idle one's clock cannot skew the run's seconds)."""
    with pytest.raises(ClusterError) as got:
        LoadFarm(LoadSpec(url=_url(server), connections=2, processes=1),
                 executor=DaskExecutor(cluster, max_clock_offset=1e-9))
    assert str(got.value).count("tcp://") == 1, got.value


def test_cli_on_a_cluster_prints_the_table(cluster, server, tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "fastc1k.load", _url(server), "-c", "4", "-R", "200",
                        "-d", "1s", "-q", "--cluster", cluster, "--json", str(out)],
                       capture_output=True, text=True, timeout=60, env=_env(SRC))
    assert p.returncode == 0, p.stderr
    assert "load processes by machine:" in p.stdout and "clock offsets:" in p.stdout
    import json
    s = json.loads(out.read_text())["summary"]
    assert s["executor"] == "dask" and sum(r["requests"] for r in s["workers"]) == s["requests"] > 0


def test_unreachable_scheduler_is_one_line_and_exit_2():
    p = subprocess.run([sys.executable, "-m", "fastc1k.load", "http://127.0.0.1:1/", "-d", "1s",
                        "--cluster", f"tcp://127.0.0.1:{_free_port()}"],
                       capture_output=True, text=True, timeout=60, env=_env(SRC))
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:" in p.stderr


BARE = """
import runpy, sys
class NoFastc1k:
    def find_spec(self, name, path=None, target=None):
        if name == "fastc1k" or name.startswith("fastc1k."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoFastc1k())
runpy.run_module("dask", run_name="__main__")
"""


def test_workers_without_fastc1k_or_another_version_or_no_c_are_refused(tmp_path):
    """Three workers the coordinator must refuse, each named with what it runs."""
    old = tmp_path / "old" / "fastc1k"
    noc = tmp_path / "noc" / "fastc1k" / "load"
    old.mkdir(parents=True)
    noc.mkdir(parents=True)
    (old / "__init__.py").write_text('__version__ = "0.0.1"\n')
    (noc.parent / "__init__.py").write_text(f'__version__ = "{fastc1k.__version__}"\n')
    (noc / "__init__.py").write_text("")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stderr=subprocess.DEVNULL, cwd=tmp_path)]
    try:
        for name, path in (("bare", ""), ("old", str(old.parent)), ("noc", str(noc.parent.parent))):
            # "bare": fastc1k cannot be imported in that worker (it may be installed here)
            launch = BARE if name == "bare" else "import runpy; runpy.run_module('dask', run_name='__main__')"
            procs.append(subprocess.Popen([sys.executable, "-c", launch, "worker", address, "--nthreads", "1",
                                           "--name", name, "--no-dashboard", "--no-nanny"], cwd=tmp_path,
                                          env=_env(path), stderr=subprocess.DEVNULL))
        client = distributed.Client(address, timeout=20)
        client.wait_for_workers(3, timeout=30)
        client.close()
        with pytest.raises(ClusterError) as e:
            LoadFarm(LoadSpec(url="http://127.0.0.1:1/", connections=3), executor=DaskExecutor(address))
        msg = str(e.value)
        assert msg.startswith("refused: ") and msg.count("on 127.0.0.1 (host ") == 3, msg
        assert "fastc1k is not importable" in msg
        assert f"fastc1k 0.0.1, the coordinator runs {fastc1k.__version__}" in msg
        assert f"fastc1k {fastc1k.__version__} without its C extension fastc1k.load._client" in msg
    finally:
        for p in reversed(procs):
            stop_process(p, timeout=2)


# ---------------------------------------------------------------------------- two machines

NS = ("fc1k-dask-a", "fc1k-dask-b")
NET = "10.214.14"          # a /29 per namespace: root side .1 / .9, namespace .2(-.3) / .10
ROOT_IP = f"{NET}.1"
NS_IP = {NS[0]: f"{NET}.2", NS[1]: f"{NET}.10"}


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def _cleanup():
    for i, ns in enumerate(NS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"fc1kdask{i}"], capture_output=True)


@pytest.fixture
def two_machines():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    _cleanup()
    try:
        for i, ns in enumerate(NS):
            host, peer, inner = f"fc1kdask{i}", f"fc1kdask{i}p", NS_IP[ns]
            root = ROOT_IP if i == 0 else f"{NET}.9"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            _sh("ip", "link", "set", peer, "netns", ns)
            _sh("ip", "addr", "add", f"{root}/29", "dev", host)
            _sh("ip", "link", "set", host, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{inner}/29", "dev", peer)
            if i == 0:   # machine a declares two source addresses
                _sh("ip", "-n", ns, "addr", "add", f"{NET}.3/29", "dev", peer)
            _sh("ip", "-n", ns, "link", "set", peer, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "route", "add", "default", "via", root)
        yield
    finally:
        _cleanup()


def test_two_machines_shares_stages_and_a_lost_machine(two_machines, tmp_path):
    port = _free_port()
    address = f"tcp://{ROOT_IP}:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", ROOT_IP, "--port", str(port),
                               "--no-dashboard"], cwd=tmp_path, stderr=subprocess.DEVNULL)]
    workers = {}
    try:
        for ns in NS:
            env = _env(SRC)
            if ns == NS[0]:
                env["FASTC1K_SOURCE_IPS"] = f"{NET}.2-{NET}.3"
            workers[ns] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "dask", "worker", address, "--host", NS_IP[ns],
                 "--nthreads", "1", "--no-dashboard", "--no-nanny", "--name", ns],
                cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
            procs.append(workers[ns])
        with fastc1k.running_server(ServerConfig(host=ROOT_IP, port=0)) as srv:
            client = distributed.Client(address, timeout=20)
            client.wait_for_workers(2, timeout=30)
            client.close()
            url = _url(srv, ROOT_IP)
            # the plan refused up front, naming each machine's limits
            with pytest.raises(ClusterError, match=rf"on {NET}.2: 1 processes x [\d,]+ .* x 2 source"):
                LoadFarm(LoadSpec(url=url, connections=10_000_000), executor=DaskExecutor(address))
            spec = LoadSpec(url=url, connections=4, rate=400, max_connections=40)
            farm = LoadFarm(spec, executor=DaskExecutor(address)).start()
            # (farm time, connections): changes 0.3 s into a second, so that a report a
            # busy host delays a little still counts the stage before
            plan = [(0, 4), (1.3, 12), (3.3, 20)]
            try:
                for k, n in plan:
                    time.sleep(max(0.0, farm.started_ns / 1e9 + k - time.monotonic()))
                    farm.set_connections(n)
                time.sleep(max(0.0, farm.started_ns / 1e9 + 5.5 - time.monotonic()))
                workers[NS[1]].send_signal(signal.SIGKILL)       # machine b lost mid-stage
                killed_at = time.monotonic() - farm.started_ns / 1e9
                deadline = time.monotonic() + 15
                while not farm.lost and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(1.5)
            finally:
                res = farm.stop()
    finally:
        for p in reversed(procs):
            stop_process(p, timeout=2)
    s, rows = res.summary, res.timeline
    # each machine's share: one process each, connections split evenly before the loss
    by_machine = {}
    for r in s["workers"]:
        by_machine.setdefault(r["machine"], []).append(r)
    assert set(by_machine) == {f"{NET}.2", f"{NET}.10"}
    assert all(len(v) == 1 for v in by_machine.values())
    assert sum(r["requests"] for r in s["workers"]) == s["requests"] == res.histogram.get_total_count()
    # the merged histogram is the sum of the seconds' (and so of the parts')
    assert sum(r["requests"] for r in rows) == s["requests"]
    # the stage plan followed: connections open per second
    full = {r["t"]: r["connections_open"] for r in rows if not r["lost_processes"]}
    assert full.get(0) == 4 and full.get(2) == 12 and full.get(4) == 20, rows
    # the lost machine: reported with its load, later seconds marked, the run ended by itself
    assert len(s["lost"]) == 1, s["lost"]
    (lost,) = s["lost"]
    assert lost["machine"] == f"{NET}.10" and lost["connections"] == 10 and lost["rate"] == 200.0
    assert "left the Dask cluster" in lost["why"] or "exited" in lost["why"]
    assert 5 <= lost["t"] <= killed_at + 1
    after = [r for r in rows if r["t"] >= lost["t"]]
    assert after and all(r["lost_processes"] == 1 and r["lost_connections"] == 10 for r in after)
    assert all(r["connections_open"] == 10 for r in after if r["duration"] == 1.0)
    assert {r["machine"]: r["lost"] for r in s["workers"]} == {f"{NET}.2": False, f"{NET}.10": True}


def test_capacity_on_a_cluster(cluster, server, tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--target", f"http://127.0.0.1:{server.address[1]}",
                        "--cluster", cluster, "--phases", "stages", "--stages", "2,4", "--stage-duration", "1",
                        "--final-duration", "1", "--max-clients", "4", "--no-charts", "--quiet",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, env=_env(SRC))
    assert p.returncode == 0, p.stderr[-2000:]
    import json
    rep = json.loads((tmp_path / "capacity-report.json").read_text())
    ls = rep["phases"]["stages"]["load_summary"]
    assert ls["executor"] == "dask" and ls["processes"] == 2
    assert sum(r["requests"] for r in ls["workers"]) == ls["requests"] > 0
    html = (tmp_path / "capacity-report.html").read_text()
    assert "Load processes by machine: stages" in html and "Clock offsets:" in html


def test_capacity_with_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--target", "http://127.0.0.1:1",
                        "--cluster", f"tcp://127.0.0.1:{_free_port()}", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=_env(SRC))
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "cannot reach the Dask scheduler" in p.stderr, p.stderr


@pytest.mark.parametrize("policy", ["continue", "stop"])
def test_a_lost_load_process_is_marked_and_the_policy_followed(server, policy):
    """The same bookkeeping as a lost machine, on the local executor: kill one process."""
    farm = LoadFarm(LoadSpec(url=_url(server), connections=4, rate=200, processes=2), on_lost=policy).start()
    try:
        time.sleep(max(0.0, farm.started_ns / 1e9 + 1.5 - time.monotonic()))
        os.kill(farm._ex._procs[1].pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not farm.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)
        assert farm.running
    finally:
        res = farm.stop()
    (lost,) = res.summary["lost"]
    assert lost["process"] == 1 and lost["connections"] == 2 and lost["rate"] == 100.0 and lost["t"] in (1, 2)
    assert (farm.errors == [lost["why"]]) == (policy == "stop") and "died" in lost["why"]
    marked = [r for r in res.timeline if r["t"] >= lost["t"]]
    assert marked and all(r["lost_processes"] == 1 and r["lost_connections"] == 2 for r in marked)
    assert [r["lost"] for r in res.summary["workers"]] == [False, True]
    assert sum(r["requests"] for r in res.summary["workers"]) == res.summary["requests"]


def test_shares_fill_each_process_up_to_its_machine_limit():
    from fastc1k.load.farm import share
    assert share(7, [None] * 3) == [3, 2, 2]                 # the local farm's even split
    assert share(10, [3, None, None]) == [3, 4, 3]
    assert share(12, [2, 3, 100]) == [2, 3, 7]               # a small machine full, the rest shared
    with pytest.raises(ValueError, match="6 connections exceed the 5 these 2 load processes can hold"):
        share(6, [2, 3])
