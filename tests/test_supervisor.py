"""The pre-fork supervisor on real processes: `python -m fastc1k.serve` under load.

Each test starts its own server (ServerProc: port 0, start-up line read for the port,
every pid it saw killed at the end) and drives it with the closed-loop Load client of
_supervised.py. Runs per engine in FASTC1K_TEST_ENGINES (see conftest.py).
"""
from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from _supervised import Load, ServerProc, http_get, kill_quietly

APP = ["--app", "_supervisor_app:routes"]

pytestmark = pytest.mark.timeout(60)


def _total(text: str, family: str) -> float:
    m = re.search(rf"^{family} (\S+)$", text, re.M)
    assert m, f"{family} missing from /metrics"
    return float(m.group(1))


def test_startup_line_names_and_pinning(engine):
    with ServerProc("--pin", engine=engine, workers=2) as sp:
        line = sp.line
        for part in (f"engine={engine}", "workers=2", "listen=reuseport", "fd_limit/worker=",
                     "max_connections/worker=", "max_body=", f"http://127.0.0.1:{sp.port}"):
            assert part in line, (part, line)
        assert psutil.Process(sp.pid).cmdline()[0] == "fastc1k: master"
        titles = sorted(psutil.Process(p).cmdline()[0] for p in sp.workers())
        assert titles == [f"fastc1k: worker 0 ({engine})", f"fastc1k: worker 1 ({engine})"]
        cpus = sorted(os.sched_getaffinity(0))
        affinities = sorted(tuple(psutil.Process(p).cpu_affinity()) for p in sp.workers())
        assert all(len(a) == 1 for a in affinities)
        if len(cpus) >= 2:
            assert {a[0] for a in affinities} == set(cpus[:2])
        status, body, _ = http_get(sp.address, "/api/health")
        assert (status, body) == (200, b'{"status":"ok"}')


def test_kill9_one_of_four_under_load(engine):
    """kill -9 a worker: replaced within 1 s; the others' connections see no failure; totals go on."""
    with ServerProc(engine=engine, workers=4) as sp:
        pids = sp.wait_workers(4)
        load = Load(sp.address, 40).start()
        time.sleep(0.5)
        on_victim = {p: n for p, n in load.by_worker.items()}
        victim = max(pids, key=lambda p: on_victim.get(p, 0))  # one that certainly holds connections
        before = http_get(sp.address, "/metrics")[1].decode()
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = sp.wait_workers(4, timeout=3.0, exclude={victim})
        replaced_in = time.monotonic() - t0
        time.sleep(0.5)
        after = http_get(sp.address, "/metrics")[1].decode()
        load.stop()
        assert replaced_in < 1.0, f"worker replaced after {replaced_in:.2f} s"
        assert len(set(new) - set(pids)) == 1
        others = [e for e in load.errors if e[1] != victim]
        assert not others, f"failures on other workers' connections: {others[:5]}"
        assert not [w for w in load.retries if w != victim], "other workers' connections were closed"
        assert load.ok > 0
        for fam in ("fastc1k_requests_total", "fastc1k_accepted_total", 'fastc1k_responses_total{status="200"}'):
            assert _total(after, re.escape(fam)) > _total(before, re.escape(fam)), fam
        assert f'worker="{victim}"' not in after
        assert "killed by SIGKILL" in sp.stderr()


def test_sigterm_under_load_answers_everything_received(engine):
    graceful = 3.0
    with ServerProc(*APP, engine=engine, workers=2, graceful_timeout=graceful,
                    env={"FASTC1K_TEST_SLOW": "0.4"}) as sp:
        load = Load(sp.address, 20).start()
        slow = Load(sp.address, 4, path="/slow", timeout=graceful + 2)
        slow.thread.start()
        time.sleep(0.1)      # the slow requests are in the workers now
        procs = [sp.pid] + sp.workers()
        load._sending = slow._sending = False  # every request outstanding now was sent before the signal
        t0 = time.monotonic()
        sp.signal(signal.SIGTERM)
        rc = sp.wait(graceful + 2)
        took = time.monotonic() - t0
        load.stop(drain=1)
        slow.stop(drain=1)
        assert rc == 0, sp.stderr()
        assert took < graceful + 0.5, f"exit after {took:.2f} s"
        assert slow.ok == 4 and not slow.errors, (slow.ok, slow.errors)
        assert not load.errors, f"requests sent before SIGTERM not answered: {load.errors[:5]}"
        left = [p for p in procs if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left, f"server processes left: {left}"


def test_sighup_rolling_reload_under_200_connections(engine):
    with ServerProc(engine=engine, workers=2) as sp:
        old = set(sp.wait_workers(2))
        load = Load(sp.address, 200).start()
        time.sleep(0.5)
        sp.signal(signal.SIGHUP)
        new = sp.wait_workers(2, timeout=10.0, exclude=old)
        served_before = load.snapshot()[0]
        time.sleep(0.7)
        load.stop()
        print(f"reload under 200 connections: {load.ok} ok, {load.retried} retried, {len(load.errors)} errors")
        assert not load.errors, f"connection errors during the reload: {load.errors[:5]}"
        # A request sent on a keep-alive connection that the retiring worker then closed
        # (reset or EOF, nothing answered) is a connection error too, even if a client
        # could retry it: a graceful worker answers it with `Connection: close`.
        assert not load.retried, (f"{load.retried} requests on keep-alive connections were dropped by retiring "
                                  "workers (closed while idle instead of answering their next request)")
        assert load.ok > served_before
        assert set(load.by_worker) & set(new), "the new workers served nothing"
        assert psutil.Process(sp.pid).is_running()
        assert "reload: done" in sp.stderr()


def test_two_workers_share_1000_connections(engine):
    """SO_REUSEPORT spreads connections: each of 2 workers holds 30-70% of 1,000."""
    with ServerProc(engine=engine, workers=2) as sp:
        pids = sp.wait_workers(2)
        load = Load(sp.address, 1000, timeout=10.0).start(warm=20.0)
        held = {}
        for c in load.conns:
            held[c.worker] = held.get(c.worker, 0) + 1
        load.stop()
        assert set(held) == set(pids), held
        for pid, n in held.items():
            assert 300 <= n <= 700, held
        assert not load.errors


def test_metrics_parse_and_add_up(engine):
    with ServerProc(engine=engine, workers=2) as sp:
        pids = sp.wait_workers(2)
        load = Load(sp.address, 8).start()
        time.sleep(0.3)
        load.stop()
        text = http_get(sp.address, "/metrics")[1].decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("fastc1k_requests", "fastc1k_loop_lag_p99_us", "fastc1k_loop_events_per_wait",
                     "fastc1k_worker_cpu_seconds", "fastc1k_worker_resident_memory_bytes",
                     "fastc1k_worker_open_fds", "fastc1k_worker_max_fds", "fastc1k_process_open_fds"):
            assert name in families, name
        req = families["fastc1k_requests"].samples
        total = [s.value for s in req if "worker" not in s.labels]
        per = {s.labels["worker"]: s.value for s in req if "worker" in s.labels}
        assert set(per) == {str(p) for p in pids}
        assert total == [sum(per.values())] and total[0] >= load.ok
        fds = {s.labels["worker"]: s.value for s in families["fastc1k_worker_open_fds"].samples}
        assert set(fds) == set(per) and all(v > 0 for v in fds.values())


def test_ttin_ttou_add_and_remove_workers(engine):
    with ServerProc(engine=engine, workers=1) as sp:
        first = sp.wait_workers(1)
        sp.signal(signal.SIGTTIN)
        two = sp.wait_workers(2)
        assert first[0] in two
        sp.signal(signal.SIGTTIN)
        sp.wait_workers(3)
        sp.signal(signal.SIGTTOU)   # one at a time: signals of one kind sent together merge
        sp.wait_workers(2)
        sp.signal(signal.SIGTTOU)
        left = sp.wait_workers(1)
        assert left == first
        assert http_get(sp.address, "/api/health")[0] == 200
        sp.signal(signal.SIGTTOU)   # the last worker stays
        time.sleep(0.3)
        assert sp.workers() == first
        assert "only one worker left" in sp.stderr()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_shared_listener_fallback(engine, how):
    args, env = (["--listen", "shared"], None) if how == "flag" else ([], {"FASTC1K_LISTEN": "shared"})
    with ServerProc(*args, engine=engine, workers=2, env=env) as sp:
        assert "listen=shared" in sp.line
        sp.wait_workers(2)
        load = Load(sp.address, 20).start()
        time.sleep(0.3)
        load.stop()
        assert load.ok > 0 and not load.errors
        victim = sp.workers()[0]
        os.kill(victim, signal.SIGKILL)   # the shared socket survives a worker's death too
        sp.wait_workers(2, exclude={victim})
        assert http_get(sp.address, "/api/health")[0] == 200


def test_crash_loop_backs_off_and_master_survives(engine):
    with ServerProc(*APP, engine=engine, workers=1) as sp:
        for _ in range(4):
            pid = sp.wait_workers(1)[0]
            with pytest.raises(OSError):  # the worker dies mid-request: EOF, no status line
                status = http_get(sp.address, "/crash", timeout=3)[0]
                raise OSError(f"status {status}")  # pragma: no cover - only if the worker did not die
            deadline = time.monotonic() + 3
            while pid in sp.workers() and time.monotonic() < deadline:
                time.sleep(0.01)
        sp.wait_workers(1, timeout=5)
        log = sp.stderr()
        delays = [float(d) for d in re.findall(r"crash loop \(\d+ in a row\): next start in ([\d.]+) s", log)]
        assert delays == sorted(delays) and len(delays) >= 3 and delays[-1] > delays[0], log
        assert "exited with status 3" in log
        assert psutil.Process(sp.pid).is_running()
        assert http_get(sp.address, "/api/health")[0] == 200


def test_workers_exit_when_the_master_is_killed(engine):
    sp = ServerProc(engine=engine, workers=2)
    try:
        workers = sp.wait_workers(2)
        os.kill(sp.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in workers):
            time.sleep(0.05)
        assert not any(psutil.pid_exists(p) for p in workers), "orphaned workers kept running"
    finally:
        for p in sp.seen:
            kill_quietly(p)
        sp.kill_all()


def test_sighup_reimports_the_app(engine, tmp_path):
    app = tmp_path / "reload_app_mod.py"
    app.write_text("from fastc1k import Routes\nroutes = Routes()\nroutes.static('/version', b'1')\n")
    with ServerProc("--app", "reload_app_mod:routes", engine=engine, workers=2, cwd=str(tmp_path)) as sp:
        old = set(sp.wait_workers(2))
        assert http_get(sp.address, "/version")[1] == b"1"
        app.write_text("from fastc1k import Routes\nroutes = Routes()\nroutes.static('/version', b'2')\n")
        os.utime(app, (time.time() + 5, time.time() + 5))  # a new mtime, whatever the clock granularity
        sp.signal(signal.SIGHUP)
        sp.wait_workers(2, exclude=old)
        assert {http_get(sp.address, "/version")[1] for _ in range(6)} == {b"2"}
        # A broken app on reload keeps the running workers.
        now = set(sp.workers())
        app.write_text("raise RuntimeError('broken on purpose')\n")
        os.utime(app, (time.time() + 10, time.time() + 10))
        sp.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert set(sp.workers()) == now
        assert "cannot import app module" in sp.stderr()
        assert http_get(sp.address, "/version")[1] == b"2"


def test_metrics_area_retire_folds_counters_not_gauges():
    """In-process: what the master does when a worker exits (MetricsArea.retire)."""
    from fastc1k import metrics

    area = metrics.MetricsArea(2)
    a, b = area.slot(0), area.slot(1)
    a[metrics.IDX["pid"]], b[metrics.IDX["pid"]] = 101, 102
    a[metrics.IDX["requests"]], b[metrics.IDX["requests"]] = 7, 5
    a[metrics.IDX["active"]], b[metrics.IDX["active"]] = 3, 4
    area.retire(0)
    assert list(a) == [0] * metrics.N_WORDS          # the slot is free for a replacement
    a[metrics.IDX["pid"]], a[metrics.IDX["requests"]] = 103, 1
    text = area.render().decode()
    assert re.search(r"^fastc1k_requests_total 13$", text, re.M)    # 7 retired + 5 + 1
    assert re.search(r"^fastc1k_active 4$", text, re.M)             # gauges: live workers only
    assert 'worker="101"' not in text and 'worker="103"' in text
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "fastc1k_requests" in families


def test_master_as_pid_1_keeps_its_workers(engine):
    """In a container without an init (a Kubernetes `command` replaces the image's tini
    entrypoint) the master is PID 1: a worker must not take "my parent is PID 1" for
    "my master died" and exit, which crash-looped every worker and served nothing."""
    import subprocess
    import sys

    from _supervised import _PORT_RE, serve_env
    wrap = ["unshare", "--pid", "--fork", "--kill-child"]
    if subprocess.run([*wrap, "true"], capture_output=True).returncode != 0:
        pytest.skip("a PID namespace needs root (unshare --pid)")
    proc = subprocess.Popen([*wrap, sys.executable, "-m", "fastc1k.serve", "--host", "127.0.0.1", "--port", "0",
                             "--engine", engine, "--workers", "1"], env=serve_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "master_pid=1" in line, line
        port = int(_PORT_RE.search(line).group(1))
        for _ in range(10):   # a crash-looping worker would refuse these within the first second
            assert http_get(("127.0.0.1", port), "/api/health")[0] == 200
            time.sleep(0.1)
    finally:
        proc.kill()   # --kill-child: the namespace's PID 1 and with it every worker
        proc.wait(5)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "exited with status 0" not in err, err


def test_workers_ask_to_be_oom_killed_before_the_master(engine):
    """At a memory limit the kernel kills the largest process: a worker (restarted by the
    master) rather than the master (every connection, and in a container the container)."""
    from fastc1k.supervisor import WORKER_OOM_SCORE_ADJ
    with ServerProc(engine=engine, workers=2) as sp:
        def adj(pid: int) -> int:
            with open(f"/proc/{pid}/oom_score_adj") as f:
                return int(f.read())
        assert [adj(p) for p in sp.workers()] == [WORKER_OOM_SCORE_ADJ] * 2
        assert adj(sp.pid) < WORKER_OOM_SCORE_ADJ
