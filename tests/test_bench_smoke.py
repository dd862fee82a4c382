"""Smoke run of the bench suite (bench/), so that it cannot rot: every server the bench
knows starts, answers one ~1 s workload, and yields sane figures; the ceiling report
runs end to end on the floor responder. Servers missing here are skipped with the
reason; the CPU quota is skipped when not root. Whole file: about 15 s.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: bench/

from bench import ceiling, drivers, measure, servers, workloads  # noqa: E402
from fastc1k._readme import markers  # noqa: E402

SMOKE_SERVERS = ["nginx", "c", "python", "uvloop"]  # the floor runs in the ceiling test


def _start(name: str) -> servers.RunningServer:
    why = servers.SERVERS[name].unavailable() or drivers.driver_missing()
    if why:
        pytest.skip(why)
    return servers.RunningServer(servers.SERVERS[name])


@pytest.mark.parametrize("name", SMOKE_SERVERS)
def test_server_under_quota(name):
    with _start(name) as srv:
        r = workloads.measure_run(srv, workloads.WORKLOADS["quota-c1000"], duration=1, max_requests=0)
        pids = srv.pids()
    assert r["requests"] > 100, r
    assert r["errors"] == {}, r
    assert r["cpu_us"] > 0 and abs(r["user_us"] + r["sys_us"] - r["cpu_us"]) < 1e-6
    if os.geteuid() == 0:
        assert r["quota"].startswith("0.5 CPU"), r
    assert not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids), "server left running"


def test_servers_listen_with_deferred_accept(tmp_path):
    """The new-connection figures compare like with like: every server that has the option
    gets the same deferred accept (bench/servers.py)."""
    for name in ("nginx", "c", "c-uring", "python", "uvloop"):
        cmd = servers.SERVERS[name].command(8080, tmp_path)
        if name == "nginx":
            assert re.search(r"listen \S+ backlog=\d+ deferred;", (tmp_path / "nginx.conf").read_text())
        else:
            assert cmd[cmd.index("--defer-accept") + 1] == str(servers.DEFER_ACCEPT) != "0", cmd


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_idle_memory_on_a_fresh_c_server_is_at_least_its_struct():
    """Measured before any other workload, each idle connection's pages are its own: the
    figure cannot read below the connection struct (58 B < 64 B was a table that an earlier
    run had already touched)."""
    with _start("c") as srv:
        m = workloads.idle_memory(srv, 2000)
    assert m["answered"] == 2000 and m["struct_bytes"] >= 32, m
    assert m["rss_per_conn"] >= 0.9 * m["struct_bytes"], m


def test_wrk_stops_after_a_fixed_number_of_requests():
    with _start("floor") as srv:
        r = drivers.wrk(srv.url(), 10, duration=10, max_requests=3000)
    assert 2900 <= r.requests < 3200 and r.error_count == 0, r
    assert r.elapsed < 5, r  # stopped by the count, not by -d


def test_syscalls_per_request_of_the_floor():
    why = measure.strace_available()
    if why:
        pytest.skip(why)
    with _start("floor") as srv:
        out = ceiling.syscalls(srv, workloads.WORKLOADS["keepalive-c100"], duration=1)
    # one recv + one send per request, epoll_wait and accept amortized
    assert out["requests"] > 100, out
    assert 1.8 < out["per_request"] < 3.0, out
    assert {"recvfrom", "sendto"} <= set(out["calls"]), out


def test_ceiling_report_end_to_end(tmp_path):
    if servers.SERVERS["floor"].unavailable() or drivers.driver_missing():
        pytest.skip("gcc or wrk missing")
    report = ceiling.run(["floor"], rounds=1, duration=1,
                         idle=50, do_strace=False, log=lambda m: None, warmup=0)
    s = report["workloads"]["quota-c1000"]["summary"]["floor"]
    assert s["cpu_us"] > 0 and 0 <= s["kernel_share"] <= 1 and s["errors"] == 0
    piped = report["workloads"]["pipelined16-c100"]["rounds"][0]["floor"]
    assert piped["requests"] > 1000 and piped["errors"] == {}, piped  # requests counted across reads
    assert report["memory"]["floor"]["answered"] == 50
    md = ceiling.markdown(report)
    assert "| floor (C, recv+send) |" in md and "Memory per idle" in md
    pytest.importorskip("matplotlib")
    png = ceiling.chart(report, tmp_path / "c.png")
    assert png is not None and png.stat().st_size > 1000


def test_ceiling_says_how_much_of_its_quota_the_server_used():
    """req/s under the quota is the server's capacity only if it used its 0.5 cores: the table
    gives the cores beside it (the 19:17 run's 42,812 req/s came at 0.24 cores: wrk-bound)."""
    def run(cpu_us, rps):
        return {"cpu_us": cpu_us, "rps": rps, "sys_us": cpu_us * 0.9, "errors": {}}
    out = ceiling.summarize(workloads.WORKLOADS["quota-c1000"], [{"c": run(5.7, 42812.0)}, {"c": run(5.0, 99740.0)},
                                                                   {"c": run(6.0, 40000.0)}])
    assert out["summary"]["c"]["cores"] == pytest.approx(0.24, abs=0.005)
    md = ceiling.markdown({"machine": {"date_utc": "d", "cpu": "c", "cores": 2, "kernel": "k", "loadavg": ["1"]},
                           "rounds": 3, "round_s": 4, "quota": "0.5", "workloads": {"quota-c1000": out},
                           "syscalls": {}, "memory": {}, "skipped": {}})
    assert "| req/s (server cores) |" in md and "| 42,812 (0.24) |" in md


def test_backend_verdict_says_by_how_much_and_where():
    def summ(cpu, sys_us, vs_c=None, vs_floor=None):
        d = {"cpu_us": cpu, "sys_us": sys_us, "user_us": cpu - sys_us}
        if vs_c:
            d["vs_c"], d["vs_floor"] = vs_c, vs_floor
        return d
    report = {"workloads": {"quota-c1000": {"summary": {
        "c": summ(6.0, 5.5), "c-uring": summ(6.3, 5.9, (1.05, 1.01, 1.10), (1.02, 0.98, 1.08))}}},
        "syscalls": {"quota-c1000": {"c": {"per_request": 2.03}, "c-uring": {"per_request": 0.06}}}}
    v = ceiling.backend_verdict(report)
    assert v.startswith("io_uring, keep-alive c=1000: 1.05 (1.01–1.10) × the epoll C engine's CPU per request, "
                        "1.02 × the epoll floor (goal ≤ 0.90: missed): dearer than epoll in every round.")
    assert "Kernel 5.90 µs against 5.50 µs" in v and "syscalls per request 0.06 against 2.03" in v
    report["workloads"]["quota-c1000"]["summary"]["c-uring"]["vs_c"] = (0.97, 0.93, 1.02)
    assert "not cheaper than epoll beyond the noise" in ceiling.backend_verdict(report)
    del report["workloads"]["quota-c1000"]["summary"]["c-uring"]
    assert ceiling.backend_verdict(report) == ""


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    start, end = markers("ceiling")
    readme.write_text(f"intro\n{start}\nold table\n{end}\nafter\n")
    assert ceiling.update_readme("| new |\n", readme)
    assert readme.read_text() == f"intro\n{start}\n| new |\n{end}\nafter\n"
    readme.write_text("no markers\n")
    assert not ceiling.update_readme("| new |\n", readme)
    assert readme.read_text() == "no markers\n"


def test_quota_group_is_removed_after_stop():
    q = measure.Quota(f"fastc1k-bench-smoke-{os.getpid()}")
    if q.kind == "none":
        pytest.skip(q.why)
    dirs = list(q.group.dirs)
    assert dirs and all(os.path.isdir(d) for d in dirs)
    q.close()
    assert not any(os.path.exists(d) for d in dirs)


def test_figures_blocks_render_from_their_json():
    """bench.figures turns its condensed JSON into the README blocks (no figure typed by hand)."""
    from bench import figures
    m = {"date_utc": "2026-11-30 19:30:00", "cpu": "cpu", "cores": 2, "kernel": "6", "loadavg": ["1", "2", "3"],
         "loadavg_end": ["4", "5", "6"]}
    srv = {"breaks_between": [9870, 10340], "breaks_because": ["p99 1200 ms > 1000 ms"],
           "configured_limit": "configured limit reached (max_connections=9,936 per worker): x", "probes": 3,
           "precision": 0.05, "peak_throughput": 50000.0, "p99_ms_by_clients": {100: 1.5, 1000: 20.0},
           "peak": "50,000 req/s at 250 clients (server CPU 0.45 of 0.50 cores allowed, 9.0 µs/request)",
           "throughput_by_clients": {100: 40000}, "first_bottleneck": {"resource": "cpu", "clients": 570,
                                                                       "evidence": "server CPU 0.50 of 0.50"},
           "recovery_label": "0.3 s ± 100 ms", "blast_clients": 20000, "recovery_clients": 1034}
    md = figures.capacity_markdown({"name": "capacity", "command": "make capacity-figures", "machine": m,
                                    "servers": {"fastc1k C engine": srv, "nginx": {**srv, "configured_limit": None}}})
    assert "| breaking point (bisected to 5 %) | **9,870–10,340** clients" in md
    assert "configured limit reached (max_connections=9,936 per worker)" in md
    assert "| p99 at 1,000 clients | 20.0 ms | 20.0 ms |" in md and "0.3 s ± 100 ms" in md
    assert "load average 1 2 3 → 4 5 6" in md and "bench/results/capacity.json" in md
    assert "| 50,000 req/s at 250 clients (server CPU 0.45 of 0.50 cores allowed, 9.0 µs/request) |" in md
    case = {"ratio_median": 0.8, "ratio_min": 0.7, "ratio_max": 0.9, "ours_us": 5.0, "ours_user_us": 0.5,
            "wrk_us": 6.0, "wrk_user_us": 1.0}
    md = figures.vswrk_markdown({"name": "vswrk", "command": "make vswrk", "machine": m, "rounds": 5, "seconds": 4,
                                 "cases": {"c100": case}})
    assert "| c=100 | **0.80** (0.70–0.90) | 5.00 (0.50) | 6.00 (1.00) |" in md
    res = {"held": 1000000, "target_connections": 1000000, "opened": 1000000, "failed_open": 0,
           "lost_during_hold": 0, "failed_verify": 0, "open_seconds": 67.5, "open_rate": 14804.0,
           "verify_seconds": 37.9, "kernel_bytes_per_conn": 10309.0, "server_rss_bytes_per_conn": 64.0,
           "server_rss_before": 1 << 30, "server_rss_after": 2 << 30, "client_rss_bytes_per_conn": 256.0,
           "mem_used_fraction_peak": 0.46, "limits": {"mem_total": 24 << 30}, "stopped_by": "target reached",
           "next_limit": "fs.file-max", "workers": 56, "clients": 56, "engine": "c"}
    md = figures.c1m_markdown({"name": "c1m", "command": "make c1m", "machine": m, "probe_command": "probe",
                               "result": res})
    assert "| connections held (200 when opened, 200 again after the hold) | **1,000,000** of 1,000,000 |" in md
    assert "| server user space per connection (RSS delta of the workers) | 64 B |" in md


def test_figures_refuse_a_run_whose_server_left_the_container():
    """A capacity figure is the container's only if every server process ran in its cgroup."""
    from bench import figures
    ok = {"container": {"applied": {"cpus": 0.5, "memory": 1 << 28}, "outside": []}, "notes": [],
          "versus": {"nginx": {"outside_container": []}}}
    figures.check_contained(ok)
    for bad, why in [({**ok, "container": {**ok["container"], "outside": [4242]}}, "fastc1k: server process(es) [4242]"),
                     ({**ok, "versus": {"nginx": {"outside_container": [7]}}}, "nginx: server process(es) [7]"),
                     ({**ok, "container": {"applied": {"memory": 1}, "outside": []}, "notes": ["cgroup not applied"]},
                      "limits were not applied: cgroup not applied")]:
        with pytest.raises(SystemExit, match=re.escape(why)):
            figures.check_contained(bad)


def test_every_readme_figure_block_has_its_command():
    """Each block between markers in the README is one a command of the project rewrites."""
    import re
    from fastc1k._readme import replace_block
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    blocks = set(re.findall(r"<!-- ([\w-]+):start -->", readme))
    writers = {"ceiling": "bench.ceiling", "config-table": "fastc1k.serve config-table",
               "capacity": "bench.figures capacity", "vswrk": "bench.figures vswrk",
               "scaleout": "capacity scaleout --readme", "cluster": "bench.cluster", "wsgi": "bench.wsgi_bench",
               "netcost": "capacity netcost --readme", "wsgi-capacity": "bench.wsgi_capacity",
               "c1m": "bench.figures c1m", "soak": "bench.hardening soak",
               "differential": "bench.hardening differential", "fuzz": "bench.hardening fuzz"}
    assert blocks <= set(writers), blocks - set(writers)
    assert {"ceiling", "capacity", "vswrk", "config-table"} <= blocks
    for name in blocks:
        assert readme.count(f"<!-- {name}:end -->") == 1
        assert f"<!-- {name}:start -->\nX\n<!-- {name}:end -->" in replace_block(readme, name, "X")


def test_wsgi_bench_end_to_end_on_two_servers(tmp_path):
    """bench.wsgi_bench on the C engine and one anchor, ~1 s rounds: figures, ratio, markdown."""
    from bench import wsgi_bench
    if wsgi_bench.spec("c", "hello").unavailable() or drivers.driver_missing():
        pytest.skip(wsgi_bench.spec("c", "hello").unavailable() or drivers.driver_missing())
    anchor = next((n for n in ("fastpysgi", "waitress", "gunicorn") if not wsgi_bench.spec(n, "hello").unavailable()),
                  None)
    if anchor is None:
        pytest.skip("no WSGI anchor server installed")
    uring = not wsgi_bench.spec("c-uring", "hello").unavailable()
    servers = f"c,c-uring,{anchor}" if uring else f"c,{anchor}"
    assert wsgi_bench.main(["--servers", servers, "--apps", "hello", "--rounds", "1", "--duration", "1",
                            "--idle", "200", "--no-in-situ", "--out", str(tmp_path), "--no-readme"]) == 0
    md = (tmp_path / "wsgi.md").read_text()
    assert "hello: C engine CPU per request × the best other server" in md
    # the goal line says, per backend, met or not against the best non-fastc1k server
    goal = next(line for line in md.splitlines() if line.startswith("Goal hello ≤ 0.8 × the best other ("))
    assert "the default backend (epoll) " in goal and ("met" in goal.split(";")[0])
    if uring:
        assert "| fastc1k C engine, io_uring |" in md and "; io_uring " in goal and "not measured" not in goal
    import json
    report = json.loads((tmp_path / "wsgi.json").read_text())
    hello = report["apps"]["hello"]["summary"]
    assert hello["c"]["cpu_us"] > 0 and hello[anchor]["vs_best"][0] == 1.0
    if uring:
        assert hello["c-uring"]["cpu_us"] > 0 and hello["c-uring"]["vs_best"][0] > 0
    assert report["apps"]["hello"]["memory"]["c"]["answered"] == 200


def test_wsgi_reach_says_when_the_app_alone_puts_the_goal_out_of_reach():
    """The Flask goal line's reach: from the run's own figures, (app alone + our hello part) / best."""
    from bench import wsgi_bench as wb

    def apps(flask_alone, bjoern_flask, c_hello=5.0, hello_alone=1.0):
        row = {"cpu_us": 0.0, "server_us": 0.0}
        return {"hello": {"alone_us": hello_alone, "summary": {"c": {**row, "cpu_us": c_hello},
                                                                "bjoern": {**row, "cpu_us": 8.0}}},
                "flask_app": {"alone_us": flask_alone, "summary": {"c": {**row, "cpu_us": 100.0, "server_us": 12.5},
                                                                    "bjoern": {**row, "cpu_us": bjoern_flask}}}}
    a = apps(80.0, 100.0)  # allowed 90 - 80 = 10 µs; ours on hello 4 µs: (80 + 4) / 100
    r = wb.reach("flask_app", a)
    assert (r["best"], r["floor"], r["allowed_us"]) == ("bjoern", 0.8, 10.0)
    assert r["ours"]["c"]["bound"] == 0.84 and r["ours"]["c"]["app_part_us"] == 12.5
    line = wb.reach_line("flask_app", r)
    assert "(80.00 + 4.00) / 100.00 = 0.84 × — within reach (its part of this app's request here: 12.50 µs)" in line
    a["flask_app"]["in_situ"] = {"c": {"app_us": 88.0, "cpu_us": 101.0}}
    r = wb.reach("flask_app", a)  # in situ the app took 88: (88 + 4) / 100 = 0.92
    assert r["ours"]["c"]["situ_bound"] == pytest.approx(0.92)
    assert "; in situ the app took 88.00 µs per call under it, so at best (88.00 + 4.00) / 100.00 = 0.92 × — " \
           "**out of reach by arithmetic**" in wb.reach_line("flask_app", r)
    del a["flask_app"]["in_situ"]
    r = wb.reach("flask_app", apps(80.0, 100.0, c_hello=15.0))  # (80 + 14) / 100 = 0.94
    assert "= 0.94 × — **out of reach by arithmetic**" in wb.reach_line("flask_app", r)
    r = wb.reach("flask_app", apps(95.0, 100.0))  # the app alone is 0.95 x the best: no server can
    assert "leaves a server nothing: **out of reach for any server by arithmetic** (a server costing nothing " \
           "would be 0.95 ×)" in wb.reach_line("flask_app", r)
    del a["hello"]
    assert "hello not run" in wb.reach_line("flask_app", wb.reach("flask_app", a))
    assert wb.reach("flask_app", {"flask_app": {"alone_us": 1.0, "summary": {"c": {"cpu_us": 2.0}}}}) == {}


def test_figures_child_cleans_up_after_ctrl_c(tmp_path):
    """^C during `make capacity-figures` reaches the run too: bench.figures waits for it to
    clean up (its server, cgroup, nf_conntrack_max) instead of killing it at once."""
    import signal
    import subprocess
    import time
    mark = tmp_path / "cleaned"
    # both take ^C as a terminal's processes do, whatever this run inherited (a run started in
    # the background, as a CI job can be, inherits SIGINT ignored, and Python keeps it so)
    sigint = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    child = (f"{sigint}import time\ntry:\n    open({str(tmp_path / 'ready')!r}, 'w').close(); time.sleep(30)\n"
             f"except KeyboardInterrupt:\n    time.sleep(1.0); open({str(mark)!r}, 'w').close()\n")
    parent = subprocess.Popen([sys.executable, "-c", f"{sigint}import sys; from bench.figures import run_child; "
                               f"run_child([sys.executable, '-c', {child!r}])"],
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), start_new_session=True,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(parent.pid, signal.SIGINT)          # as a terminal's ^C: the whole group
    parent.wait(20)
    assert mark.exists()


def test_hardening_blocks_render_from_their_runs_output():
    """bench.hardening reads the figures from the runs' own output (no figure typed by hand)."""
    from bench import hardening
    stats = ("tests/test_differential.py::test_parsers_agree:\n\n  - during reuse phase (0.01 seconds):\n"
             "    - 3 passing examples, 0 failing examples, 1 invalid example\n"
             "  - during generate phase (20.5 seconds):\n"
             "    - 99,997 passing examples, 0 failing examples, 12 invalid examples\n"
             "  - Stopped because settings.max_examples=100000\n")
    assert hardening.parse_hypothesis_stats(stats) == {"test_parsers_agree": {
        "passing": 100000, "failing": 0, "invalid": 13, "stopped_because": "settings.max_examples=100000"}}
    fz = hardening.parse_libfuzzer("#2048\tpulse  cov: 250 ft: 700 corp: 100/2Kb\n#15802\tDONE   cov: 258 ft: 720 "
                                   "corp: 120/3Kb lim: 4 exec/s: 2633\nDone 15802 runs in 6 second(s)\n")
    assert fz == {"runs": 15802, "seconds": 6, "cov": 258, "ft": 720, "corpus": 120}
    m = {"date_utc": "2026-11-30 22:00:00", "cpu": "cpu", "cores": 2, "kernel": "6", "loadavg": ["1", "2", "3"],
         "loadavg_end": ["1", "1", "1"]}
    md = hardening.fuzz_markdown({"name": "fuzz", "command": "make fuzz-figures", "machine": m, "seed": 1,
                                  "fuzz_command": "python fuzz/fuzz_parser.py", "returncode": 0, "result": fz})
    assert "| inputs run | 15,802 in 6 s (2,634/s) |" in md and "| none |" in md
    r = {"engine": "c", "duration": 120.0, "capacity_rps": 50000.0, "rate": 35000.0, "achieved_rps": 34000.0,
         "requests": 4080000, "error_count": 0, "connects": 700, "p99_us": 2500, "rss_warm": 17 << 20,
         "rss_end": 17 << 20, "rss_max_growth": 8192, "fds_baseline": 6, "fds_max": 70, "fds_after": 6, "alive": True}
    md = hardening.soak_markdown({"name": "soak", "command": "make soak", "machine": m, "passed": True,
                                  "soak_command": "python tests/test_soak.py", "result": r})
    assert "| **passed** |" in md and "35,000 req/s asked, 34,000 achieved, for 120 s" in md
    assert "| requests / errors / connections opened | 4,080,000 / 0 / 700 |" in md
    assert "| **failed**: errors during the soak |" in hardening.soak_markdown(
        {"name": "soak", "command": "make soak", "machine": m, "passed": False, "failure": "errors during the soak",
         "soak_command": "x", "result": r})


def test_c1m_reports_a_run_that_did_not_hold_every_connection(monkeypatch):
    """The probe exits 1 when a connection was lost or not answered again: the block says
    how many were held rather than the run being thrown away."""
    import json
    import subprocess
    from bench import figures
    res = {"held": 999_990, "target_connections": 1_000_000, "opened": 1_000_000, "failed_open": 0,
           "lost_during_hold": 4, "failed_verify": 6, "open_seconds": 90.0, "open_rate": 11111.0,
           "verify_seconds": 40.0, "kernel_bytes_per_conn": 10300.0, "server_rss_bytes_per_conn": 64.0,
           "server_rss_before": 1 << 30, "server_rss_after": 2 << 30, "client_rss_bytes_per_conn": 256.0,
           "mem_used_fraction_peak": 0.5, "limits": {"mem_total": 24 << 30}, "stopped_by": "target reached",
           "next_limit": "fs.file-max", "workers": 56, "clients": 56, "engine": "c",
           "conntrack": "conntrack: nf_conntrack_max raised 262144 -> 1136966 for the run, then restored"}

    def probe(argv, **kw):
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(res, f)
        return subprocess.CompletedProcess(argv, 1, "connections held 999,990\n", "")
    saved = {}
    monkeypatch.setattr(figures, "run_child", probe)
    monkeypatch.setattr(figures, "_save", lambda name, data, md, readme: saved.update(name=name, md=md))
    figures.c1m(False, None)
    assert saved["name"] == "c1m" and "**999,990** of 1,000,000" in saved["md"]
    assert "| failed / lost while held / second answer failed | 0 / 4 / 6 |" in saved["md"]
    assert "| conntrack | conntrack: nf_conntrack_max raised 262144 -> 1136966" in saved["md"]


def test_a_timed_app_counts_its_own_cpu_and_answers_as_the_app_does():
    """bench.wsgi_app.timed: the wrapped app's answers are the app's (status, headers, body,
    close() called), and GET /_in_situ gives the calls and the app's CPU since the last read."""
    import json
    from wsgiref.util import setup_testing_defaults
    from bench import wsgi_app

    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("boom")
        start_response("201 Created", [("X-App", "1")])
        sum(range(20000))  # some CPU of the app's own
        return Body([b"a", b"", b"bc"])

    timed = wsgi_app.timed(app)

    def call(path):
        env = {"PATH_INFO": path}
        setup_testing_defaults(env)
        got = {}
        body = b"".join(timed(env, lambda s, h, e=None: got.update(status=s, headers=h)))
        return got, body
    for _ in range(3):
        assert call("/x") == ({"status": "201 Created", "headers": [("X-App", "1")]}, b"abc")
    assert closed == [True] * 3
    with pytest.raises(ValueError):
        call("/boom")
    got, body = call(wsgi_app.IN_SITU)
    stats = json.loads(body)
    assert got["status"] == "200 OK" and stats["calls"] == 3
    assert stats["app_ns"] > 3 * 50_000 and stats["timer_ns"] >= 0  # sum(range(20000)) is ~0.2 ms
    assert json.loads(call(wsgi_app.IN_SITU)[1])["calls"] == 0  # read and reset
    assert wsgi_app.flask_app_timed is wsgi_app.flask_app_timed  # made once, on first use


def test_wsgi_bench_measures_the_app_in_situ(tmp_path):
    """`--in-situ`: each server serves the timed app once more; the app's CPU per call as the
    server runs it, and the server's own part beside it, in the JSON and the markdown."""
    import json
    from bench import wsgi_bench
    if wsgi_bench.spec("c", "hello").unavailable() or drivers.driver_missing():
        pytest.skip(wsgi_bench.spec("c", "hello").unavailable() or drivers.driver_missing())
    assert wsgi_bench.main(["--servers", "c", "--apps", "hello", "--rounds", "1", "--duration", "1", "--idle", "0",
                            "--in-situ", "--out", str(tmp_path), "--no-readme"]) == 0
    res = json.loads((tmp_path / "wsgi.json").read_text())["apps"]["hello"]
    s = res["in_situ"]["c"]
    assert 0 < s["app_us"] < s["cpu_us"] and s["calls"] > 100
    md = (tmp_path / "wsgi.md").read_text()
    assert "| app in situ | server's own (− app in situ) |" in md
    row = next(line for line in md.splitlines() if line.startswith("| fastc1k C engine, epoll (default) |"))
    own = res["summary"]["c"]["cpu_us"] - s["app_us"]  # the main rounds' µs/request minus the app in situ
    assert row.endswith(f"| {s['app_us']:.2f} | {own:.2f} |")
