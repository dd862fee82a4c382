"""`python -m fastc1k.doctor`: the readers on fake /proc and /sys trees, the arithmetic, the CLI.

The readers take a root path, so each test writes the few files it needs under tmp_path
and checks what the doctor concludes; the last tests run it on this host and compare its
figures with what the kernel says here.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fastc1k import doctor

SRC = str(Path(doctor.__file__).resolve().parents[1])
GiB = 1 << 30


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def fake_host(root: Path, *, nofile=(20000, 20000), ports=(32768, 60999), file_max=2466183,
              file_nr=484, nr_open=1048576, somaxconn=4096, syn_backlog=2048, tw_reuse=2, watches=4853906,
              mem_total_kb=24684096, mem_avail_kb=24312004, cpus="0-1",
              cap_eff="000001fffeffffff", cgroup="0::/\n") -> Path:
    """A /proc + /sys tree shaped like this machine's (the defaults are its values)."""
    soft, hard = ("unlimited" if v == -1 else str(v) for v in nofile)
    write(root, "proc/self/limits",
          "Limit                     Soft Limit           Hard Limit           Units     \n"
          "Max cpu time              unlimited            unlimited            seconds   \n"
          f"Max open files            {soft:<21}{hard:<21}files     \n")
    write(root, "proc/self/status", f"Name:\tpython\nCapEff:\t{cap_eff}\nCpus_allowed_list:\t{cpus}\n")
    write(root, "proc/self/cgroup", cgroup)
    write(root, "proc/meminfo", f"MemTotal:       {mem_total_kb} kB\nMemFree:  1 kB\n"
                                f"MemAvailable:   {mem_avail_kb} kB\n")
    sysctls = {
        "fs/file-max": file_max, "fs/file-nr": f"{file_nr}\t0\t{file_max}", "fs/nr_open": nr_open,
        "net/core/somaxconn": somaxconn, "net/ipv4/tcp_max_syn_backlog": syn_backlog,
        "net/ipv4/ip_local_port_range": f"{ports[0]}\t{ports[1]}", "net/ipv4/tcp_tw_reuse": tw_reuse,
        "net/ipv4/tcp_fin_timeout": 60, "net/core/netdev_max_backlog": 1000,
        "net/ipv4/tcp_syncookies": 1, "fs/epoll/max_user_watches": watches,
    }
    for key, value in sysctls.items():
        write(root, f"proc/sys/{key}", f"{value}\n")
    return root


# --- readers -------------------------------------------------------------------------------

def test_reads_this_machines_shape(tmp_path):
    f = doctor.read_facts(fake_host(tmp_path))
    assert (f.nofile_soft, f.nofile_hard) == (20000, 20000)
    assert f.port_range == (32768, 60999) and f.ephemeral_ports == 28232
    assert (f.file_max, f.files_in_use, f.nr_open) == (2466183, 484, 1048576)
    assert (f.somaxconn, f.tcp_max_syn_backlog, f.tcp_tw_reuse) == (4096, 2048, 2)
    assert f.mem_available == 24312004 * 1024 and f.mem_total == 24684096 * 1024
    assert f.cores == 2 and f.can_raise_hard is False  # CAP_SYS_RESOURCE (bit 24) is off here
    assert f.cgroup_version is None and f.cgroup_cpu is None and f.cgroup_mem_limit is None


def test_missing_files_are_none_not_a_crash(tmp_path):
    write(tmp_path, "proc/meminfo", "MemTotal: 1000 kB\n")
    f = doctor.read_facts(tmp_path)
    assert f.somaxconn is None and f.port_range is None and f.mem_available is None
    out = doctor.render(doctor.diagnose(f))  # still a report, saying what it could not read
    assert "unknown" in out


@pytest.mark.parametrize("text,expect", [
    ("0-1", 2), ("0", 1), ("0-3,8-11", 8), ("0,2,4", 3), ("", None), ("x-y", None)])
def test_cpu_list(text, expect):
    assert doctor.parse_cpu_list(text) == expect


def test_unlimited_hard_fd_limit_is_bounded_by_nr_open(tmp_path):
    f = doctor.read_facts(fake_host(tmp_path, nofile=(1024, -1), nr_open=65536))
    assert f.nofile_soft == 1024 and f.nofile_hard == 65536


def test_cgroup_v2_quota_and_memory_limit(tmp_path):
    root = fake_host(tmp_path, cgroup="0::/box/inner\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n")
    write(root, "sys/fs/cgroup/box/cpu.max", "150000 100000\n")
    write(root, "sys/fs/cgroup/box/memory.max", str(4 * GiB) + "\n")
    write(root, "sys/fs/cgroup/box/inner/cpu.max", "max 100000\n")
    write(root, "sys/fs/cgroup/box/inner/memory.max", str(1 * GiB) + "\n")  # the tighter one wins
    write(root, "sys/fs/cgroup/box/inner/memory.current", str(GiB // 4) + "\n")
    f = doctor.read_facts(root)
    assert f.cgroup_version == 2
    assert f.cgroup_cpu == pytest.approx(1.5)
    assert f.cgroup_mem_limit == GiB and f.cgroup_mem_usage == GiB // 4


def test_cgroup_v2_namespaced_root_path(tmp_path):
    # inside a container with its own cgroup namespace: /proc/self/cgroup says "/"
    root = fake_host(tmp_path, cgroup="0::/\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(root, "sys/fs/cgroup/cpu.max", "50000 100000\n")
    write(root, "sys/fs/cgroup/memory.max", "268435456\n")
    f = doctor.read_facts(root)
    assert f.cgroup_cpu == pytest.approx(0.5) and f.cgroup_mem_limit == 256 << 20


def test_cgroup_v1_hybrid_like_this_machine(tmp_path):
    root = fake_host(tmp_path, cgroup="4:memory:/jobs/a\n2:cpu,cpuacct:/jobs/a\n0::/\n")
    write(root, "sys/fs/cgroup/unified/cgroup.controllers", "")  # v2 mounted, no controllers
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(root, "sys/fs/cgroup/memory/jobs/a/memory.limit_in_bytes", str(2 * GiB) + "\n")
    write(root, "sys/fs/cgroup/memory/jobs/a/memory.usage_in_bytes", str(GiB) + "\n")
    write(root, "sys/fs/cgroup/cpu,cpuacct/jobs/a/cpu.cfs_quota_us", "50000\n")
    write(root, "sys/fs/cgroup/cpu,cpuacct/jobs/a/cpu.cfs_period_us", "100000\n")
    f = doctor.read_facts(root)
    assert f.cgroup_version == 1
    assert f.cgroup_mem_limit == 2 * GiB and f.cgroup_mem_usage == GiB
    assert f.cgroup_cpu == pytest.approx(0.5)


def test_cgroup_v1_unlimited_is_none(tmp_path):
    root = fake_host(tmp_path, cgroup="4:memory:/\n1:cpu:/\n")
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    write(root, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    f = doctor.read_facts(root)
    assert f.cgroup_version == 1 and f.cgroup_mem_limit is None and f.cgroup_cpu is None


def test_garbage_in_proc_files_does_not_crash(tmp_path):
    root = fake_host(tmp_path)
    write(root, "proc/sys/net/ipv4/ip_local_port_range", "banana\n")
    write(root, "proc/sys/net/core/somaxconn", "\x00\xff\n")
    write(root, "proc/self/limits", "Max open files            1024\n")  # one field short
    write(root, "proc/self/cgroup", "::::\n4:memory\n")
    f = doctor.read_facts(root)
    assert f.port_range is None and f.somaxconn is None and f.nofile_hard is None
    doctor.render(doctor.diagnose(f))


# --- arithmetic ----------------------------------------------------------------------------

def test_this_machine_server_is_capped_by_the_fd_limit(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path)), target=100_000)
    s = d["server"]
    assert s["per_process"] == 20000 - doctor.FD_RESERVE
    assert s["per_process_capped_by"] == "fd limit"
    # 5 x 19,936 < 100,000: six workers, each allowed its share
    assert s["workers_needed"] == 6
    assert "fd limit 20,000 per process: --workers 6 --max-connections 16667 holds 100,000" in s["fix"]
    # the whole host, with as many workers as it takes: fs.file-max minus what is open
    assert s["host_max"] == 2466183 - 484 and s["host_capped_by"] == "fs.file-max"


def test_this_machine_load_generator_is_capped_by_the_port_range(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path)), target=100_000)
    g = d["load"]
    assert g["per_source_ip"] == 28232 and g["capped_by"] == "ephemeral ports"
    assert g["one_process_one_address"] == 20000 - doctor.FD_RESERVE and g["one_process_capped_by"] == "fd limit"
    assert g["source_ips_needed"] == 4 and g["processes_needed"] == 6
    assert ("28,232 ephemeral ports per source address: --source-ips 127.0.0.1-127.0.0.4 "
            "for 100,000") in g["fix"]
    assert "--processes 6" in g["fix"]


def test_loopback_pair_memory(tmp_path):
    # 1 GiB available, ~9 KB of kernel memory per loopback pair -> ~116k pairs
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path, mem_avail_kb=1 << 20)), target=1_000_000)
    lo = d["loopback"]
    assert lo["memory_pairs"] == GiB // doctor.KERNEL_BYTES_PER_LOOPBACK_PAIR
    assert lo["max_pairs"] == lo["memory_pairs"] and lo["capped_by"] == "memory"
    assert lo["target_fits"] is False and "does not fit: memory is the wall" in doctor.render(d)
    # ~1 GiB / 4.5 KB per server socket is below 1M too: no --workers fix that cannot work
    assert d["server"]["target_fits"] is False
    assert "fix:" not in doctor.render(d)


def test_cgroup_memory_limit_caps_below_mem_available(tmp_path):
    root = fake_host(tmp_path, cgroup="0::/\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "memory\n")
    write(root, "sys/fs/cgroup/memory.max", str(GiB) + "\n")
    write(root, "sys/fs/cgroup/memory.current", str(GiB // 2) + "\n")
    d = doctor.diagnose(doctor.read_facts(root), target=100_000)
    assert d["loopback"]["capped_by"] == "cgroup memory limit"
    assert d["loopback"]["memory_pairs"] == (GiB // 2) // doctor.KERNEL_BYTES_PER_LOOPBACK_PAIR


def test_soft_below_hard_says_raise_soft(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path, nofile=(1024, 65536))), target=10_000)
    assert d["server"]["per_process"] == 65536 - doctor.FD_RESERVE
    assert any("ulimit -n 65536" in n for n in d["notes"])


def test_with_cap_sys_resource_the_fix_raises_the_hard_limit(tmp_path):
    root = fake_host(tmp_path, cap_eff="000001ffffffffff")
    d = doctor.diagnose(doctor.read_facts(root), target=100_000)
    assert any("1048576" in n and "nofile" in n for n in d["notes"])


def test_enough_everywhere_needs_no_fix(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path, nofile=(200000, 200000))), target=50_000)
    assert doctor.diagnose(doctor.read_facts(tmp_path), target=9000)["server"]["fix"] is None
    # one worker's fds suffice; only the per-worker admission default is below the target
    assert d["server"]["workers_needed"] == 1 and "--workers" not in d["server"]["fix"]
    assert "--max-connections 50000" in d["server"]["fix"]
    assert d["load"]["processes_needed"] == 1 and "--processes" not in d["load"]["fix"]
    assert d["load"]["source_ips_needed"] == 2  # ports still cap: 28,232 per source address


def test_tw_reuse_off_caps_the_reconnect_rate(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path, tw_reuse=0)))
    assert any("TIME_WAIT" in n and "470" in n for n in d["notes"])  # 28,232 ports / 60 s


def test_epoll_watches_read_and_cap_the_host(tmp_path):
    """fs.epoll.max_user_watches: one watch per connection, per user, so it caps a server
    (and both ends of a loopback test) and the report says how to raise it."""
    f = doctor.read_facts(fake_host(tmp_path, watches=50_000))
    assert f.epoll_watches == 50_000
    d = doctor.diagnose(f, target=100_000)
    assert d["server"]["host_max"] == 50_000 and d["server"]["host_capped_by"] == "fs.epoll.max_user_watches"
    assert d["loopback"]["max_pairs"] == 25_000
    assert any("max_user_watches 50,000" in n and "sysctl -w fs.epoll.max_user_watches=" in n for n in d["notes"])
    assert "fs.epoll.max_user_watches" in doctor.render(d)
    roomy = doctor.diagnose(doctor.read_facts(fake_host(tmp_path / "b")), target=100_000)
    assert not any("max_user_watches" in n for n in roomy["notes"])


def test_small_somaxconn_is_reported(tmp_path):
    d = doctor.diagnose(doctor.read_facts(fake_host(tmp_path, somaxconn=128)))
    assert any("somaxconn" in n and "128" in n for n in d["notes"])


@pytest.mark.parametrize("text,n", [("100k", 100_000), ("1M", 1_000_000), ("2500", 2500), ("1.5M", 1_500_000)])
def test_parse_count(text, n):
    assert doctor.parse_count(text) == n


@pytest.mark.parametrize("bad", ["", "0", "-5", "lots", "1e400"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        doctor.parse_count(bad)


# --- CLI -----------------------------------------------------------------------------------

def run_doctor(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fastc1k.doctor", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def test_cli_on_a_fake_root_text_and_json(tmp_path):
    root = fake_host(tmp_path)
    p = run_doctor("--root", str(root), "--target", "100k")
    assert p.returncode == 0, p.stderr
    assert "fd limit 20,000 per process" in p.stdout
    assert "28,232 ephemeral ports per source address" in p.stdout
    p = run_doctor("--root", str(root), "--json")
    data = json.loads(p.stdout)
    assert data["facts"]["ephemeral_ports"] == 28232 and data["server"]["per_process_capped_by"] == "fd limit"


def test_cli_bad_flag_is_a_one_line_error(tmp_path):
    for argv, msg in ((["--target", "lots"], "--target: a connection count"), (["--bogus"], "unrecognized"),
                      (["--root", str(tmp_path)], "--root: no proc/")):
        p = run_doctor(*argv)
        assert p.returncode == 2 and p.stderr.startswith("fastc1k.doctor: error:") and msg in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1, p.stderr


def test_on_this_host_names_its_real_limits():
    """On this machine: the 20,000 fd limit and the 28,232-port range; elsewhere: whatever they are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    p = run_doctor()
    assert p.returncode == 0, p.stderr
    if hard != resource.RLIM_INFINITY:
        assert f"fd limit {hard:,} per process" in p.stdout
    # (the fix line "N ephemeral ports per source address: --source-ips" gives way to a host-wide
    # wall when one caps the target: nf_conntrack_max, as other runs on this host fill the table)
    assert f"{hi - lo + 1:,} connections per source address, capped by the ephemeral ports {lo}-{hi}" in p.stdout
    data = json.loads(run_doctor("--json").stdout)
    assert data["facts"]["ephemeral_ports"] == hi - lo + 1
    assert data["facts"]["nofile_soft"] == soft
