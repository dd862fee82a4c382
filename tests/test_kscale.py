"""The side-by-side scale-out run (issue 15): --balancer kernel,haproxy-http,haproxy-tcp.
Usage errors and the needs-root answer run everywhere; the bounded 2-replica kernel run
needs root, nft and ip; the README block is checked on a made-up report."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fastc1k.capacity.scaleout import kernel_lb as K
from fastc1k.host import net

from _env import SRC  # the package these tests imported (installed under CI), not the tree
# root, nft, ip, and a kernel that lets this root make network namespaces (not so in an
# unprivileged container)
ROOT = os.geteuid() == 0 and bool(shutil.which("nft")) and bool(shutil.which("ip")) and \
    subprocess.run(["unshare", "--net", "nft", "list", "tables"], capture_output=True).returncode == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the kernel balancer needs root, nft, ip and network namespaces")


def test_side_by_side_without_root_says_it_needs_root(monkeypatch, capsys):
    from fastc1k.capacity import scaleout
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert scaleout.main(["--balancer", "kernel", "--replicas", "2", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the kernel balancer needs root" in err


@pytest.mark.skipif(not shutil.which("setpriv") or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_the_cli_run_by_a_non_root_user_says_it_needs_root():
    from test_kernel_lb import as_nobody
    r = as_nobody("-m", "fastc1k.capacity", "scaleout", "--balancer", "kernel,haproxy-http", "--replicas", "1,2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "the kernel balancer needs root" in r.stderr


@pytest.mark.parametrize("argv, msg", [
    (["--balancer", "kernel,ipvs"], "--balancer: a comma-separated list"),
    (["--balancer", "kernel", "--probe", "100,250"], "--probe: interval ms"),
    (["--balancer", "kernel", "--fault", "kill,none"], "--fault: kill, freeze"),
    (["--balancer", "haproxy", "--fault", "kill,freeze"], "needs the side by side run"),
])
def test_side_by_side_bad_flags_are_one_line_usage_errors(argv, msg, capsys):
    from fastc1k.capacity import scaleout
    assert scaleout.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and msg in err


@needs_root
def test_two_replica_kernel_run_spreads_connections_removes_a_killed_replica_and_leaves_nothing(tmp_path):
    """The bounded CI run of the CLI: 2 replicas behind the kernel balancer, a short ramp,
    r0 killed under load."""
    p = subprocess.Popen([sys.executable, "-m", "fastc1k.capacity.scaleout", "--replicas", "2", "--balancer", "kernel",
                          "--container", "cpus=0.2,memory=256M", "--quick", "--stages", "40", "--max-clients", "40",
                          "--no-recovery", "--fault", "kill", "--fault-duration", "3", "--pick", "inc",
                          "--out", str(tmp_path), "--no-charts", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err[-2000:]
    rep = json.loads((tmp_path / "scaleout.json").read_text())
    (res,) = rep["results"]
    own = res["replica_counters"]   # each replica's own /metrics
    assert set(own) == {"r0", "r1"} and all(v["accepted"] >= 15 and v["requests"] > 100 for v in own.values())
    assert res["balancer"]["per_server_requests"] == {"r0": 20, "r1": 20}   # round robin, by the rules' counters
    assert res["removals_during_ramp"] == []
    (f,) = rep["faults"]
    assert f["mode"] == "kill" and f["marked_down_s"] is not None and f["marked_down_s"] < 1.0
    assert f["failed_share_of_stage"] < 0.01 and not f["cascade"]
    # torn down: no namespace, host table or node veth of that run is left
    assert not [ns for ns in net.netns_names() if ns.startswith(f"{K.PREFIX}-{p.pid}-")]
    assert f"fc1k_kbal_{p.pid}_" not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"kb{p.pid % 100000}x" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_the_readme_block_is_a_table_written_between_the_markers(tmp_path):
    from fastc1k.capacity.scaleout import kscale
    row = {"replicas": 1, "breaking_point": 750, "unbroken_up_to": None, "max_throughput": 21586.0,
           "efficiency": 1.0, "p99_at_reference_ms": 145.5, "p99_reference_clients": 750, "balancer_us_per_request": 1.94,
           "bound": {"label": "the replicas' CPU quota", "evidence": "replicas 0.10 of 0.1 cores (quota)"}}
    fault = {"mode": "kill", "balancer": "kernel", "victim": "r0", "replicas": 4, "clients": 750,
             "failed_after_fault": 59, "stage_requests": 627424, "failed_share_of_stage": 59 / 627424,
             "marked_down_s": 0.23, "stall_s": 0, "cascade": False,
             "health_check": kscale.KernelOptions().probe.describe()}
    rep = {"started": "2026-11-30T19:30:00+00:00", "host": {"summary": "AMD EPYC, 2 cores"},
           "host_load": {"before": [1.0, 2.0, 3.0], "after": [2.0, 2.0, 3.0]}, "replica_desc": "fastc1k 1 worker",
           "kernel": kscale.KernelOptions().describe(), "balancers": ["kernel"],
           "analysis": {"kernel": {"rows": [row], "reference_clients": 750}}, "faults": [fault],
           "results": [{"balancer_kind": "kernel", "replicas": 1, "removals_during_ramp": [
               {"replica": "r0", "ready": False, "reason": "timeout", "t": 9.1, "phase": "stages 1000",
                "stage_p99_ms": 310.0}]}]}
    block = kscale.readme_block(rep, "bench/results/scaleout.png")
    assert "| kernel | 1 | 750 | 21,586 | 1.00 | 145.5 ms at 750 | 1.94 | the replicas' CPU quota: replicas 0.10" in block
    assert "59 failed of 627424 (0.009 %), out of the rules after 0.23 s (probe every 100 ms" in block
    assert "![scale-out" in block and "load average 1.0 2.0 3.0 → 2.0 2.0 3.0" in block
    assert "took a loaded replica for dead 1 time(s) during the run (in stages 1000: p99 past" in block
    assert "- kill one of 4: failed 0.009 %, out of the rules after 0.23 s, cascade no (goal: < 1 %, <= 1 s, none): " \
           "held" in block
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- scaleout:start -->\nold\n<!-- scaleout:end -->\nbottom\n")
    (tmp_path / "out").mkdir()
    rep.update(notes=[], config={"replicas": [1]})
    paths = kscale.write_outputs(rep, str(tmp_path / "out"), charts=False, readme=str(readme))
    assert set(paths) == {"json", "md", "readme"}
    md = open(paths["md"]).read()   # the same block, without the chart (none drawn)
    assert md == block.replace("\n\n![scale-out: throughput, breaking point and balancer CPU against replicas]"
                               "(bench/results/scaleout.png)", "")
    assert readme.read_text() == f"top\n<!-- scaleout:start -->\n{md}<!-- scaleout:end -->\nbottom\n"
    readme.write_text("no markers\n")
    with pytest.raises(OSError, match="no <!-- scaleout:start -->"):
        kscale.write_outputs(rep, str(tmp_path / "out"), charts=False, readme=str(readme))


def test_a_full_conntrack_table_is_named_as_the_bound():
    from fastc1k.capacity.scaleout import kscale

    def res(peak: int, drops: int) -> dict:
        cost = {"conntrack_peak": peak, "conntrack_max": 1000, "conntrack_drops": drops}
        return {"peak_stage": {"cost": cost}, "bound": {"resource": "replicas", "label": "the replicas' CPU quota",
                                                        "evidence": "replicas 0.10 of 0.1 cores (quota)"}}
    full, dropping, roomy = res(950, 0), res(400, 12), res(400, 0)
    for r in (full, dropping, roomy):
        kscale._conntrack_bound(r)
    assert full["bound"]["resource"] == "conntrack" and dropping["bound"]["resource"] == "conntrack"
    assert "conntrack 400 of 1000 entries, 12 drops" in dropping["bound"]["evidence"]
    assert roomy["bound"]["resource"] == "replicas" and "conntrack 400 of 1000 entries, 0 drops" in \
        roomy["bound"]["evidence"]


@pytest.mark.parametrize("balancer", ["kernel", "haproxy-http"])
def test_a_balancer_that_fails_to_start_is_stopped_with_the_replicas_and_namespaces(monkeypatch, balancer):
    """NodeDeployment: a balancer whose start() raised part-way (the kernel's after it raised
    nf_conntrack_max, HAProxy's after it forked, or Ctrl-C meanwhile) is stopped like the
    replicas and the namespaces, not left behind."""
    from fastc1k.capacity.scaleout import kscale
    from fastc1k.capacity.scaleout.config import ScaleoutConfig
    done = []

    class Part:
        def __init__(self, name, *a, **kw):
            self.name, self.replicas, self.node, self.vip, self.port = name, [], "n", "10.233.0.2", 80

        def setup(self):
            return self

        def start(self):
            if self.name == "lb":
                raise KeyboardInterrupt
            return self

        def backends(self):
            return []

        def stop(self):
            done.append(f"{self.name} stopped")

        def teardown(self):
            done.append("net torn down")
            return []

    class LB(Part):
        checker, notes = type("C", (), {"events": []})(), []

        def __init__(self, *a, **kw):
            super().__init__("lb")
    monkeypatch.setattr(kscale, "require_root", lambda: None)
    monkeypatch.setattr(kscale, "ServiceNet", lambda: Part("net"))
    monkeypatch.setattr(kscale, "Fleet", lambda *a, **kw: Part("fleet"))
    monkeypatch.setattr(kscale, "KernelService", LB)
    monkeypatch.setattr(kscale, "Balancer", LB)
    dep = kscale.NodeDeployment(1, ScaleoutConfig(), {}, balancer, kscale.KernelOptions())
    with pytest.raises(KeyboardInterrupt):
        dep.__enter__()
    assert done == ["lb stopped", "fleet stopped", "net torn down"]


def test_a_kernel_ramp_that_fails_leaves_no_perf_recording_behind(monkeypatch, tmp_path):
    """The kernel's perf sampling (kcpu) is stopped and its data directory removed when the
    ramp raises (a balancer error, Ctrl-C), not only when it ends well: perf records every
    CPU into that directory until it is stopped."""
    import contextlib
    import tempfile

    from fastc1k.capacity.scaleout import kscale
    from fastc1k.capacity.scaleout.config import ScaleoutConfig
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    class Dep:
        fleet = type("F", (), {"pids": staticmethod(lambda: [])})()
        unit, events, notes = "connections", [], []

    def failing_ramp(*a, before=None, **kw):
        raise RuntimeError("the ramp failed (expected by the test)")
    monkeypatch.setattr(kscale, "NodeDeployment", lambda *a, **kw: contextlib.nullcontext(Dep()))
    monkeypatch.setattr(kscale, "run_count", failing_ramp)
    with pytest.raises(RuntimeError, match="expected by the test"):
        kscale._count(1, "kernel", ScaleoutConfig(), {}, kscale.KernelOptions(), lambda st: None)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("fc1k-kbal-perf-")]


def test_a_calibration_without_requests_is_not_reported_as_zero_host_hooks(monkeypatch):
    """The routed calibration (the host's own netfilter cost per request) that passed no
    request measured nothing: its figure is None and the method says nothing was taken
    off, instead of '0.00 µs' taken off."""
    from fastc1k.capacity.scaleout import kscale
    dep = type("D", (), {"fleet": type("F", (), {"pids": staticmethod(lambda: [])})(),
                         "lb": type("L", (), {"sampler": type("S", (), {"window": staticmethod(lambda a, b: None)})(),
                                              "conntrack_sizing": {}})()})()
    km = kscale._KernelMeasures(dep, 999)
    km.calibration = (0.0, 3.0, 0)
    monkeypatch.setattr(km.prof, "windows", lambda wins, mine: {
        "routed": {"balancer_cpu_s": 0.02}, "s0": {"balancer_cpu_s": 0.5, "error_cpu_s": 0.01, "others_cpu_s": 0.0}})
    res = {"stages": {"stages": [{"start_s": 0.0, "duration_s": 3.0, "ok": 1000, "error_count": 0}]},
           "balancer": {}}
    km.after(type("R", (), {"t0": 10.0})(), res)
    b = res["balancer"]
    assert b["host_hooks_us_per_request"] is None and b["us_per_request"] == b["netfilter_us_per_request"] == 500.0
    assert "no request" in b["cpu_method"]
