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
exempts the run's client connections from the host's conntrack) and removed by `ServiceNet.teardown`, which the
owner calls on exit, Ctrl-C and SIGTERM; `sweep` removes what a killed run left behind.
It all needs root: `require_root` says so in one line.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["PREFIX", "NeedsRoot", "require_root", "Endpoint", "ruleset", "service_rule", "ServiceNet",
           "KernelBalancer", "Conntrack", "in_netns", "sweep", "PICKS", "host_notrack_rules"]

PREFIX = "fc1k-kbal"
NET = "10.233"            # the node's /24 blocks: 10.233.B.0/24, B free on the host
SERVICE_PORT = 80
PICKS = ("random", "inc")  # numgen modes: kube-proxy's (random), or round robin (inc)
CLONE_NEWNET = 0x40000000


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


def host_notrack_rules(table: str, vip: str) -> str:
    """The host namespace's part: its conntrack (there when any NAT rule exists, e.g.
    podman's) skips the run's client connections, which only the node should track (one
    table, and the node's CPU is then the only conntrack work on them: see kcpu)."""
    return (f"add table ip {table}\n"
            f"add chain ip {table} out {{ type filter hook output priority raw; policy accept; }}\n"
            f"add chain ip {table} pre {{ type filter hook prerouting priority raw; policy accept; }}\n"
            f"add rule ip {table} out ip daddr {vip} notrack\n"
            f"add rule ip {table} pre ip saddr {vip} notrack\n")


# --------------------------------------------------------------------------- namespaces

def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread (or a child before exec) into namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """fn() run in a thread of its own that entered namespace `name` (the caller's
    namespace is left as it was); its result or exception comes back."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(name)
            box["v"] = fn()
        except BaseException as exc:   # handed back to the caller
            box["e"] = exc
    t = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


def _run(*argv: str, stdin: str | None = None) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def _netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/var/run/netns"))
    except OSError:
        return []


def sweep(alive: Callable[[int], bool] | None = None) -> list[str]:
    """Removes the namespaces (and with them their veths and nft tables) of runs of this
    module whose process is gone; returns their names. Never touches another prefix."""
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
    for ns in _netns_list():
        parts = ns.split("-")
        if not ns.startswith(PREFIX + "-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        if not alive(int(parts[2])):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            gone.append(ns)
    tables = subprocess.run(["nft", "list", "tables", "ip"], capture_output=True, text=True).stdout.split()
    for t in tables:
        parts = t.split("_")
        if t.startswith("fc1k_kbal_") and len(parts) == 4 and parts[2].isdigit() and not alive(int(parts[2])):
            subprocess.run(["nft", "delete", "table", "ip", t], capture_output=True)
            gone.append(t)
    return gone


_serial = iter(range(1, 1 << 30))
_live: list["ServiceNet"] = []   # torn down at exit, whatever happened


@atexit.register
def _teardown_all() -> None:
    for net in list(_live):
        net.teardown()


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
        self.replica_ns: list[str] = []
        self.made: list[str] = []   # namespaces, in order
        self.host_table = False

    @property
    def host_ip(self) -> str:
        return f"{NET}.{self.block}.1"

    @property
    def vip(self) -> str:
        return f"{NET}.{self.block}.2"

    def _free_block(self) -> int:
        out = _run("ip", "-4", "-o", "addr")
        used = {int(w.split(".")[2]) for w in out.split() if w.startswith(NET + ".")}
        free = [b for b in range(1, 255) if b not in used]
        if not free:
            raise OSError(f"no free {NET}.B.0/24 block on this host")
        return free[os.getpid() % len(free)]

    def _ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.made.append(name)

    def setup(self) -> "ServiceNet":
        _live.append(self)
        try:
            self.block = self._free_block()
            self._ns(self.node)
            x = ("ip", "-n", self.node)
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.node)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run(*x, "addr", "add", f"{self.vip}/30", "dev", "eth0")
            _run(*x, "link", "set", "eth0", "up")
            _run(*x, "link", "set", "lo", "up")
            # the node routes between the host and the replicas (its own sysctl, not the host's)
            _run("ip", "netns", "exec", self.node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            _run("nft", "-f", "-", stdin=host_notrack_rules(self.table, self.vip))
            self.host_table = True
        except BaseException:
            self.teardown()
            raise
        return self

    def attach(self, i: int, sysctls: dict[str, str] | None = None) -> tuple[str, str]:
        """Replica i's namespace, joined to the node: returns (namespace, its address)."""
        assert self.block is not None
        if not 0 <= i < 62:
            raise ValueError("at most 62 replicas behind one node")
        ns = f"{PREFIX}-{self.run}-r{i}"
        self._ns(ns)
        self.replica_ns.append(ns)
        node_ip, rep_ip = f"{NET}.{self.block}.{4 * i + 5}", f"{NET}.{self.block}.{4 * i + 6}"
        x = ("ip", "-n", self.node)
        _run(*x, "link", "add", f"r{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(*x, "addr", "add", f"{node_ip}/30", "dev", f"r{i}")
        _run(*x, "link", "set", f"r{i}", "up")
        y = ("ip", "-n", ns)
        _run(*y, "addr", "add", f"{rep_ip}/30", "dev", "eth0")
        _run(*y, "link", "set", "eth0", "up")
        _run(*y, "link", "set", "lo", "up")
        _run(*y, "route", "add", "default", "via", node_ip)
        if sysctls:
            _run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items()))
        return ns, rep_ip

    def nft(self, script: str) -> str:
        """Runs an nft script in the node namespace, as one transaction."""
        return _run("ip", "netns", "exec", self.node, "nft", "-f", "-", stdin=script)

    def teardown(self) -> list[str]:
        """Deletes every namespace made (their veths and the nft table go with them);
        returns what would not go."""
        left = []
        for ns in reversed(self.made):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode != 0 and ns in _netns_list():
                left.append(f"{ns}: {r.stderr.strip()}")
        self.made.clear()
        self.replica_ns.clear()
        if self.host_table:
            r = subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True, text=True)
            if r.returncode != 0:
                left.append(f"host table {self.table}: {r.stderr.strip()}")
            self.host_table = False
        # deleting the node's namespace destroys the veth pair; this only covers a failed setup
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
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
        return json.loads(_run("ip", "netns", "exec", self.net.node, "nft", "-j", "list", "table", "ip", self.table))

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
        subprocess.run(["ip", "netns", "exec", self.net.node, "nft", "delete", "table", "ip", self.table],
                       capture_output=True)


def _gotos(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        if "goto" in obj and isinstance(obj["goto"], dict):
            return [obj["goto"].get("target", "")]
        return [x for v in obj.values() for x in _gotos(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _gotos(v)]
    return []


# --------------------------------------------------------------------------- conntrack

CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


class Conntrack:
    """The node's connection table: nf_conntrack_max (one value for the whole host; the
    count is per namespace) raised to what the run needs and restored afterwards, and
    the node's count and drop counters, read from a thread inside the node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.before: int | None = None
        self.set_to: int | None = None

    @staticmethod
    def needed(max_clients: int) -> int:
        """Every client connection, once more for the ones closed within the 120 s
        TIME_WAIT that conntrack keeps, and room for probes and reconnects."""
        return max(65536, 4 * max_clients)

    def size(self, want: int, exact: bool = False) -> dict[str, Any]:
        """Raises the host's nf_conntrack_max to `want` (or sets it to exactly `want`);
        never lowers it unless asked to."""
        self.before = _read_int(CONNTRACK_MAX)
        target = want if exact else max(want, self.before)
        if target != self.before:
            with open(CONNTRACK_MAX, "w") as f:
                f.write(str(target))
            self.set_to = target
        return {"before": self.before, "max": target, "wanted": want, "changed": target != self.before}

    def restore(self) -> str | None:
        """Puts back the value found, unless someone else changed it meanwhile (theirs
        stays); returns a note when it did not restore."""
        if self.set_to is None or self.before is None:
            return None
        try:
            now = _read_int(CONNTRACK_MAX)
            if now != self.set_to:
                return f"nf_conntrack_max is {now}, not the {self.set_to} this run set: left as it is"
            with open(CONNTRACK_MAX, "w") as f:
                f.write(str(self.before))
        except OSError as exc:
            return f"nf_conntrack_max not restored to {self.before}: {exc}"
        finally:
            self.set_to = None
        return None

    @staticmethod
    def read_here() -> dict[str, int]:
        """Count, max and summed per-CPU drops of the calling thread's namespace."""
        out = {"count": _read_int("/proc/sys/net/netfilter/nf_conntrack_count"), "max": _read_int(CONNTRACK_MAX)}
        with open("/proc/thread-self/net/stat/nf_conntrack") as f:
            head, *rows = [ln.split() for ln in f if ln.strip()]
        for key in ("drop", "early_drop", "insert_failed"):
            if key in head:
                i = head.index(key)
                out[key] = sum(int(r[i], 16) for r in rows)
        return out

    def read(self) -> dict[str, int]:
        return in_netns(self.node, self.read_here)
