"""The scale-out proof (issue 10): replicas, the balancer, the analysis, the fault.

Fast parts run everywhere; the namespace/cgroup parts skip when not root; one bounded
end-to-end run (2 replicas behind a real HAProxy, a replica killed under load) needs
only haproxy and falls back to 127.0.0.x replicas without root.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from fastc1k import c_available
from fastc1k.capacity import analysis as A
from fastc1k.capacity import scaleout as S
from fastc1k.capacity.scaleout.balancer import Backend, BalancerSpec, haproxy_config, nginx_config
from fastc1k.capacity.container import ContainerSpec
from fastc1k.capacity.stages import RunConfig
from fastc1k.host.cgroup import Cgroup

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
ENGINE = "c" if c_available() else "python"
PRIV = S.privileges()
needs_haproxy = pytest.mark.skipif(not HAPROXY, reason="haproxy not installed (apt-get install -y haproxy)")
needs_netns = pytest.mark.skipif(not PRIV["netns"], reason="own network namespaces need root and iproute2")
needs_cgroup = pytest.mark.skipif(not PRIV["cgroup"], reason="cgroups need root and a writable /sys/fs/cgroup")

BACKENDS = [Backend("r0", "10.231.7.2", 8080), Backend("r1", "10.231.7.6", 8080)]


# --------------------------------------------------------------------------- configs

def test_haproxy_config_has_the_required_settings():
    cfg = haproxy_config(BACKENDS, ("127.0.0.1", 18080), BalancerSpec(), "/tmp/x.sock")
    for line in ("balance leastconn", "option httpchk GET /api/health", "check inter 1000ms fall 2 rise 1",
                 "http-reuse always", "nbthread 1", "option http-keep-alive", "maxconn 9000",
                 "server r0 10.231.7.2:8080", "server r1 10.231.7.6:8080", "bind 127.0.0.1:18080",
                 "retry-on conn-failure", "option redispatch"):
        assert line in cfg, line
    bare = haproxy_config(BACKENDS, ("127.0.0.1", 1), BalancerSpec(retries=0, algorithm="roundrobin"))
    assert "retry-on" not in bare and "redispatch" not in bare and "balance roundrobin" in bare


@needs_haproxy
def test_haproxy_accepts_the_config(tmp_path):
    p = tmp_path / "h.cfg"
    p.write_text(haproxy_config(BACKENDS, ("127.0.0.1", 18080), BalancerSpec(), str(tmp_path / "s.sock")))
    r = subprocess.run([HAPROXY, "-c", "-f", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not NGINX, reason="nginx not installed")
def test_nginx_accepts_the_config(tmp_path):
    (tmp_path / "tmp").mkdir()
    p = tmp_path / "n.cfg"
    p.write_text(nginx_config(BACKENDS, ("127.0.0.1", 18080), BalancerSpec(algorithm="leastconn"), str(tmp_path)))
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_bad_balancer_specs_are_refused():
    for kw in ({"kind": "envoy"}, {"algorithm": "random"}, {"maxconn": 0}, {"health_path": "x"},
               {"retries": -1}, {"retry_on": "x\nfoo"}):
        with pytest.raises(ValueError):
            BalancerSpec(**kw).validate()


def test_cli_usage_errors(capsys):
    for argv in (["--replicas", "2,1"], ["--replicas", "0"], ["--replicas", "a"], ["--container", "cpus=x"],
                 ["--maxconn", "50000"], ["--fault-replicas", "1"], ["--balancer", "envoy"]):
        assert S.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("fastc1k.capacity.scaleout: error:") and err.count("\n") == 1, err


def test_non_root_says_what_it_needs(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    p = S.privileges()
    assert not p["root"] and p["cgroup"] is None and not p["netns"]
    text = " ".join(p["missing"])
    assert "cgroups" in text and "root" in text and "127.0.0.x" in text and "freezer" in text
    cfg = S.ScaleoutConfig()
    assert "unconfined" in S.describe_replica(cfg, p) and "host loopback" in S.describe_replica(cfg, p)


# --------------------------------------------------------------------------- analysis

def _stage(clients, tput, p99, broken=False, cost=None):
    return {"clients": clients, "throughput": tput, "ok": int(tput * 2), "error_count": 0, "error_rate": 0.0,
            "duration_s": 2, "start_s": 0.0, "failed_connections": 0, "refusal_rate": 0.0, "timeout_rate": 0.0,
            "latency_ms": {"p99": p99}, "broken": broken, "cost": cost or {}}


def _result(n, stages, bp, tput, bound=None, us=12.0):
    st = {"stages": stages, "breaking_point": bp and {"clients": bp, "reasons": ["p99"], "last_good_clients": bp // 2}}
    return {"replicas": n, "stages": st, "recovery": {"recovery": {"seconds": 0, "label": "< 1 s"}},
            "peak_stage": {"clients": bp, "throughput": tput}, "balancer": {"us_per_request": us}, "bound": bound}


def test_analysis_efficiency_reference_p99_usl_and_verdict():
    res = [_result(1, [_stage(100, 1000, 10), _stage(400, 1000, 150, True)], 400, 1000),
           _result(2, [_stage(100, 1000, 5), _stage(400, 1900, 60), _stage(800, 1900, 200, True)], 800, 1900),
           _result(4, [_stage(400, 2500, 40), _stage(800, 2600, 120, True)], 800, 2600,
                   bound={"label": "the balancer's single core", "evidence": "balancer 0.97 of 1 core"})]
    a = S.analyse(res, S.ScaleoutConfig())
    assert a["reference_clients"] == 400
    eff = [r["efficiency"] for r in a["rows"]]
    assert eff[0] == pytest.approx(1.0) and eff[1] == pytest.approx(0.95) and eff[2] == pytest.approx(0.65)
    assert [r["p99_at_reference_ms"] for r in a["rows"]] == [150, 60, 40]
    assert a["usl"] is not None and a["usl"]["points"] == 3
    v = a["verdict"]
    assert v["factor"] == pytest.approx(2.0) and v["want"] == 3 and not v["held"]
    assert "balancer's single core" in v["why_not"] and "0.97" in v["why_not"]
    assert v["balancer_ceiling_rps"] == pytest.approx(1e6 / 12) and "at most" not in v["why_not"]
    # A balancer costing 500 us/request passes 2,000 req/s: under 4 x 1,000, and said so.
    for r in res:
        r["balancer"]["us_per_request"] = 500.0
    v = S.analyse(res, S.ScaleoutConfig())["verdict"]
    assert "passes at most ~2000 req/s" in v["why_not"] and "4 x 1000 = 4000" in v["why_not"]
    # One replica that never broke gives no factor (and says what to change).
    res[0]["stages"]["breaking_point"] = None
    v = S.analyse(res, S.ScaleoutConfig())["verdict"]
    assert v["factor"] is None and v["held"] is None and "did not break up to 400" in v["why_not"]


def test_bound_names_the_saturated_resource():
    st = {"cost": {"balancer_cores": 0.98, "replicas_cores": 0.6, "host_busy_cores": 1.7, "loadgen_cores": 0.5}}
    b = S.bound_of(st, 4, 0.25, 1.0, 2, 1)
    assert b["resource"] == "balancer" and "0.98 of 1 core" in b["evidence"]
    st = {"cost": {"balancer_cores": 0.3, "replicas_cores": 0.49, "host_busy_cores": 1.0, "loadgen_cores": 0.2}}
    assert S.bound_of(st, 2, 0.25, 1.0, 2, 1)["resource"] == "replicas"
    st = {"cost": {"balancer_cores": 0.3, "replicas_cores": 0.2, "host_busy_cores": 0.8, "loadgen_cores": 0.2}}
    assert S.bound_of(st, 2, 0.25, 1.0, 2, 1)["resource"] is None
    # a replica at its quota is the bound even on a full host (the host is full because of it)
    st = {"cost": {"balancer_cores": 0.5, "replicas_cores": 0.24, "host_busy_cores": 2.0, "loadgen_cores": 0.2}}
    assert S.bound_of(st, 1, 0.25, 1.0, 2, 1)["resource"] == "replicas"
    # nobody at its ceiling on a full host: other processes took it, and the label says how much
    st = {"cost": {"balancer_cores": 0.4, "replicas_cores": 0.15, "host_busy_cores": 2.0, "loadgen_cores": 0.1}}
    b = S.bound_of(st, 1, 0.25, 1.0, 2, 1)
    assert b["resource"] == "host" and "1.35 of 2 taken by other processes" in b["label"]


def test_fault_analysis_counts_failures_and_times_the_health_check():
    rows = [{"t": k, "ok": 1000, "errors": {}, "p99_us": 5000} for k in range(10)]
    rows[4]["errors"] = {"status_503": 30, "reset": 5}
    rows[5]["errors"] = {"status_503": 12}
    polls = [(t / 10, {"r0": {"status": "UP", "requests": t * 50}, "r1": {"status": "UP", "requests": t * 50}})
             for t in range(40)]
    polls += [(t / 10, {"r0": {"status": "UP 1/2" if t < 56 else "DOWN", "requests": 2000},
                        "r1": {"status": "UP", "requests": t * 100}}) for t in range(41, 100)]
    f = S.analyse_fault(rows, polls, 4.05, "r0", 2, 100, S.ScaleoutConfig())
    assert f["failed_after_fault"] == 47 and f["stage_failed"] == 47
    assert f["failed_by_class"] == {"status_503": 42, "reset": 5}
    assert f["failed_share_of_stage"] == pytest.approx(47 / 10047)
    assert f["check_failed_s"] == pytest.approx(0.05, abs=0.01) and f["marked_down_s"] == pytest.approx(1.55, abs=0.01)
    assert f["last_error_s"] == pytest.approx(1.95)
    assert f["per_server_rate"]["r1"]["after"] > 1.5 * f["per_server_rate"]["r1"]["before"]
    assert f["stall_s"] == 0
    assert not f["cascade"] and f["recovery"]["recovered"]


def test_fault_analysis_sees_a_stall_without_errors():
    """A hung replica under roundrobin: no request fails, every client waits on it."""
    rows = [{"t": k, "ok": 0 if 4 <= k < 8 else 1000, "errors": {}, "p99_us": 5000} for k in range(12)]
    rows[8]["p99_us"] = 5_000_000
    polls = [(t / 10, {"r0": {"status": "UP" if t < 60 else "DOWN", "requests": 0},
                       "r1": {"status": "UP", "requests": 0}}) for t in range(120)]
    f = S.analyse_fault(rows, polls, 4.0, "r0", 2, 100, S.ScaleoutConfig())
    assert f["failed_after_fault"] == 0 and f["stall_s"] == 4 and f["marked_down_s"] == pytest.approx(2.0)
    assert "stalled 4 s" in S.summary_text({"analysis": {"rows": [], "reference_clients": None},
                                             "config": {"replicas": [2], "balancer": {"kind": "haproxy",
                                                                                     "algorithm": "roundrobin"}},
                                             "replica_desc": "x", "fault": f, "elapsed_s": 1})


def test_fault_analysis_tells_a_cascade_from_degradation():
    rows = [{"t": k, "ok": 1000, "errors": {}, "p99_us": 5000 if k < 4 else 300_000} for k in range(12)]
    up = [(t / 10, {"r0": {"status": "UP" if t < 55 else "DOWN", "requests": 0},
                    "r1": {"status": "UP", "requests": 0}}) for t in range(120)]
    f = S.analyse_fault(rows, up, 4.0, "r0", 2, 100, S.ScaleoutConfig())
    assert not f["cascade"] and f["degraded"] and "degraded" in S.absorbed(f)
    down = [(t, {**sv, "r1": {"status": "DOWN" if t > 8 else "UP", "requests": 0}}) for t, sv in up]
    f = S.analyse_fault(rows, down, 4.0, "r0", 2, 100, S.ScaleoutConfig())
    assert f["cascade"] and "r1 marked down too" in S.absorbed(f)
    rows[11]["errors"] = {"status_503": 500}
    f = S.analyse_fault(rows, up, 4.0, "r0", 2, 100, S.ScaleoutConfig())
    assert f["cascade"] and "still failing" in S.absorbed(f)


# --------------------------------------------------------------------------- real processes

def _get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@needs_haproxy
def test_non_root_run_falls_back_and_says_so(monkeypatch, tmp_path, capsys):
    """As a user: replicas on 127.0.0.x, no cgroup (none is even tried), a note."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    made = []
    monkeypatch.setattr(Cgroup, "create", classmethod(lambda cls, *a, **kw: made.append(a) or None))
    rc = S.main(["--replicas", "1", "--quick", "--stages", "50", "--max-clients", "60", "--no-recovery",
                 "--fault", "none", "--no-charts", "--quiet", "--engine", ENGINE, "--out", str(tmp_path)])
    assert rc == 0 and not made
    err = capsys.readouterr().err
    assert "running without" in err and "need root" in err
    import json
    rep = json.loads((tmp_path / "scaleout-report.json").read_text())
    assert rep["results"][0]["backends"][0]["host"] == "127.0.0.2"
    assert "unconfined" in rep["replica_desc"] and any("cgroups" in n for n in rep["notes"])


def test_fleet_on_host_loopback_without_privileges():
    fleet = S.Fleet(2, S.ReplicaSpec(ContainerSpec(), ENGINE), priv={"netns": False, "cgroup": None})
    try:
        fleet.start()
        hosts = [b.host for b in fleet.backends()]
        assert hosts == ["127.0.0.2", "127.0.0.3"]
        for b in fleet.backends():
            assert _get(f"http://{b.host}:{b.port}/api/health")[0] == 200
    finally:
        fleet.stop()
    assert fleet.replicas == [] and fleet not in S.running


def _netns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_netns
@needs_cgroup
def test_replicas_get_namespace_veth_cgroup_and_all_are_removed():
    fleet = S.Fleet(2, S.ReplicaSpec(ContainerSpec(cpus=0.25, memory=128 << 20, sysctls={"net.core.somaxconn": "512"}),
                                     ENGINE))
    dirs = []
    try:
        fleet.start()
        for r in fleet.replicas:
            assert r.net and r.net.name in _netns_list()
            assert r.host.startswith(S.NET_PREFIX + ".")
            assert _get(f"http://{r.host}:{S.REPLICA_PORT}/api/health")[0] == 200
            out = subprocess.run(["ip", "netns", "exec", r.net.name, "sysctl", "-n", "net.core.somaxconn"],
                                 capture_output=True, text=True).stdout.strip()
            assert out == "512"
            dirs += r.cgroup.dirs
            cpu = next(d for d in dirs if "/cpu/" in d or d.endswith(r.cgroup.name))
            if os.path.exists(cpu + "/cpu.cfs_quota_us"):
                assert open(cpu + "/cpu.cfs_quota_us").read().strip() == "2500"
            pids = {int(x) for x in open(r.cgroup.procs_files[0]).read().split()}
            assert r.server.pid in pids
        assert len({r.host for r in fleet.replicas}) == 2
    finally:
        fleet.stop()
    names = _netns_list()
    assert not any(f"fastc1k-{fleet.run_id}-" in ln for ln in names.splitlines())
    assert dirs and not any(os.path.exists(d) for d in dirs)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"fk{fleet.run_id.replace('-', '')[-6:]}h" not in links


@needs_cgroup
def test_frozen_replica_stops_answering_and_thaws():
    if not PRIV["freezer"]:
        pytest.skip("no freezer controller")
    fleet = S.Fleet(1, S.ReplicaSpec(ContainerSpec(cpus=0.5), ENGINE), priv={**PRIV, "netns": False})
    try:
        fleet.start()
        b = fleet.backends()[0]
        url = f"http://{b.host}:{b.port}/api/health"
        fleet.replicas[0].freeze()
        with pytest.raises(OSError):
            _get(url, timeout=0.5)
        fleet.replicas[0].cgroup.freeze(False)
        assert _get(url)[0] == 200
    finally:
        fleet.stop()


@needs_haproxy
def test_end_to_end_two_replicas_efficiency_balancer_cost_and_a_killed_replica(tmp_path):
    """Bounded: 1 and 2 replicas, two 1 s stages each, then two fault runs (without and
    with HAProxy's retries) of 2 + 3 and 1 + 3 s; about 20 s in all."""
    t0 = time.monotonic()
    run = RunConfig(phases=("stages",), stages=(50, 200), stage_s=1, final_stage_s=1, max_clients=200,
                    thresholds=A.Thresholds(break_p99_ms=100.0))
    cfg = S.ScaleoutConfig(replicas=(1, 2), container=ContainerSpec(cpus=0.5, memory=256 << 20), engine=ENGINE,
                           run=run, fault="kill", fault_clients=50, fault_before_s=2, fault_after_s=3,
                           balancer=BalancerSpec(retries=0))
    rep = S.run(cfg)
    assert S.running == []
    rows = rep["analysis"]["rows"]
    assert [r["replicas"] for r in rows] == [1, 2]
    assert rows[0]["efficiency"] == pytest.approx(1.0) and 0 < rows[1]["efficiency"] < 3
    for r in rep["results"]:
        b = r["balancer"]
        assert b["requests"] > 100 and b["cpu_s"] > 0 and 0 < b["us_per_request"] < 10_000
        assert set(b["per_server_requests"]) == {f"r{i}" for i in range(r["replicas"])}
        assert all(v > 0 for v in b["per_server_requests"].values())   # the balancer spread the load
        assert r["stages"]["stages"][0]["cost"]["balancer_us_per_request"] > 0
        assert r["bound"] and "evidence" in r["bound"]
    f = rep["fault"]
    assert "error" not in f, f
    # Without retries, the requests in flight on the killed replica, and those sent to it
    # until the health check marks it down, fail: counted, by class, and under 1 s + checks.
    assert f["failed_after_fault"] > 0 and f["failed_after_fault"] == sum(r["errors"] for r in f["rows"])
    assert sum(f["failed_by_class"].values()) == f["failed_after_fault"]
    assert f["marked_down_s"] is not None and 0.3 < f["marked_down_s"] < 3.0
    assert not f["others_marked_down"]
    text = S.summary_text(rep)
    assert "efficiency" in text and "failed requests" in text and "marked DOWN" in text
    pytest.importorskip("matplotlib")
    paths = S.write_reports(rep, str(tmp_path))
    assert os.path.getsize(paths["html"]) > 1000 and os.path.getsize(paths["json"]) > 1000
    assert {"scaling", "fault"} <= set(paths)   # the scaling chart (ideal line) and the fault timeline
    assert open(paths["html"]).read().count("data:image/png;base64,") == 4   # + a stage chart per count

    # With HAProxy's retries (the default), a killed replica costs < 1 % of the stage.
    cfg.balancer = BalancerSpec()
    cfg.fault_before_s = 1
    f2 = S.run_fault(cfg, PRIV, 2, 50, lambda st: None)
    assert f2["failed_share_of_stage"] < 0.01, f2["failed_by_class"]
    assert f2["throughput_after"] and f2["throughput_after"] > 0
    assert time.monotonic() - t0 < 60


@needs_haproxy
@needs_cgroup
def test_frozen_replica_under_load_is_routed_around_by_leastconn():
    """A hung container (cgroup freezer): its sockets accept but nothing answers. With
    leastconn its held requests keep new ones away before the health check marks it
    down: no stall, under 1 % failed."""
    if not PRIV["freezer"]:
        pytest.skip("no freezer controller")
    cfg = S.ScaleoutConfig(container=ContainerSpec(cpus=0.5), engine=ENGINE, fault="freeze",
                           fault_before_s=2, fault_after_s=5)
    f = S.run_fault(cfg, PRIV, 2, 100, lambda st: None)
    assert S.running == []
    assert f["mode"] == "freeze" and f["failed_share_of_stage"] < 0.01, f["failed_by_class"]
    # The balancer stopped choosing it at once (roundrobin kept sending it 1/N of the
    # requests until marked down, and the service answered nothing for 4 s).
    assert f["sent_to_victim_after_fault"] < 0.01 * f["stage_requests"], f["polls"]
    assert all(r["ok"] > 0 for r in f["rows"]), f["rows"]
    assert f["marked_down_s"] is not None and 1.0 < f["marked_down_s"] < 5.0


def test_capacity_cli_hands_replicas_to_the_scaleout_run():
    from _env import SRC   # the package this process imported
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--serve", "--replicas", "4,2"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("fastc1k.capacity.scaleout: error: argument --replicas")


@needs_haproxy
def test_tcp_mode_config_is_valid_and_nginx_refuses_it(tmp_path):
    cfg = haproxy_config(BACKENDS, ("127.0.0.1", 18080), BalancerSpec(mode="tcp"), str(tmp_path / "s.sock"))
    assert "mode tcp" in cfg and "http-reuse" not in cfg and "retry-on" not in cfg
    assert "option httpchk GET /api/health" in cfg   # still an HTTP health check
    p = tmp_path / "t.cfg"
    p.write_text(cfg)
    r = subprocess.run([HAPROXY, "-c", "-f", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(ValueError):
        BalancerSpec(kind="nginx", mode="tcp").validate()
