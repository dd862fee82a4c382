"""The capacity report's rules on synthetic data: breaking point, degradation, USL,
bottleneck naming, recovery, cascades."""
from __future__ import annotations

import pytest

from fastc1k.capacity import analysis as A

TH = A.Thresholds()


def stage(clients, p99, ok=1000, errors=None, connects_ok=0, connects_failed=0):
    rows = [{"ok": ok, "errors": errors or {}, "connects_ok": connects_ok, "connects_failed": connects_failed,
             "connections_open": clients}]
    s = A.summarize_rows(rows, clients)
    s["latency_ms"] = {"p99": p99}
    return s


def test_summary_rates():
    s = A.summarize_rows([{"ok": 90, "errors": {"refused": 5, "read_timeout": 5}, "connects_ok": 10,
                           "connects_failed": 5, "connections_open": 10, "intended": 100}] * 2, 10)
    assert s["ok"] == 180 and s["error_count"] == 20
    assert s["error_rate"] == pytest.approx(0.1)
    assert s["refusal_rate"] == pytest.approx(0.05) and s["timeout_rate"] == pytest.approx(0.05)
    assert s["throughput"] == 90 and s["intended_rate"] == 100
    assert s["failed_connections"] == 10 + 10  # connect failures + timeouts that ended a connection


def test_nothing_answered_is_total_failure():
    assert A.summarize_rows([{"ok": 0, "errors": {}}], 100)["error_rate"] == 1.0


def test_breaking_point_error_rate():
    stages = [stage(100, 1), stage(250, 2), stage(500, 3, ok=400, errors={"status_503": 600}), stage(750, 4)]
    bp = A.breaking_point(stages, TH)
    assert bp["clients"] == 500 and bp["last_good_clients"] == 250
    assert "error rate 60%" in bp["reasons"][0]


def test_breaking_point_shed_connections():
    """Old clients fast, every new one answered 503: few failed requests, yet broken."""
    s = stage(750, 2, ok=30000, errors={"status_503": 2000}, connects_ok=2250)
    assert s["error_rate"] < 0.5
    assert A.is_broken(s, TH) and "connection attempts failed" in A.is_broken(s, TH)[0]
    # A couple of resets among many clients is not a break.
    assert not A.is_broken(stage(750, 2, ok=30000, errors={"reset": 3}, connects_ok=3), TH)


def test_breaking_point_p99_and_none():
    assert A.breaking_point([stage(100, 5), stage(250, 1500)], TH)["reasons"] == ["p99 1500 ms > 1000 ms"]
    assert A.breaking_point([stage(100, 5), stage(250, 1500)], A.Thresholds(break_p99_ms=None)) is None


def test_degradation_and_explosion():
    linear = [stage(c, c / 10) for c in (100, 250, 500, 1000)]
    d = A.degradation(linear, TH)
    assert d["mean_ratio"] == pytest.approx(1.0) and not d["nonlinear"]
    assert A.latency_explosion(linear, TH) is None
    bad = [stage(100, 1), stage(250, 2.5), stage(500, 50), stage(750, 100)]
    d = A.degradation(bad, TH)
    assert d["nonlinear"] and d["ratios"][1] == pytest.approx(10)
    ex = A.latency_explosion(bad, TH)
    assert ex["clients"] == 500 and ex["p99_ms"] == 50


def test_usl_fit_recovers_parameters():
    lam, sigma, kappa = 1000.0, 0.05, 0.0002
    ns = [1, 2, 4, 8, 16, 32, 64, 128]
    xs = [A.usl_throughput(n, lam, sigma, kappa) for n in ns]
    fit = A.usl_fit(ns, xs)
    assert fit["lambda"] == pytest.approx(lam, rel=1e-6)
    assert fit["sigma"] == pytest.approx(sigma, rel=1e-6) and fit["kappa"] == pytest.approx(kappa, rel=1e-6)
    assert fit["peak_clients"] == pytest.approx(((1 - sigma) / kappa) ** 0.5)
    assert fit["r2"] == pytest.approx(1.0)


def test_usl_fit_needs_six_points_and_clamps():
    assert A.usl_fit([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) is None
    fit = A.usl_fit([1, 2, 4, 8, 16, 32], [10 * n for n in (1, 2, 4, 8, 16, 32)])  # perfectly linear
    assert fit["sigma"] == pytest.approx(0, abs=1e-9) and fit["kappa"] == pytest.approx(0, abs=1e-12)
    assert fit["peak_clients"] is None


def samples(n=25, **over):
    out = []
    for i in range(n):
        s = {"t": i / 10, "clients": 50 * i, "cpu_used": 0.1, "cpu_allowed": 1.0, "rss": 10 << 20,
             "mem_limit": 100 << 20, "fds": 10 + 50 * i, "fd_limit": 20000, "listen_overflows": 0}
        for k, f in over.items():
            s[k] = f(i)
        out.append(s)
    return out


@pytest.mark.parametrize("over,name,clients", [
    ({"fd_limit": lambda i: 1024}, "fds", 1000),
    ({"cpu_used": lambda i: 0.2 if i >= 5 else 0.05, "cpu_allowed": lambda i: 0.2}, "cpu", 450),
    ({"rss": lambda i: (95 << 20) if i >= 7 else (10 << 20)}, "memory", 350),
    ({"listen_overflows": lambda i: 3 if i >= 9 else 0, "own_netns": lambda i: True}, "listen_overflows", 450),
    ({"conntrack_count": lambda i: 250 * i, "conntrack_max": lambda i: 4096}, "conntrack", 800),
    ({"conntrack_count": lambda i: 100, "conntrack_max": lambda i: 262144,
      "conntrack_drop": lambda i: 7 if i >= 4 else 0}, "conntrack", 200),
    ({"cgroup_memory": lambda i: (92 << 20) if i >= 6 else (20 << 20)}, "memory", 300),
    # the kernel killed a worker at the limit: that failure, not the memory that led to it
    ({"cgroup_memory": lambda i: (92 << 20) if i >= 6 else (20 << 20), "oom_kills": lambda i: int(i >= 6)},
     "oom_kill", 300),
])
def test_first_bottleneck(over, name, clients):
    b = A.first_bottleneck(samples(**over), TH)
    assert b["resource"] == name and b["clients"] == clients, b
    assert b["evidence"]


def test_cpu_needs_two_samples_and_nothing_found():
    spike = samples(cpu_used=lambda i: 1.0 if i == 3 else 0.1)
    assert A.first_bottleneck(spike, TH) is None


def test_cpu_counts_time_queued_for_a_cpu():
    """A busy host gives the server 0.4 of its core; queued the rest of the time: CPU-bound."""
    b = A.first_bottleneck(samples(cpu_used=lambda i: 0.4 if i >= 8 else 0.05,
                                   cpu_wait=lambda i: 0.6 if i >= 8 else 0.0), TH)
    assert b["resource"] == "cpu" and "waiting" in b["evidence"]
    assert 400 <= b["clients"] <= 600


def test_idle_server_on_a_busy_host_is_not_cpu_bound():
    """Lumps of queued time while it does almost no work (or has no clients) are not a bottleneck."""
    assert A.first_bottleneck(samples(cpu_used=lambda i: 0.05, cpu_wait=lambda i: 0.95), TH) is None
    assert A.first_bottleneck(samples(clients=lambda i: 0, cpu_used=lambda i: 1.0), TH) is None


def test_host_wide_overflows_need_evidence_that_the_run_caused_them():
    """In the host's namespace the counter is every listener's: alone it names nothing."""
    moved = {"listen_overflows": lambda i: 3 * i}
    assert A.first_bottleneck(samples(**moved, listen_overflows_baseline=lambda i: 50.0), TH) is None
    full = A.first_bottleneck(samples(**moved, listen_queue=lambda i: [128, 128] if i >= 6 else [0, 128]), TH)
    assert full["resource"] == "listen_overflows" and full["clients"] == 300
    assert "own listen queue full (128 of 128)" in full["evidence"]
    fast = A.first_bottleneck(samples(listen_overflows=lambda i: 0 if i < 10 else 500 * (i - 9),
                                      listen_overflows_baseline=lambda i: 2.0), TH)
    assert fast["resource"] == "listen_overflows" and "before the run" in fast["evidence"], fast


def test_bisection_narrows_to_the_precision():
    good, broken, probes = 7595, 11393, []
    true_limit = 10_000                       # broken above it
    while (mid := A.bisect_next(good, broken, 0.05)) is not None:
        probes.append(mid)
        good, broken = (good, mid) if mid > true_limit else (mid, broken)
    assert good <= true_limit < broken and broken - good <= 0.05 * broken
    assert probes == [9494, 10443, 9968]          # 3,798 wide -> 475 (< 5 % of 10,443)
    assert A.bisect_next(99, 100, 0.05) is None
    assert A.bracket_text(9870, 10340) == "breaks between 9,870 and 10,340 clients"


def test_configured_limit_is_named_apart_from_resources():
    shed = {"clients": 11393, "errors": {"status_503": 9000, "reset": 10}, "failed_connections": 1400}
    text = A.configured_limit(shed, 10000, 1)
    assert text.startswith("configured limit reached (max_connections=10,000 per worker)"), text
    assert A.configured_limit(shed, 10000, 2) is None            # 2 workers hold 20,000
    auto = A.configured_limit({**shed, "clients": 1000}, 960, 1, fd_limit=1024)
    assert "max_connections=960 per worker, sized from the fd limit 1,024 (max_connections auto)" in auto
    assert "rejected_max_connections" in A.configured_limit(shed, None, 1, rejected=1393)
    timeouts = {"clients": 11393, "errors": {"connect_timeout": 9000, "status_503": 5}}
    assert A.configured_limit(timeouts, 10000, 1) is None        # a resource limit, not the cap


def test_recovery_at_100ms():
    good = {"ok": 10, "errors": {}, "p99_us": 5000}
    slow = {"ok": 10, "errors": {}, "p99_us": 150_000}
    rows = [slow] * 3 + [good] * 30
    r = A.recovery_time(rows, TH, resolution=0.1)
    assert r["recovered"] and r["seconds"] == 0.3 and r["label"] == "0.3 s ± 100 ms"
    assert r["bar_s"] == 30 and r["resolution_s"] == 0.1
    assert A.recovery_time([good] * 30, TH, 0.1)["label"] == "within 100 ms of the drop"
    dip = [good] * 20 + [slow] + [good] * 30                 # 3 s must hold: restarts after the dip
    assert A.recovery_time(dip, TH, 0.1)["seconds"] == 2.1
    assert not A.recovery_time([good] * 29, TH, 0.1)["recovered"]


def test_recovery():
    good = {"ok": 100, "errors": {}, "p99_us": 5000}
    slow = {"ok": 100, "errors": {}, "p99_us": 500_000}
    failing = {"ok": 50, "errors": {"reset": 50}, "p99_us": 1000}
    r = A.recovery_time([slow, failing, good, good, good, good], TH)
    assert r["recovered"] and r["seconds"] == 2 and r["label"] == "< 3 s"
    assert A.recovery_time([good] * 3, TH)["label"] == "< 1 s"
    r = A.recovery_time([good, good, slow, good, good], TH)
    assert not r["recovered"] and "did not recover" in r["label"]
    assert not A.recovery_time([{"ok": 0, "errors": {}, "p99_us": None}] * 5, TH)["recovered"]


def test_cascade():
    err = {"ok": 50, "errors": {"reset": 50}}
    fine = {"ok": 100, "errors": {}}
    assert A.cascade_seconds([err, err, fine, fine, fine, fine]) == 2
    assert A.cascade_seconds([fine] * 6) == 0
    assert A.cascade_seconds([err] * 6) == 0  # errors that are the stage's own, not a cascade


def test_peak_names_its_stage_and_the_servers_cpu_there():
    """The peak is one stage's rate, not a probe's or a 100 ms row's, with the server's CPU
    beside it: 100k req/s at 0.40 of 0.50 cores is 4 µs a request and not quota-bound."""
    samples = [{"t": 10 + i / 10, "cpu_used": c, "cpu_allowed": 0.5} for i, c in enumerate([0.3, 0.5] * 5)]
    cpu = A.server_cpu(samples, 100_000.0)
    assert cpu == {"server_cpu": 0.4, "server_cpu_allowed": 0.5, "cpu_us_per_request": 4.0}
    assert A.server_cpu(samples[:1], 1.0) == {}                 # one sample is no mean
    stages = [{"clients": 100, "throughput": 90_000.0}, {"clients": 250, "throughput": 100_000.0, **cpu},
              {"clients": 500, "throughput": 80_000.0}]
    assert A.peak_text(stages) == ("100,000 req/s at 250 clients (server CPU 0.40 of 0.50 cores allowed, "
                                   "4.0 µs/request)")
    assert A.peak_text(stages[:1]) == "90,000 req/s at 100 clients" and A.peak_text([]) is None


def test_peak_adds_the_kernels_softirq_work_outside_the_container():
    """Packet work the kernel hands to ksoftirqd runs outside the container's cgroup: not
    in the server's CPU, not capped by its quota. The stage carries it and the CPU per
    request both ways; a report without it (an older one), or with next to none, reads as
    before."""
    samples = [{"t": 10 + i / 10, "cpu_used": 0.4, "cpu_allowed": 0.5, "ksoftirqd": k}
               for i, k in enumerate([0.2, 0.4] * 5)]
    cpu = A.server_cpu(samples, 100_000.0)
    assert cpu == {"server_cpu": 0.4, "server_cpu_allowed": 0.5, "cpu_us_per_request": 4.0,
                   "kernel_outside_cores": 0.3, "cpu_us_per_request_with_kernel": 7.0}
    assert A.peak_text([{"clients": 250, "throughput": 100_000.0, **cpu}]) == (
        "100,000 req/s at 250 clients (server CPU 0.40 of 0.50 cores allowed, 4.0 µs/request; "
        "plus 0.30 cores of ksoftirqd outside the container's cgroup (host-wide), 7.0 µs/request with it)")
    samples[3]["ksoftirqd"] = None   # the sample before it had no previous reading: skipped
    assert A.server_cpu(samples, 100_000.0)["kernel_outside_cores"] == 0.289
    idle = {**cpu, "kernel_outside_cores": 0.004, "cpu_us_per_request_with_kernel": 4.04}
    assert A.peak_text([{"clients": 250, "throughput": 100_000.0, **idle}]) == (   # none to speak of: not named
        "100,000 req/s at 250 clients (server CPU 0.40 of 0.50 cores allowed, 4.0 µs/request)")
