"""The kernel balancer: a Kubernetes Service as kube-proxy's nftables mode programs it.

No process touches a request. The run creates a "node" network namespace joined to the
host by one veth pair; the node's end of it carries the service address (the ClusterIP
analogue, port 80). Each replica gets a namespace of its own joined to the node by a
veth pair on a /30, with its default route through the node. In the node, nftables
DNATs each new connection to the service address to one replica, chosen per connection
with `numgen` (random, as kube-proxy does, or inc: round robin) through a vmap of
per-endpoint chains; conntrack then keeps every later packet of that connection on that
replica and reverses the NAT on the replies. Removing a replica rewrites the service
chain in one nft transaction (what kube-proxy does when an endpoint stops being ready);
connections already on it stay there, as they do under kube-proxy.

IPVS (kube-proxy's other kernel mode) is not built into this kernel, so it is not used.

Everything made here is named with PREFIX (namespaces `fc1k-kbal-<pid>-...`, the nft
table `fc1k_kbal_<pid>_<n>` inside the node and one of that name in the host, which only
exempts the run's client connections from the host's conntrack) and removed by
`ServiceNet.teardown`, which the owner calls on exit, Ctrl-C and SIGTERM; `sweep` removes
what a killed run left behind. Namespaces, veths and sysctls go through the host layer
(host.net, host.sysctl). It all needs root: `require_root` says so in one line.
"""
from __future__ import annotations

import atexit
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ...host import conntrack, net, sysctl
from ...host.net import nft

__all__ = ["PREFIX", "NeedsRoot", "require_root", "Endpoint", "ruleset", "service_rule", "ServiceNet",
           "KernelBalancer", "Conntrack", "nft", "sweep", "PICKS", "host_notrack_rules"]

PREFIX = "fc1k-kbal"
NET = "10.233"            # the node's /24 blocks: 10.233.B.0/24, B free on the host
SERVICE_PORT = 80
PICKS = ("random", "inc")  # numgen modes: kube-proxy's (random), or round robin (inc)


class NeedsRoot(RuntimeError):
    """The kernel balancer was asked for without root."""


def require_root(euid: int | None = None) -> None:
    if (os.geteuid() if euid is None else euid) != 0:
        raise NeedsRoot("the kernel balancer needs root: it creates network namespaces, veth pairs and "
                        "nftables rules (run as root, or use --balancer haproxy-http / haproxy-tcp)")


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    port: int


def _chain(ep: Endpoint) -> str:
    return f"ep_{ep.name}"


def service_rule(table: str, endpoints: Sequence[Endpoint], pick: str = "random") -> str:
    """The nft commands that make `svc` pick one of `endpoints` per new connection; with
    none, the chain stays empty and the service address answers RST (no listener)."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, not {pick!r}")
    lines = [f"flush chain ip {table} svc"]
    if endpoints:
        vmap = ", ".join(f"{i} : goto {_chain(ep)}" for i, ep in enumerate(endpoints))
        lines.append(f"add rule ip {table} svc numgen {pick} mod {len(endpoints)} vmap {{ {vmap} }}")
    return "\n".join(lines) + "\n"


def ruleset(table: str, vip: str, port: int, endpoints: Sequence[Endpoint], pick: str = "random") -> str:
    """The whole table, as one nft script: the service match in prerouting, the service
    chain, and one chain per endpoint (its counter: the connections DNATed to it, since
    only a connection's first packet passes the nat hook)."""
    out = [f"add table ip {table}",
           f"add chain ip {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
           f"add chain ip {table} svc"]
    for ep in endpoints:
        out += [f"add chain ip {table} {_chain(ep)}",
                f"add rule ip {table} {_chain(ep)} counter meta l4proto tcp dnat to {ep.ip}:{ep.port}"]
    out.append(f"add rule ip {table} prerouting ip daddr {vip} tcp dport {port} counter jump svc")
    return "\n".join(out) + "\n" + service_rule(table, endpoints, pick)


def host_notrack_rules(table: str, block: str) -> str:
    """The host namespace's part: its conntrack (there when any NAT rule exists, e.g.
    podman's) skips the run's connections (all within its /24 `block`), which only the
    node should track: the node's is then the only conntrack work on them (see kcpu)."""
    return (f"add table ip {table}\n"
            f"add chain ip {table} out {{ type filter hook output priority raw; policy accept; }}\n"
            f"add chain ip {table} pre {{ type filter hook prerouting priority raw; policy accept; }}\n"
            f"add rule ip {table} out ip daddr {block} notrack\n"
            f"add rule ip {table} pre ip saddr {block} notrack\n")


# --------------------------------------------------------------------------- namespaces

def _quietly(fn: Callable[..., Any], *argv: str, **kw: Any) -> str | None:
    """fn(*argv): None when it worked, else its error (for teardown, which goes on)."""
    try:
        fn(*argv, **kw)
        return None
    except OSError as exc:
        return str(exc)


def sweep(alive: Callable[[int], bool] | None = None) -> list[str]:
    """Removes the namespaces (and with them their veths and nft tables) and host tables
    of runs of this module whose process is gone; returns their names. Never touches
    another prefix."""
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    alive = alive or _alive
    gone = []
    for ns in net.netns_names():
        parts = ns.split("-")
        if ns.startswith(PREFIX + "-") and len(parts) >= 4 and parts[2].isdigit() and not alive(int(parts[2])):
            _quietly(net.ip, "netns", "del", ns)
            gone.append(ns)
    try:
        tables = nft("list", "tables", "ip").split()
    except OSError:
        tables = []
    for t in tables:
        parts = t.split("_")
        if t.startswith("fc1k_kbal_") and len(parts) == 4 and parts[2].isdigit() and not alive(int(parts[2])):
            _quietly(nft, "delete", "table", "ip", t)
            gone.append(t)
    return gone


_serial = iter(range(1, 1 << 30))
_live: list["ServiceNet"] = []   # torn down at exit, whatever happened


@atexit.register
def teardown_all() -> None:
    for sn in list(_live):
        sn.teardown()


class ServiceNet:
    """The node namespace, its link to the host, and the replicas' namespaces behind it.

    Addresses (one /24 block B of 10.233 that no host interface uses): host B.1, node and
    service address B.2; replica i on B.4(i+1)/30: node side .4i+5, replica .4i+6."""

    def __init__(self, port: int = SERVICE_PORT) -> None:
        require_root()
        self.port = port
        self.run = f"{os.getpid()}-{next(_serial)}"
        self.node = f"{PREFIX}-{self.run}-node"
        self.table = f"fc1k_kbal_{self.run.replace('-', '_')}"
        self.host_if = f"kb{os.getpid() % 100000}x{self.run.split('-')[1]}"[:15]
        self.block: int | None = None
        self.made: list[net.NetNs] = []   # in order
        self.host_table = False
        self.host_veth = False

    @property
    def host_ip(self) -> str:
        return f"{NET}.{self.block}.1"

    @property
    def vip(self) -> str:
        return f"{NET}.{self.block}.2"

    def _ns(self, name: str) -> net.NetNs:
        ns = net.NetNs(name)
        self.made.append(ns)
        return ns.add()

    def setup(self) -> "ServiceNet":
        _live.append(self)
        try:
            self.block = net.free_block(NET, os.getpid())
            self._ns(self.node)
            net.ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.node)
            self.host_veth = True
            net.ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            net.ip("link", "set", self.host_if, "up")
            net.ip("addr", "add", f"{self.vip}/30", "dev", "eth0", netns=self.node)
            net.ip("link", "set", "eth0", "up", netns=self.node)
            # the node routes between the host and the replicas (its own sysctl, not the host's)
            notes = sysctl.apply_in(self.node, {"net.ipv4.ip_forward": "1"})
            if notes:
                raise OSError("; ".join(notes))
            nft("-f", "-", stdin=host_notrack_rules(self.table, f"{NET}.{self.block}.0/24"))
            self.host_table = True
            # the replicas' addresses routed through the node, so a load can reach one
            # without the service (kscale's calibration); gone with the veth
            net.ip("route", "add", f"{NET}.{self.block}.0/24", "via", self.vip, "dev", self.host_if)
        except BaseException:
            self.teardown()
            raise
        return self

    def replica_ns_name(self, i: int) -> str:
        return f"{PREFIX}-{self.run}-r{i}"

    def replica_ip(self, i: int) -> str:
        return f"{NET}.{self.block}.{4 * i + 6}"

    def attach(self, i: int, sysctls: dict[str, str] | None = None) -> list[str]:
        """Makes replica i's namespace (`replica_ns_name(i)`, address `replica_ip(i)`),
        joined to the node, with the host's TCP settings and then `sysctls` set; returns
        notes for those of `sysctls` that did not apply."""
        assert self.block is not None
        if not 0 <= i < 62:
            raise ValueError("at most 62 replicas behind one node")
        ns = self._ns(self.replica_ns_name(i))
        node_ip, rep_ip = f"{NET}.{self.block}.{4 * i + 5}", self.replica_ip(i)
        net.ip("link", "add", f"r{i}", "type", "veth", "peer", "name", "eth0", "netns", ns.name, netns=self.node)
        net.ip("addr", "add", f"{node_ip}/30", "dev", f"r{i}", netns=self.node)
        net.ip("link", "set", f"r{i}", "up", netns=self.node)
        net.ip("addr", "add", f"{rep_ip}/30", "dev", "eth0", netns=ns.name)
        net.ip("link", "set", "eth0", "up", netns=ns.name)
        net.ip("route", "add", "default", "via", node_ip, netns=ns.name)
        return ns.set_sysctls(sysctls or {})

    def nft(self, script: str) -> str:
        """Runs an nft script in the node namespace, as one transaction."""
        return nft("-f", "-", stdin=script, netns=self.node)

    def teardown(self) -> list[str]:
        """Deletes every namespace made (their veths and the nft table go with them) and
        the host's table; returns what would not go."""
        for ns in reversed(self.made):
            ns.delete()
        left = [f"namespace {ns.name}" for ns in self.made if ns.name in net.netns_names()]
        self.made.clear()
        if self.host_table:
            err = _quietly(nft, "delete", "table", "ip", self.table)
            if err:
                left.append(f"host table {self.table}: {err}")
            self.host_table = False
        if self.host_veth:   # gone with the node's namespace, unless that failed
            _quietly(net.ip, "link", "del", self.host_if)
            self.host_veth = False
        if self in _live:
            _live.remove(self)
        return left


class KernelBalancer:
    """The nftables rules of one service in the node: `set_endpoints` is the atomic
    update a readiness change makes; `counters` the connections DNATed to each."""

    def __init__(self, net: ServiceNet, endpoints: Sequence[Endpoint], pick: str = "random") -> None:
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {', '.join(PICKS)}, not {pick!r}")
        if not endpoints:
            raise ValueError("a service needs at least one endpoint")
        self.net, self.pick = net, pick
        self.endpoints = list(endpoints)
        self.active = [ep.name for ep in endpoints]
        self._lock = threading.Lock()

    @property
    def table(self) -> str:
        return self.net.table

    @property
    def url(self) -> str:
        return f"http://{self.net.vip}:{self.net.port}"

    def start(self) -> "KernelBalancer":
        self.net.nft(ruleset(self.table, self.net.vip, self.net.port, self.endpoints, self.pick))
        return self

    def set_endpoints(self, names: Sequence[str]) -> None:
        """Only these endpoints (in the original order) get new connections from now on."""
        with self._lock:
            keep = [ep for ep in self.endpoints if ep.name in set(names)]
            self.net.nft(service_rule(self.table, keep, self.pick))
            self.active = [ep.name for ep in keep]

    def listing(self) -> dict[str, Any]:
        return json.loads(nft("-j", "list", "table", "ip", self.table, netns=self.net.node))

    def counters(self) -> dict[str, int]:
        """{endpoint: connections DNATed to it so far} from the endpoint chains' counters."""
        out = {}
        for item in self.listing().get("nftables", []):
            rule = item.get("rule")
            if not rule or not rule.get("chain", "").startswith("ep_"):
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    out[rule["chain"][3:]] = int(expr["counter"]["packets"])
        return out

    def in_rules(self) -> list[str]:
        """The endpoints the service chain can pick now, read back from the kernel."""
        names = []
        for item in self.listing().get("nftables", []):
            rule = item.get("rule")
            if rule and rule.get("chain") == "svc":
                names += [c[3:] for c in _gotos(rule.get("expr", []))]
        return names

    def stop(self) -> None:
        _quietly(nft, "delete", "table", "ip", self.table, netns=self.net.node)


def _gotos(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        if "goto" in obj and isinstance(obj["goto"], dict):
            return [obj["goto"].get("target", "")]
        return [x for v in obj.values() for x in _gotos(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _gotos(v)]
    return []


# --------------------------------------------------------------------------- conntrack

class Conntrack:
    """The node's connection table: nf_conntrack_max (one value for the whole host; the
    count is per namespace) sized for the run and restored afterwards (host.conntrack's
    raised_max does both), and the node's count and drop counters, read from a thread
    inside the node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._max: conntrack.raised_max | None = None

    @staticmethod
    def needed(max_clients: int) -> int:
        """Every client connection, once more for the ones closed within the 120 s
        TIME_WAIT that conntrack keeps, and room for probes and reconnects."""
        return max(65536, 4 * max_clients)

    def size(self, want: int, exact: bool = False) -> dict[str, Any]:
        """Raises the host's nf_conntrack_max to `want` (or sets it to exactly `want`);
        never lowers it unless asked to. OSError when it cannot."""
        m = conntrack.raised_max(want, exact).__enter__()
        if m.error:
            raise OSError(m.error)
        self._max = m
        target = m.set_to if m.set_to is not None else m.old
        return {"before": m.old, "max": target, "wanted": want, "changed": m.set_to is not None}

    def restore(self) -> str | None:
        """Puts back the value found, unless someone else changed it meanwhile (theirs
        stays); returns a note when it did not restore."""
        m, self._max = self._max, None
        if m is None:
            return None
        m.__exit__(None, None, None)
        return m.note

    @staticmethod
    def read_here() -> dict[str, int]:
        """Count, max and summed per-CPU drops of the calling thread's namespace."""
        got = conntrack.read()
        if got is None:
            raise OSError("the nf_conntrack module is not loaded")
        return got

    def read(self) -> dict[str, int]:
        return net.in_netns(self.node, self.read_here)
