"""The host layer: everything that touches the machine rather than HTTP.

    cgroup   cgroups v1/v2: create, CPU quota, memory limit, freezer, join, usage,
             throttling, OOM kills, remove; the limits a process runs under (doctor)
    net      network namespaces (unshare, named + setns), veth pairs, `ip`, source
             address ranges
    sysctl   read (any root), write here or in a named namespace, the host's TCP settings
    proc     psutil and /proc readings: process trees, CPU, RSS, run-queue wait, meminfo,
             sockstat, TcpExt counters, a listener's queue, host CPU, host facts
    conntrack  whether the kernel tracks this namespace's connections, count/max, drops

capacity (ramp, scale-out, probe), bench and the doctor call it; nothing else writes to
/sys/fs/cgroup or runs `ip`.
"""
# The modules are imported where used (`from fastc1k.host import sysctl`), not here: the
# supervisor reads one sysctl and need not load psutil for it.
__all__ = ["cgroup", "conntrack", "net", "proc", "sysctl"]
