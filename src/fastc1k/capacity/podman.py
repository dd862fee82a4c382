"""A real container: the fastc1k image (`make image`) run by podman with the limits of
`--container`, and its own cgroup read for the monitor.

What this host needs, each found by trying: `--runtime runc` (crun refuses hybrid
cgroups); every rlimit given explicitly and at most the host's hard limit (root here
lacks CAP_SYS_RESOURCE, so podman's defaults fail); `--health-cmd none` (the image's
HEALTHCHECK would start a Python every 10 s inside the measured CPU quota, and podman
schedules it through systemd, absent here). Everything a run creates carries the label
fastc1k.run=<run id> and a name starting fc1k-podman-, and only those are removed.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from typing import Any

from ..host import proc, sysctl
from ..host.conntrack import raised_max as conntrack_for_run
from ..host.cgroup import Cgroup
from .container import ContainerSpec

__all__ = ["PODMAN", "IMAGE", "CONTAINER_PORT", "NETWORKS", "RUNTIMES", "PodmanServer", "PodmanError", "unavailable",
           "choose_runtime", "plan_limits", "new_run_id", "remove_run", "conntrack_for_run"]

PODMAN = ("podman", "--runtime", "runc")
IMAGE = os.environ.get("FASTC1K_IMAGE", "fastc1k:latest")
CONTAINER_PORT = 8080          # the image's EXPOSE and CMD
NPROC = 1000                   # podman's default nproc rlimit fails here too: given explicitly
LABEL = "fastc1k.run"
NETWORKS = ("publish", "host")   # -p 127.0.0.1::8080 (bridge + DNAT + conntrack) or --network host


class PodmanError(RuntimeError):
    """podman cannot do what was asked; the message is one line."""


def podman(*args: str, timeout: float = 60, cwd: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 124, "", f"podman {args[0]} timed out after {timeout:.0f} s")


def _why(r: subprocess.CompletedProcess) -> str:
    """podman's own error line (it logs systemd-timer noise on stderr before it)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "systemd" not in ln]
    errs = [ln for ln in lines if ln.startswith("Error")]
    return (errs or lines or [f"exit status {r.returncode}"])[-1].strip()


def unavailable(image: str = IMAGE) -> str | None:
    """Why the podman runtime cannot run here (one line), or None when it can."""
    for tool, why in (("podman", "apt-get install podman"),
                      ("runc", "podman's default crun refuses this host's cgroups; apt-get install runc")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({why})"
    r = podman("info", "--format", "{{.Host.CgroupsVersion}}", timeout=30)
    if r.returncode != 0:
        return f"podman does not run here: {_why(r)}"
    r = podman("image", "inspect", "--format", "{{.Id}}", image)
    if r.returncode != 0:
        return f"no image {image}: build it with `make image`"
    return None


RUNTIMES = ("auto", "podman", "kernel")


def choose_runtime(requested: str, image: str = IMAGE) -> tuple[str, str | None]:
    """("podman" or "kernel", the line saying why for auto). An explicit podman that cannot
    run raises PodmanError (the caller exits 2); auto falls back to the kernel parts."""
    if requested == "kernel":
        return "kernel", None
    why = unavailable(image)
    if requested == "podman":
        if why:
            raise PodmanError(f"--runtime podman: {why}")
        return "podman", None
    if why:
        return "kernel", f"runtime auto: kernel parts, since {why}"
    return "podman", f"runtime auto: podman (installed, runs, image {image} present)"


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


def plan_limits(spec: ContainerSpec, network: str) -> tuple[list[str], dict[str, Any], list[str]]:
    """(podman run flags, the limits applied, one line per limit refused). A refused
    limit is replaced by the host's maximum (nofile, cpus) or left out (a sysctl)."""
    flags: list[str] = []
    applied: dict[str, Any] = {}
    refused: list[str] = []
    ncpu = os.cpu_count() or 1
    if spec.cpus is not None:
        cpus = spec.cpus
        if cpus > ncpu:
            refused.append(f"cpus={spec.cpus:g} refused: the host's maximum is {ncpu} CPUs; {ncpu} applied")
            cpus = float(ncpu)
        flags += ["--cpus", f"{cpus:g}"]
        applied["cpus"] = cpus
    if spec.memory is not None:
        # swap = memory: no swap, so the limit is the memory the server really has
        flags += ["--memory", str(spec.memory), "--memory-swap", str(spec.memory)]
        applied["memory"] = spec.memory
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = spec.nofile if spec.nofile is not None else hard
    if nofile > hard:
        refused.append(f"nofile={nofile} refused: the host's hard limit is {hard} (raising it needs "
                       f"CAP_SYS_RESOURCE); {hard} applied")
        nofile = hard
    flags += ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={NPROC}:{NPROC}"]
    applied["nofile"] = nofile
    for key, value in spec.sysctls.items():
        if network == "host":
            refused.append(f"{key}={value} refused with --network host (the host's namespace): the host's "
                           f"{sysctl.read(key)} applies")
        elif not sysctl.namespaced(key):
            refused.append(f"{key}={value} refused: not namespaced, the host's value {sysctl.read(key)} applies "
                           f"(set it on the host: sysctl/apply.sh)")
        else:
            flags += ["--sysctl", f"{key}={value}"]
            applied[key] = value
    return flags, applied, refused


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class PodmanServer:
    """`python -m fastc1k.serve` in the image, under podman: the ServerProcess interface
    (url, pid, argv, startup_line, alive, stop) plus the container's cgroup readings the
    monitor takes (cpu_quota, memory_limit, memory_used, throttled, oom_kills, fds)."""

    def __init__(self, spec: ContainerSpec, network: str = "publish", workers: int = 1,
                 extra: list[str] | None = None, image: str = IMAGE, run_id: str | None = None,
                 startup_timeout: float = 30.0, tag: str | None = None, address: str = "127.0.0.1",
                 cpuset: set[int] | None = None) -> None:
        """network: publish, host, or ns:NAME (join the named network namespace the caller
        made, as a CNI plugin does for a pod); address: where the server is reached (host:
        the address it binds; ns:NAME: the namespace's address); tag: the name's last part."""
        if network not in NETWORKS and not network.startswith("ns:"):
            raise ValueError(f"network must be one of {NETWORKS} or ns:NAME, got {network!r}")
        self.spec = spec
        self.network = network
        self.image = image
        self.run_id = run_id or new_run_id()
        self.name = f"fc1k-podman-{self.run_id}-{tag or network}"
        self.address = address
        self.startup_timeout = startup_timeout
        self.flags, self.applied, self.refused = plan_limits(spec, network)
        if cpuset:
            self.flags += ["--cpuset-cpus", ",".join(map(str, sorted(cpuset)))]
        self.port = _free_port(address) if network == "host" else CONTAINER_PORT
        bind = address if network == "host" else "0.0.0.0"
        self.server_argv = ["python", "-m", "fastc1k.serve", "--host", bind, "--port", str(self.port),
                            "--workers", str(workers), "--log-level", "warning", *(extra or [])]
        self.argv: list[str] = []
        self.url: str | None = None
        self.startup_line = ""
        self.image_id = ""
        self.container_id = ""
        self.pid = 0
        self.cpu_quota: float | None = self.applied.get("cpus")
        self.memory_limit: int | None = self.applied.get("memory")
        self.final: dict[str, Any] = {}
        self.cgroup: Cgroup | None = None
        self._ooms: int | None = None
        self._dir = ""

    def start(self) -> "PodmanServer":
        if self.network == "host":
            net = ["--network", "host"]
        elif self.network.startswith("ns:"):
            net = ["--network", f"ns:/run/netns/{self.network[3:]}"]
        else:
            net = ["-p", f"127.0.0.1::{CONTAINER_PORT}"]
        self.argv = [*PODMAN, "run", "-d", "--name", self.name, "--label", f"{LABEL}={self.run_id}",
                     "--health-cmd", "none", *net, *self.flags, self.image, *self.server_argv]
        # conmon (podman's monitor) writes a file "oom" into its working directory when the
        # kernel OOM-kills in the container: give it a directory of the run's own
        self._dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        r = podman(*self.argv[len(PODMAN):], timeout=60, cwd=self._dir)
        if r.returncode != 0:
            self.stop()
            raise PodmanError(f"podman run refused the container: {_why(r)}")
        self.container_id = r.stdout.strip().splitlines()[-1]
        try:
            info = json.loads(podman("inspect", self.name).stdout)[0]
            self.image_id = info["Image"]
            self.pid = int(info["State"]["Pid"])
            self.cgroup = Cgroup.of_process(self.pid)
            if self.network != "publish":
                self.url = f"http://{self.address}:{self.port}"
            else:
                hp = info["NetworkSettings"]["Ports"][f"{CONTAINER_PORT}/tcp"][0]
                self.url = f"http://{hp['HostIp']}:{hp['HostPort']}"
            self._wait_healthy()
        except Exception:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=1) as resp:
                    if resp.status == 200:
                        self.startup_line = self.logs().strip().splitlines()[0] if self.logs().strip() else ""
                        return
            except OSError:
                pass
            if not self.alive():
                break
            time.sleep(0.1)
        raise PodmanError(f"the server in {self.name} did not answer /api/health: {self.logs().strip()[-300:] or 'no output'}")

    def logs(self) -> str:
        r = podman("logs", self.name, timeout=10)
        return r.stdout + r.stderr

    def exit_reason(self) -> str:
        """How the container ended, for the report: its exit code, an OOM kill, its last log lines."""
        r = podman("inspect", "--format", "{{json .State}}", self.name, timeout=10)
        st = json.loads(r.stdout) if r.returncode == 0 else {}
        ooms = self.oom_kills()
        why = f"container {self.name} exited with code {st.get('ExitCode')}"
        if st.get("OOMKilled") or ooms:
            why += f", OOM-killed at its memory limit (the cgroup's oom_kill count: {ooms})"
        return f"{why}: {self.logs().strip()[-300:]}"

    def alive(self) -> bool:
        r = podman("inspect", "--format", "{{.State.Running}}", self.name, timeout=10)
        return r.returncode == 0 and r.stdout.strip() == "true"

    # -- the container's own cgroup -------------------------------------------------------------
    def memory_used(self) -> int | None:
        return self.cgroup.memory_used() if self.cgroup else None

    def throttled(self) -> int | None:
        return self.cgroup.throttled() if self.cgroup else None

    def cpu_seconds(self) -> float | None:
        """CPU time of everything in the container (the cgroup's own account)."""
        return self.cgroup.cpu_seconds() if self.cgroup else None

    def oom_kills(self) -> int | None:
        """Processes the kernel killed at the container's memory limit (the last count read
        once the container and its cgroup are gone)."""
        n = self.cgroup.oom_kills() if self.cgroup else None
        if n is not None:
            self._ooms = n
        return self._ooms

    def fds(self) -> int | None:
        """Open fds of all the container's processes."""
        return proc.num_fds(self.cgroup.pids()) if self.cgroup else None

    def cgroup_sample(self) -> dict[str, Any]:
        return {"cpu_s": self.cpu_seconds(), "throttled": self.throttled(), "memory": self.memory_used(),
                "oom_kills": self.oom_kills(), "fds": self.fds()}

    # -- the end -------------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> int | None:
        """Record how the container ended (OOM-killed, exit code, OOM count), then remove it."""
        if not self.container_id:
            podman("rm", "-f", self.name)
        elif not self.final:
            self.final = {"oom_kills": self.oom_kills()}
            r = podman("inspect", "--format", "{{json .State}}", self.name, timeout=10)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                self.final.update(running=st.get("Running"), oom_killed=st.get("OOMKilled"),
                                  exit_code=st.get("ExitCode"))
            podman("rm", "-f", "-t", str(int(timeout)), self.name, timeout=timeout + 30)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        return self.final.get("exit_code")


def remove_run(run_id: str) -> list[str]:
    """Remove every container, pod and network labelled with this run id; returns what
    would not go."""
    left = []
    for kind, ls in (("container", ("ps", "-a")), ("pod", ("pod", "ps")), ("network", ("network", "ls"))):
        for ident in podman(*ls, "-q", "--filter", f"label={LABEL}={run_id}").stdout.split():
            rm = podman(*(("rm",) if kind == "container" else (kind, "rm")), "-f", ident)
            if rm.returncode != 0:
                left.append(f"{kind} {ident}: {_why(rm)}")
    return left
