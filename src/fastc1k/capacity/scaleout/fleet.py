"""The replicas of a scale-out run, and the fleet of them.

A replica is `python -m fastc1k.serve --workers 1` in cgroups of its own (CPU quota,
memory limit, freezer) and, where root permits, a network namespace of its own joined to
the host by a veth pair on a /30 of 10.231.B.0/24 (B: a block no interface uses), with
the host's TCP sysctls copied in. Without root the replicas listen on 127.0.0.2, .3, ...
of the host, unconfined, and `privileges` says why. Every namespace, veth and cgroup made
here is removed on exit, also on failure (atexit).

With runtime "podman" a replica is a container of the project's image (`make image`)
with the replica's limits as podman flags, and it joins the namespace the fleet made for
it (`--network ns:`, as a CNI plugin gives a pod its netns): the balancers reach it at
the same address, over the same veth, as a kernel-parts replica. Not podman's own
networks: `-p 127.0.0.1` answers connections from 127.0.0.1 only (netavark masquerades
no other source), which HAProxy in kscale's node namespace cannot be; the bridge address
would need routes and NAT from the node to the bridge, and would measure another path
than the kernel-parts fleet's. Containers carry the label fastc1k.run=<fleet run id>.
"""
from __future__ import annotations

import atexit
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ...host import cgroup, proc
from ...host.cgroup import Cgroup
from ...host.net import NetNs, Veth, free_block, ip_available
from ..container import ContainerSpec
from ..podman import IMAGE, PodmanServer, remove_run
from ..stages import ServerProcess
from .balancer import Backend

__all__ = ["NET_PREFIX", "REPLICA_PORT", "privileges", "ReplicaNet", "ReplicaSpec", "Replica", "PodmanReplica",
           "Fleet", "running", "stop_all"]

NET_PREFIX = "10.231"
REPLICA_PORT = 8080

running: list["Fleet"] = []     # fleets started and not yet stopped: stopped at exit, whatever happened


@atexit.register
def stop_all() -> None:
    for f in list(running):
        f.stop()


def privileges() -> dict[str, Any]:
    """What this host lets the suite build, and for what is missing, why."""
    root = os.geteuid() == 0
    v2 = cgroup.version() == "v2"
    cgroups = root and os.access(cgroup.ROOT if v2 else f"{cgroup.ROOT}/cpu", os.W_OK)
    netns = root and ip_available()
    freezer = root and (v2 or os.path.isdir(f"{cgroup.ROOT}/freezer"))
    missing = []
    if not cgroups:
        missing.append("cgroups (CPU quota, memory limit) need root and a writable /sys/fs/cgroup: replicas "
                       "run unconfined, so the scaling figures are bound by the host's CPUs, not by the quota")
    if not netns:
        missing.append("own network namespaces need root and iproute2 (`ip`): replicas listen on 127.0.0.x "
                       "of the host and share its sysctls")
    if not freezer:
        missing.append("the freezer (for --fault freeze) needs root and the freezer controller")
    return {"root": root, "cgroup": ("v2" if v2 else "v1") if cgroups else None, "netns": netns,
            "freezer": freezer, "missing": missing}


# --------------------------------------------------------------------------- one replica

class ReplicaNet:
    """A network namespace joined to the host by a veth pair on one /30."""

    def __init__(self, name: str, host_if: str, ns_if: str, host_ip: str, ns_ip: str) -> None:
        self.name, self.ns_ip = name, ns_ip
        self.ns = NetNs(name)
        self.veth = Veth(host_if, ns_if, host_ip, ns_ip)

    def setup(self, sysctls: dict[str, str]) -> list[str]:
        """Returns notes (sysctls that did not apply)."""
        self.ns.add()
        self.veth.add(self.ns)
        return self.ns.set_sysctls(sysctls)

    def cleanup(self) -> None:
        self.veth.delete()
        self.ns.delete()


@dataclass
class ReplicaSpec:
    container: ContainerSpec = field(default_factory=ContainerSpec)
    engine: str | None = None
    server_args: list[str] = field(default_factory=list)
    cpus_pin: set[int] | None = None   # cores the replicas may run on
    use_netns: bool = True
    runtime: str = "kernel"            # kernel (our cgroup + process) or podman (a container of `image`)
    image: str = IMAGE


class Replica:
    def __init__(self, index: int, run_id: str, spec: ReplicaSpec, net: ReplicaNet | None, host: str,
                 use_cgroup: bool = True) -> None:
        self.index = index
        self.name = f"r{index}"
        self.spec = spec
        self.net = net
        self.host = net.ns_ip if net else host
        c = spec.container
        self.cgroup_name = f"fastc1k-{run_id}-{self.name}" \
            if use_cgroup and (c.cpus is not None or c.memory is not None) else None
        self.cgroup: Cgroup | None = None
        self.server: ServerProcess | None = None
        self.killed_at: float | None = None

    def start(self) -> "Replica":
        if self.cgroup_name:
            c = self.spec.container
            self.cgroup = Cgroup.create(self.cgroup_name, cpus=c.cpus, memory=c.memory, freezer=True)
        join = self.cgroup.preexec() if self.cgroup else None
        nofile = self.spec.container.nofile
        if nofile and os.geteuid() != 0:   # only root may raise the hard limit
            nofile = min(nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        setns = self.net.ns.setns_preexec() if self.net else None
        pin = self.spec.cpus_pin

        def enter() -> None:
            if setns:
                setns()
            if join:
                join()
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if pin:
                os.sched_setaffinity(0, pin)
        port = str(REPLICA_PORT) if self.net else "0"
        self.server = ServerProcess(self.spec.engine, 1, ["--host", self.host, "--port", port,
                                                          *self.spec.server_args], preexec=enter).start()
        return self

    @property
    def backend(self) -> Backend:
        assert self.server and self.server.url
        return Backend(self.name, self.host, int(self.server.url.rsplit(":", 1)[1]))

    def pids(self) -> list[int]:
        if not self.server or not self.server.alive():
            return []
        return proc.tree(self.server.pid)

    def kill(self) -> None:
        """The whole replica at once (master and worker): a crashed container."""
        assert self.server and self.server.proc
        self.killed_at = time.monotonic()
        os.killpg(self.server.pid, signal.SIGKILL)

    def freeze(self) -> None:
        """A hung container: its processes stop running, its sockets stay open."""
        assert self.cgroup
        self.killed_at = time.monotonic()
        self.cgroup.freeze(True)

    def stop(self) -> None:
        if self.cgroup and self.cgroup.can_freeze:
            try:
                self.cgroup.freeze(False)
            except OSError:
                pass
        if self.server:
            if self.server.alive():
                try:
                    os.killpg(self.server.pid, signal.SIGKILL)   # the run is over: no grace needed
                except ProcessLookupError:
                    pass
            if self.server.proc:
                try:
                    self.server.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if self.cgroup:
            self.cgroup.remove(tries=100)


class PodmanReplica(Replica):
    """A replica that is a podman container of the image, in the namespace the fleet made
    for it (or, without one, on the host's 127.0.0.x): its cgroup is podman's."""

    def __init__(self, index: int, run_id: str, spec: ReplicaSpec, net: Any, host: str) -> None:
        super().__init__(index, run_id, spec, net, host, use_cgroup=False)
        c = spec.container
        # podman's --cpuset-cpus pins as sched_setaffinity does for a kernel-parts replica
        self.server = PodmanServer(c, f"ns:{net.name}" if net else "host", extra=self._extra(), image=spec.image,
                                   run_id=run_id, tag=self.name, address=self.host, cpuset=spec.cpus_pin)

    def _extra(self) -> list[str]:
        return [*(["--engine", self.spec.engine] if self.spec.engine else []), *self.spec.server_args]

    def start(self) -> "PodmanReplica":
        assert isinstance(self.server, PodmanServer)
        self.server.start()
        self.cgroup = self.server.cgroup
        return self

    def pids(self) -> list[int]:
        return self.cgroup.pids() if self.cgroup else []

    def kill(self) -> None:
        """SIGKILL to the container's init (tini): the kernel kills its whole pid namespace."""
        assert isinstance(self.server, PodmanServer)
        self.killed_at = time.monotonic()
        os.kill(self.server.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.cgroup and self.cgroup.can_freeze:
            try:
                self.cgroup.freeze(False)   # a frozen task cannot die
            except OSError:
                pass
        if isinstance(self.server, PodmanServer):
            self.server.stop(timeout=1)


class Fleet:
    """N replicas: their namespaces, veths, cgroups and servers; stop() undoes all of it."""

    def __init__(self, n: int, spec: ReplicaSpec, priv: dict[str, Any] | None = None,
                 slot: Callable[[int], Any] | None = None) -> None:
        self.n = n
        self.spec = spec
        self.slot = slot   # replica i's network, when not a veth to the host (kservice.NodeSlot)
        self.priv = priv or privileges()
        self.run_id = f"{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.replicas: list[Replica] = []
        self.nets: list[ReplicaNet] = []
        self.notes: list[str] = []

    def start(self) -> "Fleet":
        running.append(self)
        try:
            use_ns = self.spec.use_netns and self.priv["netns"]
            if self.n > 63:
                raise ValueError("at most 63 replicas")
            block = free_block(NET_PREFIX, os.getpid() // 7) if use_ns and not self.slot else 0
            tag = self.run_id.replace("-", "")[-6:]
            for i in range(self.n):
                net = None
                if self.slot:
                    net = self.slot(i)
                    self.nets.append(net)
                    self.notes += net.setup(self.spec.container.sysctls)
                elif use_ns:
                    net = ReplicaNet(f"fastc1k-{self.run_id}-r{i}", f"fk{tag}h{i}", f"fk{tag}n{i}",
                                     f"{NET_PREFIX}.{block}.{4 * i + 1}", f"{NET_PREFIX}.{block}.{4 * i + 2}")
                    self.nets.append(net)
                    self.notes += net.setup(self.spec.container.sysctls)
                if self.spec.runtime == "podman":
                    r: Replica = PodmanReplica(i, self.run_id, self.spec, net, f"127.0.0.{2 + i}")
                else:
                    r = Replica(i, self.run_id, self.spec, net, f"127.0.0.{2 + i}", bool(self.priv.get("cgroup")))
                self.replicas.append(r)
                r.start()
        except BaseException:
            self.stop()
            raise
        return self

    def backends(self) -> list[Backend]:
        return [r.backend for r in self.replicas]

    def describe(self) -> dict[str, Any]:
        """What ran: the runtime, and for podman the run id, image id and container names."""
        if self.spec.runtime != "podman":
            return {"runtime": "kernel"}
        ps = [r.server for r in self.replicas if isinstance(r.server, PodmanServer)]
        return {"runtime": "podman", "run_id": self.run_id, "image": self.spec.image,
                "image_id": next((p.image_id for p in ps if p.image_id), None), "containers": [p.name for p in ps],
                "applied": ps[0].applied if ps else {}, "refused": ps[0].refused if ps else []}

    def pids(self) -> list[int]:
        return [p for r in self.replicas for p in r.pids()]

    def throttled(self) -> int:
        return sum(r.cgroup.throttled() or 0 for r in self.replicas if r.cgroup)

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        if self.spec.runtime == "podman":   # also a container whose start failed half-way
            self.notes += [f"not removed: {x}" for x in remove_run(self.run_id)]
        for net in self.nets:
            net.cleanup()
        self.replicas.clear()
        self.nets.clear()
        if self in running:
            running.remove(self)
