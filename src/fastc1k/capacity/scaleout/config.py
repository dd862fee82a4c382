"""A scale-out run's settings, and what a replica is in words."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import analysis as A
from ..container import ContainerSpec
from ..stages import RunConfig
from ..podman import IMAGE
from .balancer import BalancerSpec

__all__ = ["PROG", "DEFAULT_BREAK_P99_MS", "ScaleoutConfig", "describe_replica"]

PROG = "fastc1k.capacity.scaleout"
DEFAULT_BREAK_P99_MS = 100.0   # see ScaleoutConfig.run


@dataclass
class ScaleoutConfig:
    replicas: tuple[int, ...] = (1, 2, 4)
    container: ContainerSpec = field(default_factory=lambda: ContainerSpec(cpus=0.25, memory=256 << 20))
    engine: str | None = None
    balancer: BalancerSpec = field(default_factory=BalancerSpec)
    # Closed-loop clients on a saturated fleet: p99 ~ clients / capacity, so a p99 bound
    # turns into a breaking point proportional to the fleet's capacity (the plan's 1 s
    # would need ~40,000 clients per 0.25-CPU replica, past this host's ports and fds).
    run: RunConfig = field(default_factory=lambda: RunConfig(
        phases=("stages", "recovery"), stages=(100, 250, 500, 750, 1000), stage_s=3, final_stage_s=3,
        blast_s=5, recovery_window_s=8, max_clients=8000,
        thresholds=A.Thresholds(break_p99_ms=DEFAULT_BREAK_P99_MS)))
    fault: str = "kill"                   # kill | freeze | none
    fault_replicas: int | None = None     # default: the largest count
    fault_clients: int | None = None      # default: the last good stage of 1 replica
    fault_before_s: int = 4
    fault_after_s: int = 10
    use_netns: bool = True
    pin: bool = True
    server_args: list[str] = field(default_factory=list)
    runtime: str = "kernel"               # what a replica is: kernel parts, or a podman container of `image`
    image: str = IMAGE

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("container", "balancer", "run")}
        d["container"] = self.container.describe()
        d["balancer"] = asdict(self.balancer)
        d["run"] = self.run.as_dict()
        return d


def describe_replica(cfg: ScaleoutConfig, priv: dict[str, Any]) -> str:
    c = cfg.container
    bits = []
    if cfg.runtime == "podman":
        bits.append(f"a podman container of {cfg.image}")
    if priv.get("cgroup") or cfg.runtime == "podman":
        if c.cpus:
            bits.append(f"{c.cpus:g} CPU")
        if c.memory:
            bits.append(f"{c.memory / 2**20:.0f} MiB")
    else:
        bits.append("unconfined (no cgroup)")
    bits.append("own netns" if priv.get("netns") and cfg.use_netns else "host loopback")
    return "fastc1k 1 worker (" + ", ".join(bits) + ")"
