"""The host layer (fastc1k.host): cgroups, namespaces and veths, sysctls, /proc readings.

The cgroup and namespace tests need root (they skip otherwise); everything they make is
named fc1k-layers-<pid>-... and removed, which the tests check too.
"""
from __future__ import annotations

import ast
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastc1k.host import cgroup, net, proc, sysctl

from _env import SRC  # the package these tests imported (installed under CI), not the tree

ROOT = os.geteuid() == 0
PREFIX = f"fc1k-layers-{os.getpid()}"
REPO = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not ROOT, reason="cgroups and namespaces need root")
needs_ip = pytest.mark.skipif(not (ROOT and net.ip_available()), reason="namespaces need root and iproute2")


def _ticker(preexec=None) -> subprocess.Popen:
    """A child that prints a line every 10 ms."""
    return subprocess.Popen([sys.executable, "-c", "import time\nwhile True: print(1, flush=True); time.sleep(0.01)"],
                            stdout=subprocess.PIPE, preexec_fn=preexec)


def _lines_within(p: subprocess.Popen, seconds: float) -> int:
    """Lines the ticker printed within `seconds` (after draining what was there)."""
    fd = p.stdout.fileno()
    os.set_blocking(fd, False)
    n, end = 0, time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            n += (os.read(fd, 65536) or b"").count(b"\n")
    return n


@needs_root
def test_cgroup_limits_join_freeze_read_and_remove():
    cg = cgroup.Cgroup.create(f"{PREFIX}-cg", cpus=0.5, memory=64 << 20, freezer=True)
    p = _ticker(cg.preexec())
    try:
        assert cg.dirs and all(os.path.isdir(d) for d in cg.dirs)
        for f in cg.procs_files:   # the child is in every hierarchy
            assert p.pid in {int(x) for x in open(f).read().split()}
        if cg.version == "v1":
            cpu = next(d for d in cg.dirs if "/cpu/" in d)
            assert open(f"{cpu}/cpu.cfs_quota_us").read().strip() == "5000"
        time.sleep(0.2)
        assert cg.memory_used() > 0 and cg.throttled() is not None and cg.oom_kills() == 0
        assert cg.can_freeze
        _lines_within(p, 0.2)
        cg.freeze(True)
        time.sleep(0.1)
        _lines_within(p, 0.05)   # what was written before the freeze took hold
        assert _lines_within(p, 0.3) == 0
        cg.freeze(False)
        assert _lines_within(p, 0.3) > 0
        cg.set_cpu(None)     # a quota lifted and set again in place
        cg.set_cpu(0.25)
    finally:
        p.kill()
        p.wait()
        dirs = list(cg.dirs)
        assert cg.remove() == []
    assert not any(os.path.exists(d) for d in dirs)


@needs_root
def test_cgroup_wrap_joins_before_exec():
    cg = cgroup.Cgroup.create(f"{PREFIX}-wrap", cpus=1.0)
    try:
        out = subprocess.run(cg.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True, check=True)
        assert f"/{PREFIX}-wrap" in out.stdout
    finally:
        assert cg.remove() == []


def test_cgroup_refused_leaves_nothing(tmp_path):
    """A hierarchy that does not permit the group: OSError, nothing left behind."""
    (tmp_path / "cpu").mkdir()
    with pytest.raises(OSError):
        cgroup.Cgroup.create(f"{PREFIX}-x", cpus=0.5, memory=1 << 30, root=str(tmp_path), under_own=False)
    assert list((tmp_path / "cpu").iterdir()) == []


@needs_ip
def test_named_namespace_veth_sysctls_and_removal():
    ns = net.NetNs(f"{PREFIX}-ns")
    block = net.free_block("10.231", os.getpid())
    veth = net.Veth(f"fc{os.getpid() % 100000}h", f"fc{os.getpid() % 100000}n",
                    f"10.231.{block}.1", f"10.231.{block}.2")
    try:
        ns.add()
        veth.add(ns)
        assert ns.set_sysctls({"net.core.somaxconn": "517"}) == []
        got = subprocess.run(["ip", "netns", "exec", ns.name, "sysctl", "-n", "net.core.somaxconn"],
                             capture_output=True, text=True).stdout.strip()
        assert got == "517" and sysctl.read("net.core.somaxconn") != "517"
        assert net.in_netns(ns.name, lambda: sysctl.read("net.core.somaxconn")) == "517"
        assert ns.name in net.netns_names() and veth.ns_ip in net.ip("-4", "-o", "addr", netns=ns.name)
        # a child joined before exec listens on the namespace's end; the host reaches it over the veth
        srv = subprocess.Popen([sys.executable, "-c", "import socket,sys\ns=socket.create_server(('%s', 0))\n"
                                "print(s.getsockname()[1], flush=True)\nc,_=s.accept()\nc.sendall(b'hi')" % veth.ns_ip],
                               stdout=subprocess.PIPE, text=True, preexec_fn=ns.setns_preexec())
        try:
            port = int(srv.stdout.readline())
            with socket.create_connection((veth.ns_ip, port), timeout=3) as c:
                assert c.recv(2) == b"hi"
        finally:
            srv.kill()
            srv.wait()
    finally:
        veth.delete()
        ns.delete()
    assert ns.name not in net.ip("netns", "list")
    assert veth.host_if not in net.ip("-o", "link")


@needs_ip
def test_enter_netns_moves_the_process_and_sets_its_sysctls():
    code = ("from fastc1k.host import net, sysctl\n"
            "ok, notes = net.enter_netns({'net.core.somaxconn': '333'})\n"
            "print(ok, sysctl.read('net.core.somaxconn'), sysctl.read('net.ipv4.ip_local_port_range'), notes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC}, check=True).stdout.split(None, 4)
    assert out[:2] == ["True", "333"] and sysctl.read("net.core.somaxconn") != "333"
    assert " ".join(out[2:4]) == sysctl.read("net.ipv4.ip_local_port_range")   # the host's copied in


def test_sysctl_and_proc_readers_from_a_fake_root(tmp_path):
    (tmp_path / "proc/sys/net/ipv4").mkdir(parents=True)
    (tmp_path / "proc/sys/net/ipv4/ip_local_port_range").write_text("1024\t65000\n")
    (tmp_path / "proc/sys/net/ipv4/tcp_mem").write_text("1 2 3\n")
    (tmp_path / "proc/self").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1000 kB\nHugePages_Total: 4\n")
    (tmp_path / "proc/self/limits").write_text("Max open files            1024                 4096                 files\n")
    assert sysctl.read("net.ipv4.ip_local_port_range", tmp_path) == "1024 65000"
    assert sysctl.port_range(tmp_path) == (1024, 65000) and sysctl.read_int("net.ipv4.tcp_mem", tmp_path) == 1
    assert sysctl.read("net.core.somaxconn", tmp_path) is None and sysctl.port_range(tmp_path / "x") is None
    assert proc.meminfo(tmp_path) == {"MemTotal": 1024000, "HugePages_Total": 4}
    assert proc.nofile_limits(tmp_path) == (1024, 4096)


def test_process_and_kernel_readings():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.2)
        assert proc.tree(os.getpid())[0] == os.getpid() and child.pid in proc.tree(os.getpid())
        assert proc.cpu_seconds([os.getpid()]) > 0 and proc.rss([os.getpid(), child.pid]) > proc.rss([child.pid]) > 0
        run, wait = proc.schedstat(os.getpid())
        assert run > 0 and wait >= 0
        own = proc.task_schedstat()   # the main thread only: within the process's sum
        assert own and 0 < own[0] <= run + 10**9 and own[1] >= 0
        assert proc.num_fds([child.pid]) == 3   # stdin, stdout, stderr (Popen closes the rest)
        assert proc.num_fds([os.getpid(), child.pid]) == proc.num_fds([os.getpid()]) + 3
    finally:
        child.kill()
        child.wait()
    assert proc.tree(child.pid) == [] and proc.rss([child.pid]) == 0 and proc.num_fds([child.pid]) == 0
    assert proc.task_schedstat("0") is None
    assert set(proc.NETSTAT_KEYS) <= set(proc.netstat()) and "inuse" in proc.sockstat()
    assert 0 < proc.mem_used_fraction() < 1 and proc.meminfo()["MemTotal"] > 0
    busy, irq = proc.host_busy_seconds()
    assert busy > irq >= 0 and "CPUs" in proc.host_info()["summary"]
    ks = proc.ksoftirqd_pids()   # one kernel thread a CPU, found by name
    assert ks and all(open(f"/proc/{p}/comm").read().startswith("ksoftirqd/") for p in ks)
    assert proc.cpu_seconds(ks) >= 0


def test_source_address_ranges():
    p = net.parse_source_ips
    assert p("127.0.0.2-127.0.0.4,127.0.0.9") == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
    assert p(["127.0.0.1", " 127.0.0.2"]) == ["127.0.0.1", "127.0.0.2"] and p(None) == [] and p("") == []
    assert len(p("127.0.0.0-127.0.15.255")) == 4096
    for bad in ("127.0.0.9-127.0.0.2", "127.0.0.x", "127.0.0.1-", "127.0.0.0-127.0.16.0", "::1"):
        with pytest.raises(ValueError):
            p(bad)


def _machine_touches(tree: ast.AST) -> list[tuple[int, str]]:
    """Path literals under /sys/fs/cgroup or /proc (f-strings too), argv lists starting
    with "ip", calls of unshare/setns, CLONE_NEWNET."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith(("/sys/fs/cgroup", "/proc/")):
            out.append((node.lineno, node.value))
        elif isinstance(node, (ast.List, ast.Tuple)) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value == "ip":
            out.append((node.lineno, "ip argv"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == "ip":
            out.append((node.lineno, "ip call"))
        elif isinstance(node, ast.Attribute) and node.attr in ("unshare", "setns"):
            out.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id == "CLONE_NEWNET":
            out.append((node.lineno, node.id))
    return out


# Not yet moved onto the host layer, with the reason (empty when done).
PENDING: dict[str, str] = {
    "src/fastc1k/supervisor.py": "the server library's own workers set their oom_score_adj (no host layer there)",
    "bench/wsgi_bench.py": "reads /proc/loadavg (issue 18's bench)",
}


def test_nothing_outside_the_host_layer_touches_cgroups_or_runs_ip():
    """One place owns the machine: no other module of the package or the bench opens a
    path under /sys/fs/cgroup or /proc, runs `ip` or calls unshare/setns."""
    assert _machine_touches(ast.parse('open("/sys/fs/cgroup/x"); run(["ip", "link"]); libc.setns(3, 0)')) and \
        _machine_touches(ast.parse('_run("ip", "netns", "add", name)')) and \
        len(_machine_touches(ast.parse('open("/proc/self/schedstat"); os.listdir(f"/proc/{pid}/fd")'))) == 2
    hits = []
    for path in [*(REPO / "src/fastc1k").rglob("*.py"), *(REPO / "bench").rglob("*.py")]:
        if "host" in path.relative_to(REPO).parts or str(path.relative_to(REPO)) in PENDING:
            continue
        hits += [f"{path.relative_to(REPO)}:{n}: {what}" for n, what in _machine_touches(ast.parse(path.read_text()))]
    assert hits == []
