"""conntrack: whether the kernel tracks this network namespace's connections, and how full
its table is.

As soon as a namespace has a NAT table or a rule that matches on connection state (a
container engine publishing ports, a kube-proxy-style balancer), netfilter tracks every
connection in it, loopback included, and `net.netfilter.nf_conntrack_max` caps them:
past it the kernel logs "nf_conntrack: table full, dropping packet", new connections'
SYNs vanish and clients see connect timeouts while the server looks idle. The count is
per namespace; the max is one value for the whole host, writable only from the initial
namespace (Linux >= 6.3 makes it read-only in the others).

Whether tracking is active is detected, not guessed: a rule in the namespace that needs
it (nft ruleset: a `ct` match, masquerade/snat/dnat/redirect; notrack aside), or the count
moving while we watch. A non-zero count alone proves nothing: entries outlive the rule
that made them (TIME_WAIT ones for 120 s).
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

from . import net, sysctl

__all__ = ["read", "ruleset_needs_tracking", "active", "fix", "raised_max", "notrack_port", "MAX", "COUNT", "STAT"]

MAX = "/proc/sys/net/netfilter/nf_conntrack_max"
SYSCTL_MAX = "net.netfilter.nf_conntrack_max"
COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
STAT = "/proc/thread-self/net/stat/nf_conntrack"   # the calling thread's namespace
COUNTERS = ("drop", "early_drop", "insert_failed")
# nft ruleset lines whose expressions make the kernel track the namespace's connections
# (iptables-nft tables included). A nat chain alone does not: its rules' NAT does.
_TRACKING = re.compile(r"\bct (state|status|mark|zone|count|original|reply|direction|helper|label)\b|"
                       r"\b(masquerade|snat|dnat|redirect)\b|"
                       r'xt (match|target) "(conntrack|state|connmark|connlimit|MASQUERADE|SNAT|DNAT|REDIRECT|CT)"')


def _int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read() -> dict[str, int] | None:
    """count and max, and the drop, early_drop and insert_failed counters summed over the
    CPUs (cumulative since boot), of the calling thread's namespace. None when the
    conntrack module is not loaded (then nothing is tracked anywhere)."""
    mx = _int(MAX)
    if mx is None:
        return None
    out = {"count": _int(COUNT) or 0, "max": mx}
    try:
        with open(STAT) as f:
            head, *rows = [ln.split() for ln in f if ln.strip()]
        for key in COUNTERS:
            if key in head:
                i = head.index(key)
                out[key] = sum(int(r[i], 16) for r in rows)
    except (OSError, ValueError, IndexError):
        pass
    return out


def ruleset_needs_tracking(ruleset: str) -> list[str]:
    """The lines of an `nft list ruleset` output that make the kernel track connections."""
    return [ln.strip() for ln in ruleset.splitlines() if _TRACKING.search(ln) and "notrack" not in ln]


def _ruleset() -> str | None:
    try:
        return net.nft("list", "ruleset", timeout=10)
    except OSError:
        return None


def active(watch_s: float = 0.5) -> dict[str, Any]:
    """Whether conntrack tracks this namespace's connections, with the evidence:
    {"active": bool | None, "why": str, **read()}. None: cannot tell (no nft to list the
    rules, as non-root, and the count did not move)."""
    r0 = read()
    if r0 is None:
        return {"active": False, "why": "the nf_conntrack module is not loaded: nothing is tracked"}
    rules = _ruleset()
    lines = ruleset_needs_tracking(rules) if rules is not None else []
    if lines:
        return {**r0, "active": True, "why": f"a rule here needs it: {lines[0]}"
                + (f" (+{len(lines) - 1} more)" if len(lines) > 1 else "")}
    time.sleep(watch_s)
    r1 = read() or r0
    if r1["count"] > r0["count"] or r1.get("insert_failed", 0) > r0.get("insert_failed", 0):
        return {**r1, "active": True, "why": f"the count moved {r0['count']:,} -> {r1['count']:,} in {watch_s:g} s"}
    if rules is None:
        return {**r1, "active": None, "why": "cannot list the nft ruleset (nft missing or not root) and the count "
                "did not move"}
    return {**r1, "active": False, "why": "no NAT or ct rule in this namespace"
            + (f"; the {r1['count']:,} entries left are stale (they expire, TIME_WAIT after 120 s)"
               if r1["count"] else "")}


def fix(port: int | None = None) -> str:
    """What to do when the table caps the connections: raise the max, or exempt the
    test port from tracking (both directions, in both hooks: loopback packets pass output
    then prerouting)."""
    p = str(port) if port else "PORT"
    return ("raise the host-wide max (from the initial namespace): sysctl -w net.netfilter.nf_conntrack_max=2097152"
            " (about 320 B of kernel memory per entry); or exempt the test port from tracking: nft -f - <<< '"
            "table ip fastc1k_notrack { chain pre { type filter hook prerouting priority raw; "
            f"tcp dport {p} notrack; tcp sport {p} notrack; }}; chain out {{ type filter hook output priority raw; "
            f"tcp dport {p} notrack; tcp sport {p} notrack; }}; }}'")


class raised_max:
    """For a run that opens `need` tracked connections: nf_conntrack_max raised to at least
    `need` (exact: set to `need`, even lower), from the initial namespace, and put back
    after unless someone else changed it meanwhile. `how` says what was done, for the
    report; `error` is set when the value could not be written, `note` when it was not
    restored."""

    def __init__(self, need: int, exact: bool = False) -> None:
        self.need, self.exact = need, exact
        self.old: int | None = None
        self.set_to: int | None = None
        self.how = ""
        self.error: str | None = None
        self.note: str | None = None

    def __enter__(self) -> "raised_max":
        self.old = sysctl.read_int(SYSCTL_MAX)
        if self.old is None:
            self.error = "no nf_conntrack_max on this host (the module is not loaded)"
            self.how = f"conntrack: {self.error}"
            return self
        target = self.need if self.exact else max(self.need, self.old)
        if target == self.old:
            self.how = f"conntrack: nf_conntrack_max {self.old} already covers {self.need} connections"
            return self
        try:
            sysctl.write(SYSCTL_MAX, str(target))
            self.set_to = target
            self.how = (f"conntrack: nf_conntrack_max {'raised' if target > self.old else 'set'} {self.old} -> "
                        f"{target} for the run, then restored")
        except OSError as exc:
            self.error = f"nf_conntrack_max {self.old} could not be set to {target} ({exc.strerror or exc})"
            self.how = f"conntrack: {self.error}: past {self.old} tracked connections SYNs are dropped"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.set_to is None:
            return
        now = sysctl.read_int(SYSCTL_MAX)
        if now != self.set_to:
            self.note = f"nf_conntrack_max is {now}, not the {self.set_to} this run set: left as it is"
        else:
            try:
                sysctl.write(SYSCTL_MAX, str(self.old))
            except OSError as exc:
                self.note = f"nf_conntrack_max not restored to {self.old}: {exc.strerror or exc}"
        if self.note:
            self.how += f" (not restored: {self.note})"
        self.set_to = None


class notrack_port:
    """For a run on loopback TCP port `port`: its packets exempted from connection tracking
    (both directions, in both hooks: loopback packets pass output, then prerouting) by an
    nft table of the run's own, deleted afterwards. Cheaper than a raised max: no entry
    per connection, no lookups in an overfull hash. `made` says whether it took; `how`
    says what was done, for the report."""

    def __init__(self, port: int, table: str | None = None) -> None:
        self.port = port
        self.table = table or f"fastc1k_notrack_{os.getpid()}"
        self.made = False
        self.how = ""

    @staticmethod
    def _nft(*args: str, stdin: str | None = None) -> tuple[bool, str]:
        try:
            net.nft(*args, stdin=stdin, timeout=10)
            return True, ""
        except OSError as exc:
            return False, (str(exc).splitlines() or [""])[-1]

    def __enter__(self) -> "notrack_port":
        p = self.port
        rules = (f"table inet {self.table} {{\n"
                 f"  chain pre {{ type filter hook prerouting priority raw; iifname \"lo\" tcp dport {p} notrack; "
                 f"iifname \"lo\" tcp sport {p} notrack; }}\n"
                 f"  chain out {{ type filter hook output priority raw; oifname \"lo\" tcp dport {p} notrack; "
                 f"oifname \"lo\" tcp sport {p} notrack; }}\n}}\n")
        self.made, err = self._nft("-f", "-", stdin=rules)
        self.how = (f"conntrack: loopback port {p} exempted from tracking for the run (nft table inet {self.table}, "
                    "notrack), then removed" if self.made else f"conntrack: could not exempt port {p} ({err})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.made:
            ok, err = self._nft("delete", "table", "inet", self.table)
            if not ok:
                self.how += f" (could not be removed: {err}; nft delete table inet {self.table})"

