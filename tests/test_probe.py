"""The connection-count probe (fastc1k.capacity.probe) at CI size: 10,000 keep-alive
connections held, each answered when opened and again after the hold, no errors.
The full-size run (one million) is documented in the README ("Hardening")."""
from __future__ import annotations

import os

import pytest

from fastc1k.capacity.probe import ProbeSpec, run_probe, summary
from fastc1k.host.net import parse_source_ips


@pytest.mark.timeout(60)
def test_probe_holds_10k(engine):
    spec = ProbeSpec(connections=10_000, workers=2, clients=2, source_ips=parse_source_ips("127.0.0.2-127.0.0.5"),
                     engine=engine, hold=1.0, open_timeout=25.0, verify_timeout=15.0, quiet=True)
    res = run_probe(spec)
    text = summary(res)
    assert res.opened == 10_000, text
    assert res.held == 10_000, text
    assert (res.failed_open, res.lost_during_hold, res.failed_verify, res.errors) == (0, 0, 0, {}), text
    assert res.stopped_by == "target reached", text
    # each pair costs the kernel a few KiB (two sockets); sanity bounds, not a benchmark
    assert 1_000 < res.kernel_bytes_per_conn < 64_000, text
    assert res.server_rss_after > 0 and res.workers == 2, text


def test_parse_ips():
    assert parse_source_ips("127.0.0.2-127.0.0.4,127.0.0.9") == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
    with pytest.raises(ValueError):
        parse_source_ips("127.0.0.9-127.0.0.2")


def test_capacity_cli_hands_the_probe_flag_to_the_probe():
    """`python -m fastc1k.capacity --max-connections-probe` is the probe (its --plan: no socket opened)."""
    import json
    import subprocess
    import sys

    from _env import SRC
    p = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--max-connections-probe", "--connections", "1000",
                        "--plan"], capture_output=True, text=True, timeout=60, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["connections"] == 1000 and plan["limits"]["nofile_hard"] > 0


@pytest.mark.root
@pytest.mark.timeout(60)
def test_probe_raises_a_tracked_tables_max_for_the_run_and_restores_it(monkeypatch):
    """--conntrack raise: with conntrack tracking the namespace and its table nearly full,
    the probe raises nf_conntrack_max to hold every connection, restores it after, and says
    so; with tracking not active it leaves everything alone and says why."""
    from fastc1k.capacity.probe import run as probe_run
    from fastc1k.host import sysctl
    before = sysctl.read_int("net.netfilter.nf_conntrack_max")
    if before is None:
        pytest.skip("no conntrack module loaded")
    real = probe_run.host_limits

    def nearly_full(active, why):
        def lim():
            return {**real(), "conntrack_active": active, "conntrack_why": why,
                    "nf_conntrack_max": before, "nf_conntrack_count": before - 100}
        return lim
    spec = ProbeSpec(connections=200, workers=1, clients=1, source_ips=parse_source_ips("127.0.0.2"), hold=0.2,
                     quiet=True, conntrack="raise")
    monkeypatch.setattr(probe_run, "host_limits", nearly_full(True, "a rule here needs it: masquerade"))
    res = run_probe(spec)
    assert res.held == 200, summary(res)
    need = before - 100 + 200 + probe_run.CONNTRACK_SPARE
    if "someone set it" in res.conntrack:
        pytest.skip(res.conntrack)      # another run changed the max meanwhile
    assert res.conntrack == (f"conntrack: nf_conntrack_max raised {before} -> {need} for the run, then restored "
                             "(tracking was active: a rule here needs it: masquerade)"), res.conntrack
    assert sysctl.read_int("net.netfilter.nf_conntrack_max") == before
    assert f"conntrack          {res.conntrack}" in summary(res)
    monkeypatch.setattr(probe_run, "host_limits", nearly_full(False, "no NAT or ct rule in this namespace"))
    res = run_probe(spec)
    assert res.conntrack == "conntrack: nothing done, not active here (no NAT or ct rule in this namespace)"
    assert sysctl.read_int("net.netfilter.nf_conntrack_max") == before


@pytest.mark.root
@pytest.mark.timeout(60)
def test_probe_exempts_its_port_from_tracking_and_removes_the_rule(monkeypatch):
    """By default, where tracking is active, the server's port is exempted (notrack) for the
    run: its connections make no entries, conntrack is not named as a limit, and the table
    of rules is gone afterwards."""
    import shutil
    import subprocess
    from fastc1k.capacity.probe import run as probe_run
    from fastc1k.host import conntrack
    if conntrack.read() is None or not shutil.which("nft") or not shutil.which("conntrack"):
        pytest.skip("needs the conntrack module, nft and conntrack(8)")
    real = probe_run.host_limits
    monkeypatch.setattr(probe_run, "host_limits", lambda: {**real(), "conntrack_active": True,
                                                           "conntrack_why": "a rule here needs it: masquerade"})
    seen = {}
    orig = probe_run.snapshot

    def snapshot():   # taken after the clients opened their connections: count the port's entries then
        if "port" in seen:
            # established ones: the server's readiness check, before the exemption, is closed by now
            seen["entries"] = subprocess.run(["conntrack", "-L", "-p", "tcp", "--dport", str(seen["port"]), "--state",
                                              "ESTABLISHED"], capture_output=True, text=True).stdout.count("dport=")
        return orig()
    monkeypatch.setattr(probe_run, "snapshot", snapshot)
    real_np = conntrack.notrack_port

    def notrack(port):
        seen["port"] = port
        return real_np(port)
    monkeypatch.setattr(probe_run.conntrack, "notrack_port", notrack)
    res = run_probe(ProbeSpec(connections=200, workers=1, clients=1, source_ips=parse_source_ips("127.0.0.2"),
                              hold=0.2, quiet=True))
    assert res.held == 200, summary(res)
    assert res.conntrack.startswith(f"conntrack: loopback port {seen['port']} exempted from tracking for the run "
                                    f"(nft table inet fastc1k_notrack_{os.getpid()}, notrack), then removed"), \
        res.conntrack
    assert seen["entries"] == 0
    assert "nf_conntrack" not in res.next_limit
    assert f"fastc1k_notrack_{os.getpid()}" not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                                                  text=True).stdout


@pytest.mark.timeout(60)
def test_a_verify_cut_by_its_timeout_counts_the_unanswered_as_failed():
    """Every opened connection ends as held, lost or failed: the ones a verify timeout cut
    off are failures, read after the clients counted them (they read 0 before)."""
    spec = ProbeSpec(connections=4000, workers=1, clients=2, source_ips=parse_source_ips("127.0.0.2-127.0.0.3"),
                     hold=0.2, verify_timeout=0.001, quiet=True)
    res = run_probe(spec)
    assert res.opened == 4000, summary(res)
    assert res.held < 4000 and res.held + res.lost_during_hold + res.failed_verify == 4000, summary(res)
