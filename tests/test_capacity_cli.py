"""The capacity CLI's input handling, the container spec, the kernel counter readers and
the report writers (on a synthetic report: no server, no load)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastc1k.capacity import analysis as A
from fastc1k.capacity import monitor, report
from fastc1k.host import proc
from fastc1k.capacity.cli import main
from fastc1k.capacity.container import ContainerError, ContainerSpec

from _env import SRC  # noqa: E402  (the package this process imported)


@pytest.mark.parametrize("argv,msg", [
    ([], "one of the arguments --serve --target is required"),
    (["--serve", "--target", "http://127.0.0.1:1"], "not allowed with"),
    (["--target", "ftp://x"], "must be an http:// URL"),
    (["--target", "http://127.0.0.1:1", "--container", "cpus=1"], "applies to the server that --serve starts"),
    (["--serve", "--container", "cpus=lots"], "bad value for cpus"),
    (["--serve", "--container", "bogus=1"], "unknown key 'bogus'"),
    (["--serve", "--stages", "500,100"], "increasing"),
    (["--serve", "--phases", "stages,nap"], "--phases"),
    (["--serve", "--quick", "--plan"], "exclude each other"),
    (["--serve", "--stage-duration", "0"], "must be > 0"),
    (["--serve", "--break-error-rate", "2"], "in (0, 1]"),
    (["--serve", "--growth", "1"], "--growth must be > 1"),
    (["--serve", "--source-ips", "127.0.0.300"], "--source-ips: bad source address"),
    (["--serve", "--ramp-rate", "fast"], "expected auto, closed or requests/s"),
    (["--serve", "--max-connections", "0"], "expected a positive integer or auto"),
    (["--serve", "--precision", "0"], "--precision must be in (0, 1]"),
    (["--target", "http://127.0.0.1:1", "--versus", "nginx"], "--versus runs the plan against a server the suite"),
    (["--serve", "--versus", "apache"], "invalid choice: 'apache'"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err


def test_unreachable_target_fails_cleanly(tmp_path):
    """Nothing listens: every stage fails, the tool stops at the first stage (> 90%
    errors) and still writes a report."""
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--target", "http://127.0.0.1:9", "--quick",
                        "--phases", "stages", "--quiet", "--no-charts", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "capacity-report.json").read_text())
    st = r["phases"]["stages"]
    assert len(st["stages"]) == 1 and st["stages"][0]["errors"].get("refused", 0) > 0
    assert st["breaking_point"]["clients"] == 100 and "error rate" in st["stop_reason"]


def test_container_spec():
    s = ContainerSpec.parse("cpus=0.5,memory=256M,nofile=4096,somaxconn=128,net.ipv4.tcp_max_syn_backlog=64")
    assert (s.cpus, s.memory, s.nofile) == (0.5, 256 << 20, 4096)
    assert s.sysctls == {"net.core.somaxconn": "128", "net.ipv4.tcp_max_syn_backlog": "64"} and s.netns
    assert not ContainerSpec.parse("cpus=1").netns and ContainerSpec.parse("netns").netns
    for bad in ("cpus", "memory=1k", "nofile=3", "cpus=0", "x=1"):
        with pytest.raises(ContainerError):
            ContainerSpec.parse(bad)


def test_kernel_readers_and_prometheus():
    ns = proc.netstat()
    assert "ListenOverflows" in ns and "TCPAbortOnTimeout" in ns
    assert "inuse" in proc.sockstat()
    m = monitor.parse_prometheus('# HELP x\nfastc1k_active 3\nfastc1k_loop_lag_p99_us{worker="1"} 64\n'
                                 'fastc1k_loop_lag_p99_us{worker="2"} 512\nfastc1k_active{worker="1"} 2\nbad line\n')
    assert m == {"fastc1k_active": 3.0, "fastc1k_loop_lag_p99_us": 512.0}
    assert monitor._snake("ListenOverflows") == "listen_overflows"
    assert monitor._snake("TCPAbortOnMemory") == "tcp_abort_on_memory"


def test_monitor_samples_ksoftirqd_outside_the_container():
    """Each sample after the first carries the cores the ksoftirqd threads used since the
    one before (host-wide), whatever the server: they are in no container's cgroup."""
    assert proc.ksoftirqd_pids(), "a Linux host has one ksoftirqd/N a CPU"
    m = monitor.Monitor(None)
    assert "ksoftirqd" not in m.sample_once(None)   # no previous reading: no rate yet
    s = m.sample_once(0.1)
    assert isinstance(s["ksoftirqd"], float) and 0 <= s["ksoftirqd"] <= os.cpu_count() * 1.5, s


def synthetic_report() -> dict:
    th = A.Thresholds()
    stages = []
    for i, c in enumerate((100, 250, 500, 750, 1000, 1500)):
        s = A.summarize_rows([{"ok": 1000 * (6 - i), "errors": {"status_503": 400 * i * i if i >= 2 else 0}, "connects_ok": c,
                               "connections_open": c}], c)
        s["latency_ms"] = {"count": 10, "avg": 1.0 * c / 100, "p50": c / 200, "p95": c / 100, "p99": c / 50,
                           "p999": c / 40, "max": c / 30}
        s["broken"] = A.is_broken(s, th)
        stages.append(s)
    rows, samples = [], []
    for t in range(30):
        phase = "stages" if t < 12 else "ramp" if t < 20 else "recovery"
        rows.append({"t": t, "phase": phase, "clients": 100 + 10 * t, "ok": 1000, "errors": {"reset": t % 3},
                     "p50_us": 1000, "p99_us": 5000 + 1000 * t})
    fine = [{"s": round(j / 10 - 2, 1), "ok": 100, "errors": 50 if j < 23 else 0,
             "p99_ms": 400.0 if j < 24 else 4.0} for j in range(80)]
    for i in range(300):
        samples.append({"t": i / 10, "clients": i, "cpu_used": 0.5, "cpu_wait": 0.1, "cpu_allowed": 1.0,
                        "rss": 40 << 20, "mem_limit": 1 << 30, "fds": 10 + i, "fd_limit": 1024,
                        "listen_overflows": 0})
    return {
        "target": "http://127.0.0.1:1", "started": "2026-11-28T00:00:00+00:00", "elapsed_s": 30.0,
        "server": {"engine": "c", "workers": 1}, "container": {"applied": {}, "netns": False},
        "host": {"summary": "2 CPUs"}, "config": {}, "thresholds": vars(th), "notes": ["synthetic"],
        "windows": [{"phase": "stages", "label": "100", "t0": 0, "t1": 12},
                    {"phase": "ramp", "label": "ramp", "t0": 12, "t1": 20},
                    {"phase": "recovery", "label": "rec", "t0": 22, "t1": 30}],
        "timeline": rows, "samples": samples,
        "phases": {
            "stages": {"stages": stages, "stop_reason": "broken", "breaking_point": A.breaking_point(stages, th),
                       "latency_explosion": A.latency_explosion(stages, th), "degradation": A.degradation(stages, th),
                       "usl": A.usl_fit([s["clients"] for s in stages], [s["throughput"] for s in stages])},
            "ramp": {"clients": 300, "steps": 20, "step_s": 0.4, "rate": None, "t0": 12, "t1": 20,
                     "bottleneck": A.first_bottleneck(samples, th), "peaks": {"fds": "309/1024"}},
            "recovery": {"blast_clients": 1500, "blast_s": 2, "recovery_clients": 100, "drop_t": 22,
                         "blast": {"error_rate": 0.5, "latency_ms": {"p99": 300.0}},
                         "fine": fine, "note": None, "recovery": A.recovery_time(
                             [{"ok": r["ok"], "errors": {"reset": r["errors"]}, "p99_us": 1000 * r["p99_ms"]}
                              for r in fine[20:]], th, resolution=0.1)},
        },
    }


def test_report_outputs(tmp_path):
    r = synthetic_report()
    r["versus"] = {"nginx": {"server": {"name": "nginx"}, "phases": synthetic_report()["phases"]}}
    text = report.summary_text(r)
    assert "Side by side, same plan, same container, same run: fastc1k (c engine) vs nginx" in text
    assert "    nginx                    500 clients" in text
    assert "breaking point: 500 clients" in text and "3. Recovery" in text and "note: synthetic" in text
    assert "timed on 100 ms rows): 0.4 s ± 100 ms (the plan's bar: 30 s" in text
    assert "first bottleneck" in text or "no resource reached" in text
    paths = report.write_all(r, str(tmp_path))
    assert json.loads(open(paths["json"]).read())["phases"]["stages"]["breaking_point"]["clients"] == 500
    html = open(paths["html"]).read()
    pytest.importorskip("matplotlib")
    assert html.count("data:image/png;base64,") == 5 and "class='broken'" in html
    assert "<h2>Side by side (same plan, same container, same run)</h2>" in html
    for name in report.CHARTS:
        assert open(paths[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
