"""The load farm on Dask against the local farm: `python -m bench.cluster` (about 2 minutes).

1. Client CPU per request, c=1000 closed loop against the C engine (core 0): the local farm
   (one load process) and the farm on a Dask cluster (one `dask worker --nthreads 1`), both
   on core 1, in pair-by-pair rounds; the ratio is the median of per-round ratios. Nothing
   per request passes through Python or Dask, so the goal is <= 1.05.
2. The coordinator's own CPU (this process: the farm's reader and the Dask client) while
   64 load processes on the cluster report every second (and every 100 ms); goal <= 2 % of
   one core. The local farm's coordinator at 64 processes is measured beside it.

Writes bench/results/cluster.json and the README block between the cluster markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastc1k._readme import write_block

from .servers import SERVERS, RunningServer, free_port

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
COMMAND = "make cluster-figures   # = PYTHONPATH=src:. python -m bench.cluster"
LOAD_CPU = 1


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Cluster:
    """A Dask scheduler and one worker (pinned to the load core), started here."""

    def __init__(self, nthreads: int = 1, resources: str | None = None):
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # the scheduler too sits with the load on its core: the server's core is the server's
        self.procs = [subprocess.Popen(["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                        "--no-dashboard"], stderr=subprocess.DEVNULL, env=env)]
        cmd = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "dask", "worker", self.address, "--nthreads", str(nthreads),
               "--no-dashboard", "--no-nanny"]
        if resources:
            cmd += ["--resources", resources]
        self.procs.append(subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client
        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(1, timeout=60)

    def worker_cpu_s(self) -> float:
        """CPU time of the dask worker process itself (its relay and event loop; not the
        load processes, its children)."""
        import psutil
        t = psutil.Process(self.procs[1].pid).cpu_times()
        return t.user + t.system

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _run(spec, executor, seconds: float, settle: float = 0.0) -> dict:
    """A run of `seconds` (plus `settle` before the measured window); the summary and the
    coordinator's CPU share over the window."""
    from fastc1k.load import LoadFarm
    farm = LoadFarm(spec, executor=executor).start()
    try:
        time.sleep(max(0.0, farm.started_ns / 1e9 + settle - time.monotonic()))
        c0, t0 = _cpu_s(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = _cpu_s(), time.monotonic()
    finally:
        res = farm.stop()
    return {"summary": res.summary, "coordinator_cpu": (c1 - c0) / (t1 - t0)}


def cpu_per_request(url: str, rounds: int, seconds: float, log) -> dict:
    from fastc1k.load import LoadSpec
    from fastc1k.load.cluster import DaskExecutor
    cluster = Cluster()
    per = []
    try:
        for r in range(rounds):
            spec = LoadSpec(url=url, connections=1000, processes=1)
            local = _run(spec, None, seconds)["summary"]
            w0 = cluster.worker_cpu_s()
            remote = _run(LoadSpec(url=url, connections=1000), DaskExecutor(cluster.address), seconds)["summary"]
            worker_us = (cluster.worker_cpu_s() - w0) / remote["requests"] * 1e6
            a, b = local["client_cpu_us_per_request"], remote["client_cpu_us_per_request"]
            per.append({"local_us": a, "cluster_us": b, "ratio": round(b / a, 3),
                        "dask_worker_us": round(worker_us, 3), "ratio_with_dask_worker": round((b + worker_us) / a, 3),
                        "local_req_s": local["req_per_s"], "cluster_req_s": remote["req_per_s"]})
            log(f"round {r + 1}: client CPU/request local {a:.3f} us, cluster {b:.3f} us (+ the Dask worker's "
                f"own {worker_us:.3f} us), ratio {b / a:.3f}")
    finally:
        cluster.close()
    ratios = [p["ratio"] for p in per]
    return {"rounds": per, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "goal": 1.05,
            "ratio_with_dask_worker_median": statistics.median(p["ratio_with_dask_worker"] for p in per)}


def coordinator_cpu(url: str, seconds: float, log) -> dict:
    from fastc1k.load import LoadSpec
    from fastc1k.load.cluster import DaskExecutor
    spec = dict(url=url, connections=128, rate=1280.0)
    out = {}
    local = _run(LoadSpec(**spec, processes=64), None, seconds, settle=2.0)
    out["local"] = round(local["coordinator_cpu"], 4)
    log(f"coordinator CPU, local farm, 64 processes: {local['coordinator_cpu']:.2%} of a core")
    cluster = Cluster(nthreads=1, resources="load-processes=64")
    try:
        remote = _run(LoadSpec(**spec), DaskExecutor(cluster.address), seconds, settle=2.0)
    finally:
        cluster.close()
    out["cluster"] = round(remote["coordinator_cpu"], 4)
    out["processes"] = remote["summary"]["processes"]
    out["requests"] = remote["summary"]["requests"]
    log(f"coordinator CPU, Dask farm, {out['processes']} processes: {remote['coordinator_cpu']:.2%} of a core")
    out["goal"] = 0.02
    return out


def markdown(rep: dict) -> str:
    c, k = rep["cpu_per_request"], rep["coordinator"]
    return (f"Measured {rep['when']} (`{COMMAND}`, bench/results/cluster.json; the C engine on core 0, "
            f"the load on core 1, one Dask worker on this host): client CPU per request at c=1000, "
            f"the farm on Dask ÷ the local farm, median of {len(c['rounds'])} rounds "
            f"**{c['ratio_median']:.3f}** ({c['ratio_min']:.3f}–{c['ratio_max']:.3f}; goal ≤ 1.05), "
            f"{c['ratio_with_dask_worker_median']:.3f} counting the Dask worker process's own CPU too (its "
            f"event loop, heartbeats and the relay: a cost per second, not per request). "
            f"The coordinator's own CPU with {k['processes']} load processes reporting every "
            f"second and every 100 ms: **{k['cluster']:.2%}** of one core on Dask (goal ≤ 2 %), "
            f"{k['local']:.2%} for the local farm.\n")


def update_readme(md: str) -> bool:
    return write_block(str(README), "cluster", md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.seconds < 1:
        print("bench.cluster: --rounds >= 1 and --seconds >= 1", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    os.sched_setaffinity(0, {LOAD_CPU})        # the coordinator and the local farm's processes
    srv = RunningServer(SERVERS["c"], quota=False, cpu=0)
    try:
        url = srv.url()
        rep = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": COMMAND,
               "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                           "python": platform.python_version()},
               "cpu_per_request": cpu_per_request(url, a.rounds, a.seconds, log),
               "coordinator": coordinator_cpu(url, 2 * a.seconds, log)}
    finally:
        srv.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(rep, indent=1))
    md = markdown(rep)
    if not a.no_readme:
        update_readme(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
