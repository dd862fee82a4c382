"""The kernel balancer's CPU: no process to read it from, so it is sampled.

The Service's work (rule evaluation, DNAT, conntrack lookups and confirmations) runs in
softirq context, in whatever task the packet interrupts; this kernel is built without
IRQ_TIME_ACCOUNTING, so /proc/stat's softirq column is itself tick-sampled and every
softirq tick is also charged to the interrupted task (a replica, the load generator).
So: `perf record -a -e cpu-clock` samples every CPU at `freq` Hz, and the samples whose
kernel symbol is netfilter code (nf_*, nft_*, the conntrack and NAT helpers) are the
balancer's CPU: samples / freq seconds. Two things keep that figure the balancer's own:
the host namespace does not track the run's client connections (kernel_lb's notrack
table, so the only conntrack on the run's packets is the node's), and the netfilter rate
of other processes' traffic, measured in a quiet window before the load, is subtracted.
What remains is stated with its sampling error (one sample is 1/freq s).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from typing import Any

__all__ = ["NETFILTER", "NetfilterProfile", "classify", "count_samples"]

NETFILTER = re.compile(r"^(__)?(nf_|nft_|nf_ct_|ipv4_conntrack|ipv4_confirm|hash_conntrack|tcp_in_window|"
                       r"ctnetlink|nat_)")
_LINE = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+[0-9a-f]+\s+(\S+)")


def classify(tid: int, sym: str) -> str:
    if tid == 0:
        return "idle"
    return "netfilter" if NETFILTER.match(sym) else "busy"


def count_samples(script: str, windows: dict[str, tuple[float, float]]) -> dict[str, dict[str, int]]:
    """`perf script -F tid,time,ip,sym` text -> per window {idle, busy, netfilter} sample
    counts (busy excludes netfilter)."""
    out = {name: {"idle": 0, "busy": 0, "netfilter": 0} for name in windows}
    spans = sorted(windows.items(), key=lambda kv: kv[1][0])
    for line in script.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        t = float(m.group(2))
        kind = classify(int(m.group(1)), m.group(3))
        for name, (a, b) in spans:
            if a <= t < b:
                out[name][kind] += 1
    return out


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
                                      "-k", "CLOCK_MONOTONIC", "-o", self.data, "--quiet"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
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

    def windows(self, windows: dict[str, tuple[float, float]], baseline: str | None = None
                ) -> dict[str, dict[str, Any]]:
        """Per window: netfilter CPU seconds (less the baseline window's rate, when named)
        and the sampling error; empty with `why_not` set when perf did not run."""
        if self.why_not:
            return {}
        r = subprocess.run([self.perf, "script", "-i", self.data, "-F", "tid,time,ip,sym"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.why_not = f"perf script failed: {r.stderr.strip()[-300:]}"
            return {}
        counts = count_samples(r.stdout, windows)
        base_rate = 0.0
        if baseline and baseline in windows:
            a, b = windows[baseline]
            base_rate = counts[baseline]["netfilter"] / self.freq / max(1e-9, b - a)
        out = {}
        for name, (a, b) in windows.items():
            c = counts[name]
            raw = c["netfilter"] / self.freq
            out[name] = {"samples": sum(c.values()), "netfilter_samples": c["netfilter"],
                         "netfilter_cpu_s": round(raw, 4),
                         "others_cpu_s": round(base_rate * (b - a), 4) if name != baseline else None,
                         "balancer_cpu_s": round(max(0.0, raw - base_rate * (b - a)), 4) if name != baseline
                         else None,
                         "error_cpu_s": round((max(1, c["netfilter"]) ** 0.5) / self.freq, 4),
                         "busy_cpu_s": round((c["busy"] + c["netfilter"]) / self.freq, 4)}
        return out

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
