"""conntrack, the classic container limit, in a network namespace this test owns.

nf_conntrack_max is one value for the host, read-only outside the initial namespace
(Linux >= 6.3), while the count is per namespace. So instead of a small max, the test
fills its own namespace's table up to the host's max with assured entries (about 4 s and
~80 MiB of kernel memory for 262,144; skipped past 400,000), leaving room for a few
hundred connections, with a NAT table in the namespace so that its connections are
tracked. The doctor must say that conntrack is active there and why; the capacity
ramp must name conntrack as the first bottleneck with its drop counter as evidence.
Deleting the namespace frees every entry.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from _env import SRC, TESTS

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
NS = f"fc1k-figures-ct-{os.getpid()}"
ROOM = 400                       # connections the full table still lets in
MAX_FILL = 400_000


def _ns(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def netns():
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        pytest.skip("needs root, nft and ip")
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
            host_max = int(f.read())
    except OSError:
        pytest.skip("the nf_conntrack module is not loaded")
    if host_max > MAX_FILL:
        pytest.skip(f"nf_conntrack_max is {host_max:,}: filling it would take more than this test's bound")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        # what a container engine publishing ports leaves behind: a NAT rule (for other
        # addresses: its mere presence makes the kernel track every connection here)
        _ns("nft", "add table ip fc1k_figures_nat; "
            "add chain ip fc1k_figures_nat post { type nat hook postrouting priority srcnat; }; "
            "add rule ip fc1k_figures_nat post ip saddr 10.88.0.0/16 masquerade")
        yield host_max
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def test_doctor_reports_conntrack_active_count_max_and_the_fix(netns):
    r = _ns(sys.executable, "-m", "fastc1k.doctor", "--json")
    ct = json.loads(r.stdout)["conntrack"]
    assert ct["active"] is True and "masquerade" in ct["why"], ct
    assert ct["max"] == netns and ct["count"] >= 0
    assert "nf_conntrack_max" in ct["fix"] and "notrack" in ct["fix"]
    text = _ns(sys.executable, "-m", "fastc1k.doctor").stdout
    assert "conntrack" in text and "active" in text


def test_a_full_table_is_named_as_the_first_bottleneck(netns, tmp_path):
    want = netns - ROOM
    r = _ns(sys.executable, os.path.join(TESTS, "_conntrack.py"), "fill", str(want))
    sent, failed = map(int, r.stdout.split())
    assert sent == want and failed == 0, r.stdout
    r = _ns(sys.executable, "-m", "fastc1k.capacity", "--serve", "--host-netns", "--quiet", "--out", str(tmp_path),
            "--phases", "ramp", "--ramp-clients", "1200", "--ramp-steps", "6", "--ramp-duration", "6",
            "--ramp-rate", "600", "--connect-timeout", "1", "--no-charts", timeout=90)
    with open(tmp_path / "capacity-report.json") as f:
        report = json.load(f)
    maxes = {s.get("conntrack_max") for s in report["samples"]} - {None}
    if maxes != {netns}:   # the host-wide value is shared: another run may raise it meanwhile
        pytest.skip(f"nf_conntrack_max changed during the run ({netns:,} -> {sorted(maxes)}): not this test's table")
    b = report["phases"]["ramp"]["bottleneck"]
    assert b is not None and b["resource"] == "conntrack", [
        (s["t"], s.get("clients"), s.get("conntrack_count"), s.get("conntrack_drop")) for s in report["samples"][::5]]
    assert f"of nf_conntrack_max {netns:,}" in b["evidence"], b
    assert b["clients"] <= 2 * ROOM, b
    # and the table did refuse: the kernel's drop counter moved, the clients timed out connecting
    drops = max(s.get("conntrack_drop", 0) for s in report["samples"])
    assert drops > 0, [s.get("conntrack_count") for s in report["samples"][-5:]]
    assert report["phases"]["ramp"]["load_summary"]["errors"].get("connect_timeout", 0) > 0
    assert "CONNTRACK" in r.stdout


def test_the_probe_counts_connections_stuck_in_syn_sent_as_failed(netns, tmp_path):
    """Behind the full table SYNs vanish and the kernel retries them for two minutes: the
    probe gives each its connect timeout, counts it failed and names conntrack."""
    # room for the probe's own check, set exactly: the ramp test's entries would expire meanwhile
    r = _ns(sys.executable, os.path.join(TESTS, "_conntrack.py"), "room", "300")
    assert abs(int(r.stdout) - 300) <= 20, r.stdout
    out = tmp_path / "probe.json"
    r = _ns(sys.executable, "-m", "fastc1k.capacity.probe", "--connections", "1500", "--connect-timeout", "2",
            "--hold", "1", "--conntrack", "leave", "--quiet", "--json", str(out), timeout=60)
    with open(out) as f:
        res = json.load(f)
    assert res["errors"].get("ETIMEDOUT", 0) >= 1000 and res["failed_open"] >= 1000 and res["held"] <= ROOM, res
    assert res["opened"] + res["failed_open"] == 1500 and res["open_seconds"] < 20, res
    assert res["stopped_by"].startswith("conntrack:"), res["stopped_by"]
    assert "nf_conntrack_max" in res["next_limit"], res["next_limit"]
    assert res["conntrack"].startswith("conntrack: left as it is (--conntrack leave; tracking active: "), res["conntrack"]
