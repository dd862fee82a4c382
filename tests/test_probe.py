"""The connection-count probe (fastc1k.capacity.probe) at CI size: 10,000 keep-alive
connections held, each answered when opened and again after the hold, no errors.
The full-size run (one million) is documented in the README ("Hardening")."""
from __future__ import annotations

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
