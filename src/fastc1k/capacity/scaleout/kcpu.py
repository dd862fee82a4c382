"""The kernel balancer's CPU: no process to read it from, so it is sampled.

The Service's work (rule evaluation, DNAT, conntrack lookups and confirmations) runs in
softirq context; this kernel is built without IRQ_TIME_ACCOUNTING, so /proc/stat's
softirq column is itself tick-sampled and each softirq tick is also charged to the task
it interrupted. So: `perf record -a -e cpu-clock` samples every CPU at `freq` Hz, and a
sample whose kernel symbol is netfilter code (nf_*, nft_*, the conntrack and NAT
helpers) counts `1/freq` s of netfilter CPU.

Whose? On this shared host every loopback connection of every process is conntracked
too (any NAT rule in the host namespace, e.g. podman's, turns conntrack on there), so
netfilter samples are attributed by the task they landed in. Veth and loopback packets
are processed in softirqs raised and run by the task that sent them (on its way out of
the send), so the node's work on the run's packets lands in the run's own processes: the
load generator (requests) and the replicas (replies). Those samples are the balancer's;
samples in ksoftirqd (softirqs deferred under load, anyone's) are shared out in the
proportion of the attributed ones; the rest are other processes' traffic, reported
beside it. The host does not conntrack the run's client connections (kernel_lb's notrack
table), but its hooks still pass them by: kscale measures that part on a routed load
without the service and takes it off. One sample is 1/freq s: the error is about
sqrt(samples)/freq.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from typing import Any, Callable, Iterable

__all__ = ["NETFILTER", "NetfilterProfile", "PidTracker", "count_samples"]

NETFILTER = re.compile(r"^(__)?(nf_|nft_|nf_ct_|ipv4_conntrack|ipv4_confirm|hash_conntrack|tcp_in_window|"
                       r"ctnetlink|nat_)")
_LINE = re.compile(r"^\s*(.*?)\s+(\d+)/(\d+)\s+(\d+\.\d+):\s+[0-9a-f]+\s+(\S+)")


def count_samples(script: str, windows: dict[str, tuple[float, float]], mine: Iterable[int]
                  ) -> dict[str, dict[str, int]]:
    """`perf script -F comm,pid,tid,time,ip,sym` text -> per window sample counts: all,
    idle, and netfilter split by whose task it landed in (mine: pids of the run;
    softirqd: ksoftirqd; others)."""
    own = set(mine)
    keys = ("all", "idle", "nf_mine", "nf_softirqd", "nf_others")
    out = {name: dict.fromkeys(keys, 0) for name in windows}
    spans = sorted(windows.items(), key=lambda kv: kv[1][0])
    for line in script.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        comm, pid, t, sym = m.group(1), int(m.group(2)), float(m.group(4)), m.group(5)
        for name, (a, b) in spans:
            if not a <= t < b:
                continue
            c = out[name]
            c["all"] += 1
            if pid == 0:
                c["idle"] += 1
            elif NETFILTER.match(sym):
                c["nf_mine" if pid in own else "nf_softirqd" if comm.startswith("ksoftirqd") else "nf_others"] += 1
    return out


class PidTracker:
    """Every pid of the run (this process and its descendants) seen while it runs: the
    load generator's processes come and go with the stages."""

    def __init__(self, interval: float = 0.2, extra: Callable[[], Iterable[int]] | None = None) -> None:
        self.pids: set[int] = {os.getpid()}
        self.interval, self.extra = interval, extra
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="pid-tracker", daemon=True)

    def start(self) -> "PidTracker":
        self._t.start()
        return self

    def _loop(self) -> None:
        import psutil
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.pids.update(p.pid for p in me.children(recursive=True))
                if self.extra:
                    self.pids.update(self.extra())
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> set[int]:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(2)
        return set(self.pids)


PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In perf before it execs: SIGINT (its clean stop) when the run dies, however it dies;
    a run killed with SIGKILL once left perf recording the whole machine into /tmp."""
    # A run started in the background (`cmd &`, nohup, a CI job) inherits SIGINT ignored,
    # and perf keeps an ignored SIGINT ignored: it would then never stop, by death or stop().
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


class NetfilterProfile:
    """perf sampling of every CPU for a run: `start`, `stop`, then `windows`."""

    def __init__(self, freq: int = 499) -> None:
        self.freq = freq
        self.perf = shutil.which("perf") or shutil.which("perf", path="/usr/sbin:/sbin")
        self.dir = tempfile.mkdtemp(prefix="fc1k-kbal-perf-")
        self.data = os.path.join(self.dir, "perf.data")
        self.proc: subprocess.Popen | None = None
        self.why_not: str | None = None if self.perf else "perf is not installed (apt-get install linux-perf)"

    def start(self) -> "NetfilterProfile":
        if self.why_not:
            return self
        self.proc = subprocess.Popen([self.perf, "record", "-a", "-e", "cpu-clock", "-F", str(self.freq),
                                      "-k", "CLOCK_MONOTONIC", "-o", self.data, "--quiet",
                                      "--no-buildid"],   # no build-id pass at exit: it stops at once
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_stop_with_parent)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # perf writes its file and exits
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.returncode not in (0, -signal.SIGINT, 130) or not os.path.exists(self.data):
            err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
            self.why_not = f"perf record failed ({self.proc.returncode}): {err[-300:]}"
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def windows(self, windows: dict[str, tuple[float, float]], mine: Iterable[int]) -> dict[str, dict[str, Any]]:
        """Per window: the run's netfilter CPU seconds (its own tasks' samples, plus its
        share of ksoftirqd's), others' netfilter CPU, the sampling error; empty with
        `why_not` set when perf did not run."""
        if self.why_not:
            return {}
        r = subprocess.run([self.perf, "script", "-i", self.data, "-F", "comm,pid,tid,time,ip,sym"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.why_not = f"perf script failed: {r.stderr.strip()[-300:]}"
            return {}
        out = {}
        for name, c in count_samples(r.stdout, windows, mine).items():
            attributed = c["nf_mine"] + c["nf_others"]
            share = c["nf_mine"] / attributed if attributed else 0.0
            mine_n = c["nf_mine"] + share * c["nf_softirqd"]
            out[name] = {"samples": c["all"], "netfilter_samples": c["nf_mine"] + c["nf_softirqd"] + c["nf_others"],
                         "balancer_cpu_s": round(mine_n / self.freq, 4),
                         "others_cpu_s": round((c["nf_others"] + (1 - share) * c["nf_softirqd"]) / self.freq, 4),
                         "softirqd_samples": c["nf_softirqd"],
                         "error_cpu_s": round(max(1.0, mine_n) ** 0.5 / self.freq, 4),
                         "busy_cpu_s": round((c["all"] - c["idle"]) / self.freq, 4)}
        return out

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
