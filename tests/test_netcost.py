"""The network-cost comparison's arithmetic (fastc1k.capacity.netcost) on made-up
reports: the common stage, CPU per request (the server's and the host's), the table.
The real three-way run writes bench/results/netcost.json and the README block."""
from __future__ import annotations

import re
import time

import pytest

from fastc1k.capacity.ramp import netcost as N


def report(broken_from: int, cpu: float, client_cores: float, rps: float, runtime: str = "podman") -> dict:
    stages, samples, timeline = [], [], []
    for i, clients in enumerate((50, 200, 800)):
        start = 10.0 * i
        stages.append({"clients": clients, "start_s": start, "duration_s": 5, "throughput": rps,
                       "broken": ["p99"] if clients >= broken_from else []})
        for k in range(51):   # 100 ms samples over the stage
            samples.append({"t": start + k / 10, "cpu_used": cpu})
        timeline += [{"t": start + k, "phase": "stages", "clients": clients, "client_cpu": client_cores}
                     for k in range(5)]
    bp = next(({"clients": s["clients"], "reasons": ["p99 2000 ms > 1000 ms"]} for s in stages if s["broken"]), None)
    return {"runtime": {"name": runtime, "network": "publish", "image_id": "49c259189e83abcd",
                        "applied": {"cpus": 0.5, "memory": 268435456}, "refused": [], "conntrack": "conntrack: ok"},
            "phases": {"stages": {"stages": stages, "breaking_point": bp, "peak_throughput": rps},
                       "ramp": {"bottleneck": {"resource": "cpu", "evidence": "server CPU", "clients": 400}},
                       "recovery": {"recovery": {"label": "< 2 s"}}},
            "samples": samples, "timeline": timeline, "host": {"summary": "2 CPUs, 23.5 GiB, Linux 6.18", "loadavg": [1.25, 1, 1]}}


def test_cpu_per_request_is_cores_over_throughput():
    r = report(800, cpu=0.5, client_cores=1.5, rps=5000)
    got = N.cpu_per_request(r, r["phases"]["stages"]["stages"][1])
    assert got == {"server_us": pytest.approx(100.0), "client_us": pytest.approx(300.0), "total_us": pytest.approx(400.0)}


def test_compare_uses_the_largest_stage_every_variant_held():
    reps = {"podman -p": report(200, 0.5, 1.8, 4000), "podman --network host": report(800, 0.5, 1.2, 5000),
            "kernel parts": report(10**9, 0.5, 1.0, 5000, runtime="kernel")}
    c = N.compare(reps)
    assert c["common_stage_clients"] == 50          # -p broke at 200
    v = c["variants"]
    assert v["podman -p"]["breaking_point"] == 200 and v["kernel parts"]["breaking_point"] is None
    assert v["kernel parts"]["breaking_why"] == "held up to 800 clients"
    assert v["podman -p"]["client_us"] == pytest.approx(450.0) and v["kernel parts"]["total_us"] == pytest.approx(300.0)
    md = N.markdown({**c, "date": "2026-11-30 18:00 UTC", "host": "2-CPU machine", "image": "49c259189e83",
                     "command": "python -m fastc1k.capacity netcost"})
    assert "| breaking point (clients) | 200 | 800 | none (held up to 800 clients) |" in md
    assert "| load generator CPU per request at 50 clients (µs) | 450 | 240 | 200 |" in md
    assert "| first bottleneck | cpu at 400 | cpu at 400 | cpu at 400 |" in md
    assert "| machine's load average at the start (other work) | 1.2 | 1.2 | 1.2 |" in md
    assert "gap" not in md
    # a variant whose monitor stalled: the table says so under it, not only with "-"
    reps["podman --network host"]["notes"] = ["other", "monitor: no sample for 71.3 s (t=2.0 to 73.3 s): x"]
    md = N.markdown({**N.compare(reps), "date": "", "host": "", "image": "", "command": ""})
    assert "Monitor gaps: podman --network host: no sample for 71.3 s (t=2.0 to 73.3 s)." in md


def test_a_starved_load_generator_is_a_row_of_the_table():
    """A load process waiting for a CPU caps what the run could see: the table shows how much,
    per variant, so a breaking point that came from the host is not read as the container's."""
    reps = {"podman -p": report(200, 0.5, 1.8, 4000), "kernel parts": report(10**9, 0.5, 1.0, 5000, runtime="kernel")}
    reps["podman -p"]["phases"]["stages"]["load_summary"] = {"client_cpu_wait_per_process": [0.05, 0.41]}
    reps["podman -p"]["phases"]["ramp"]["load_summary"] = {"client_cpu_wait_per_process": [0.2]}
    md = N.markdown({**N.compare(reps), "date": "", "host": "", "image": "", "command": ""})
    assert "| load generator's most time waiting for a CPU (share of a phase) | 41% | - |" in md


@pytest.mark.parametrize("argv,msg", [
    (["--variants", "podman -p,docker"], "--variants: choose from"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_exit_2(argv, msg, capsys):
    assert N.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err


def test_a_readme_without_the_markers_is_refused_before_any_run(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert N.main(["--variants", "kernel parts", "--readme", str(readme)]) == 2
    assert capsys.readouterr().err == (f"fastc1k.capacity.netcost: error: {readme} has no <!-- netcost:start --> ... "
                                       f"<!-- netcost:end --> markers\n")


def test_a_stalled_monitor_says_so_in_the_report_notes(monkeypatch):
    """A sampler that gets no sample for a while (a starved or blocked thread) leaves
    those figures out: the report's notes say when and how long, so a "-" is explained."""
    from fastc1k.capacity.monitor import Monitor
    m = Monitor(None, interval=0.05)
    m.own_netns = True   # no 0.5 s baseline of the host's counters
    real, calls = m.sample_once, []

    def sample(dt):
        calls.append(dt)
        if len(calls) == 3:
            time.sleep(1.2)
        return real(dt)
    monkeypatch.setattr(m, "sample_once", sample)
    m.start()
    time.sleep(1.8)
    m.stop()
    gaps = [n for n in m.notes if n.startswith("monitor: no sample for")]
    assert len(gaps) == 1, m.notes
    assert re.match(r"monitor: no sample for 1\.[2-9] s \(t=0\.\d+ to 1\.\d+ s\)", gaps[0]), gaps
