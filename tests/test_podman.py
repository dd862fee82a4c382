"""The image and a real container: `make image` (scripts/image.sh), the image run by podman
with the --container limits and read through its own cgroup, and deploy/k8s run by
`podman kube play`.

Needs podman, runc and the image (`make image`; .ci/run builds it once): skipped without
them, failed instead when FASTC1K_REQUIRE_PODMAN=1 (CI). Everything a test creates is
named fc1k-podman-... or labelled fastc1k.run=<id>, and only that is removed.
"""
from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fastc1k.capacity.container import ContainerSpec
from fastc1k.host.cgroup import Cgroup

from _env import SRC  # noqa: E402  (the package this process imported)
from fastc1k.capacity.podman import (IMAGE, PODMAN, PodmanServer, new_run_id, plan_limits, podman, remove_run,
                                     unavailable)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def need_podman():
    why = unavailable()
    if why:
        if os.environ.get("FASTC1K_REQUIRE_PODMAN") == "1":
            pytest.fail(f"FASTC1K_REQUIRE_PODMAN=1 but {why}")
        pytest.skip(why)


@pytest.fixture
def run_id():
    rid = new_run_id()
    yield rid
    assert remove_run(rid) == []


def get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def test_image_serves_health_as_a_non_root_user_under_tini(run_id):
    name = f"fc1k-podman-{run_id}-image"
    r = podman("run", "-d", "--name", name, "--label", f"fastc1k.run={run_id}", "-p", "127.0.0.1::8080",
               "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1000:1000", IMAGE)
    assert r.returncode == 0, r.stderr
    port = json.loads(podman("inspect", name).stdout)[0]["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    deadline = time.monotonic() + 20
    while True:
        try:
            assert get(f"http://127.0.0.1:{port}/api/health") == (200, b'{"status":"ok"}')
            break
        except OSError:
            assert time.monotonic() < deadline, podman("logs", name).stderr
            time.sleep(0.2)
    ex = podman("exec", name, "sh", "-c", "id -u; tr '\\0' ' ' </proc/1/cmdline; echo; ulimit -n")
    uid, pid1, nofile = ex.stdout.splitlines()
    assert uid == "10001"
    assert pid1.split()[:2] == ["tini", "--"] and "fastc1k.serve" in pid1
    assert nofile == "4096"
    # the image's HEALTHCHECK, run the way podman runs it (no systemd timer here)
    assert podman("healthcheck", "run", name).returncode == 0
    cfg = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    assert cfg["Config"]["User"] == "10001:10001"
    assert "/api/health" in " ".join(cfg["Healthcheck"]["Test"])


def test_limits_applied_and_read_from_the_containers_own_cgroup(run_id):
    spec = ContainerSpec.parse("cpus=0.5,memory=256M,nofile=4096,somaxconn=8192")
    s = PodmanServer(spec, run_id=run_id).start()
    try:
        assert s.applied == {"cpus": 0.5, "memory": 256 << 20, "nofile": 4096, "net.core.somaxconn": "8192"}
        assert s.refused == []
        assert s.url.startswith("http://127.0.0.1:") and get(s.url + "/api/health")[0] == 200
        assert s.cgroup.quota() == (0.5, 256 << 20)
        assert podman("exec", s.name, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "8192"
        with open(f"/proc/{s.pid}/limits") as f:
            assert any(ln.startswith("Max open files") and ln.split()[3:5] == ["4096", "4096"] for ln in f)
        before = s.cgroup_sample()
        conns = [socket.create_connection(("127.0.0.1", int(s.url.rsplit(":", 1)[1]))) for _ in range(50)]
        for _ in range(20):
            get(s.url + "/api/health")
        after = s.cgroup_sample()
        for c in conns:
            c.close()
        assert after["fds"] >= before["fds"] + 50, (before, after)   # the server's processes' fds
        assert after["cpu_s"] > before["cpu_s"] > 0
        assert 1 << 20 < after["memory"] < 256 << 20
        assert after["oom_kills"] == 0 and after["throttled"] is not None
    finally:
        s.stop()
    assert s.final["oom_killed"] is False and s.final["oom_kills"] == 0


def test_a_refused_limit_is_one_line_naming_it_and_the_host_maximum():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spec = ContainerSpec.parse(f"cpus=0.5,nofile={hard + 1000},somaxconn=1024,net.core.netdev_max_backlog=5000")
    flags, applied, refused = plan_limits(spec, "publish")
    assert applied["nofile"] == hard and f"nofile={hard}:{hard}" in flags
    assert refused[0].startswith(f"nofile={hard + 1000} refused: the host's hard limit is {hard}")
    assert refused[1].startswith("net.core.netdev_max_backlog=5000 refused: not namespaced, the host's value")
    assert "net.core.netdev_max_backlog" not in applied and applied["net.core.somaxconn"] == "1024"
    # --network host: the container is in the host's namespace, no net sysctl of its own
    _, applied, refused = plan_limits(ContainerSpec.parse("somaxconn=1024"), "host")
    assert "net.core.somaxconn" not in applied
    assert refused == [f"net.core.somaxconn=1024 refused with --network host (the host's namespace): the host's "
                       f"{open('/proc/sys/net/core/somaxconn').read().strip()} applies"]
    assert all("\n" not in line for line in refused)


def test_the_memory_limit_ends_in_an_oom_kill_that_the_cgroup_counts(run_id):
    """Connections holding unfinished request lines (8 KB each in a read buffer) past a
    32 MiB limit: the kernel kills the worker, the cgroup counts it, the master restarts it."""
    s = PodmanServer(ContainerSpec.parse("cpus=1,memory=32M"), run_id=run_id).start()
    conns = []
    try:
        addr = ("127.0.0.1", int(s.url.rsplit(":", 1)[1]))
        failed = 0
        for i in range(6000):
            if i % 100 == 0 and s.oom_kills():
                break
            try:
                c = socket.create_connection(addr, timeout=5)
                conns.append(c)
                c.sendall(b"GET /" + b"a" * 8000)
            except OSError:   # reset or refused while a killed worker restarts; a slow host
                failed += 1
        deadline = time.monotonic() + 5
        while not s.oom_kills() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.oom_kills() >= 1, (len(conns), failed, s.cgroup_sample())
        # the master says so once it has reaped the worker: the cgroup counts the kill first
        deadline = time.monotonic() + 10
        while "killed by SIGKILL" not in s.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "killed by SIGKILL" in s.logs()
    finally:
        for c in conns:
            c.close()
        s.stop()
    assert s.final["oom_kills"] >= 1


def run_image_sh(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "image.sh")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WORK": str(tmp_path / "ctx"), **env})


def test_a_failed_build_prints_its_last_lines_exits_2_and_leaves_no_image(tmp_path, run_id):
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    (wh / "fastc1k-0-py3-none-any.whl").write_bytes(b"not a wheel")
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nCOPY wheelhouse /tmp/wheelhouse\n"
                                         "RUN echo half made > /half\nRUN echo the step that breaks && exit 7\n")
    image = f"localhost/fc1k-podman-{run_id}-broken:latest"
    images_before = podman("images", "-a", "-q", "--no-trunc").stdout.split()
    ctrs_before = podman("ps", "-a", "--external", "-q", "--no-trunc").stdout.split()
    r = run_image_sh(tmp_path, IMAGE=image, DOCKERFILE=str(tmp_path / "Dockerfile"), WHEELHOUSE=str(wh))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("make image: podman build failed; its last lines:")
    assert "the step that breaks" in r.stderr and "exit status 7" in r.stderr
    assert podman("image", "exists", image).returncode == 1
    assert set(podman("images", "-a", "-q", "--no-trunc").stdout.split()) <= set(images_before)
    assert set(podman("ps", "-a", "--external", "-q", "--no-trunc").stdout.split()) <= set(ctrs_before)


@pytest.fixture
def netns(run_id):
    """A network namespace of the test's own: podman inside it binds the manifest's host
    port (podman 4.3 maps containerPort to the same hostPort) there, not on the host."""
    name = f"fc1k-podman-{run_id}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "delete", name], check=True)


def podman_for_kube(dep: dict) -> tuple[dict, int]:
    """What podman 4.3.1 needs of the Deployment to play its replicas: the container's
    `ports` removed (it publishes each containerPort on the same host port, so the second
    replica fails "listen tcp4 :8080: bind: address already in use") and each httpGet
    probe's named port replaced by its number (it does not resolve names: `curl
    localhost:0`). Returns (the manifest, that port)."""
    c = dep["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in c.pop("ports")}
    for probe in ("readinessProbe", "livenessProbe"):
        get_ = c[probe]["httpGet"]
        get_["port"] = named.get(get_["port"], get_["port"])
    return dep, named["http"]


def test_the_kubernetes_deployment_plays_its_replicas_under_podman_kube_play(tmp_path, run_id, netns):
    dep = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    n = dep["spec"]["replicas"]
    live = dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    dep, port = podman_for_kube(dep)
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(dep))
    # The runtime's default rlimits, which a pod inherits (podman's fail here: no CAP_SYS_RESOURCE)
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=19000:19000", "nproc=1000:1000"]\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    net = f"fc1k-podman-{run_id}"
    inns = ["nsenter", f"--net=/run/netns/{netns}"]
    pause_before = podman("image", "exists", "localhost/podman-pause:4.3.1-0").returncode == 0
    version = tuple(int(x) for x in podman("version", "--format", "{{.Client.Version}}").stdout.split(".")[:2])

    def kube(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*inns, *PODMAN, *args], capture_output=True, text=True, env=env, timeout=90)

    assert kube("network", "create", "--label", f"fastc1k.run={run_id}", net).returncode == 0
    try:
        r = kube("kube", "play", "--network", net, str(manifest))
        assert r.returncode == 0, r.stderr
        pids = set()
        for i in range(n):
            pod, ctr = f"fastc1k-pod-{i}", f"fastc1k-pod-{i}-fastc1k"
            info = json.loads(podman("inspect", ctr).stdout)[0]
            infra = json.loads(podman("pod", "inspect", pod).stdout)["InfraContainerID"]
            ip = json.loads(podman("inspect", infra).stdout)[0]["NetworkSettings"]["Networks"][net]["IPAddress"]
            url = f"http://{ip}:{port}/api/health"   # what the kubelet's httpGet probe asks, at the pod's IP
            deadline = time.monotonic() + 30
            while True:
                h = subprocess.run([*inns, "curl", "-s", "-m", "2", url], capture_output=True, text=True)
                if h.stdout == '{"status":"ok"}':
                    break
                assert time.monotonic() < deadline, (h, podman("logs", ctr).stderr)
                time.sleep(0.2)
            pid = int(info["State"]["Pid"])
            pids.add(os.readlink(f"/proc/{pid}/ns/net"))   # each pod its own network namespace
            # the manifest's limits, in the container's cgroup and namespaces
            assert Cgroup.of_process(pid).quota() == (0.25, 256 << 20)
            ex = podman("exec", ctr, "sh", "-c", "id -u; cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/"
                        "tcp_fin_timeout; tr '\\0' ' ' </proc/1/cmdline; echo; touch /x 2>&1 || echo read-only")
            uid, somaxconn, fin, pid1, ro = ex.stdout.splitlines()[:5]
            assert uid == "10001"
            if version >= (4, 5):   # podman 4.3 ignores a pod's sysctls (podman#16711, supported from 4.5)
                assert somaxconn == "65535" and fin == "15"
            assert pid1.startswith("tini -- python -m fastc1k.serve")
            assert ro == "read-only" or "Read-only" in ro
            # podman makes its health check of the livenessProbe alone (readiness is not
            # kept), as `curl -f http://localhost:PORT/PATH`: run by systemd timers only
            # (none here) and never acted on in 4.3; the image has no curl, so it cannot pass
            hc = info["Config"]["Healthcheck"]
            assert f"http://localhost:{port}{live['httpGet']['path']}" in hc["Test"]
            assert (hc["Interval"], hc["Timeout"], hc["Retries"]) == (
                live["periodSeconds"] * 10**9, live["timeoutSeconds"] * 10**9, live["failureThreshold"])
        assert len(pids) == n
    finally:
        down = kube("kube", "down", str(manifest))
        kube("network", "rm", "-f", net)
        if not pause_before:
            podman("rmi", "localhost/podman-pause:4.3.1-0")
    assert down.returncode == 0, down.stderr
    assert all(podman("pod", "exists", f"fastc1k-pod-{i}").returncode == 1 for i in range(n))


def test_podman_for_kube_changes_only_what_podman_43_cannot_play():
    dep = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    orig = json.loads(json.dumps(dep))
    got, port = podman_for_kube(dep)
    c, o = got["spec"]["template"]["spec"]["containers"][0], orig["spec"]["template"]["spec"]["containers"][0]
    assert port == 8080 and "ports" not in c
    assert c["readinessProbe"]["httpGet"]["port"] == c["livenessProbe"]["httpGet"]["port"] == 8080
    for k in ("ports", "readinessProbe", "livenessProbe"):
        o.pop(k), c.pop(k, None)
    assert got == orig   # replicas, limits, securityContext, sysctls, args: as shipped


def test_docker_compose_runs_under_podman_compose(tmp_path, run_id, netns):
    """docker-compose.yml's server service by Debian's podman-compose, in the test's own
    network namespace (the file publishes 8080 on every address of its host)."""
    import shutil
    if shutil.which("podman-compose") is None:
        if os.environ.get("FASTC1K_REQUIRE_PODMAN") == "1":
            pytest.fail("podman-compose is not installed (apt-get install podman-compose)")
        pytest.skip("podman-compose is not installed (apt-get install podman-compose)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    override = tmp_path / "override.yml"   # the file's 1,048,576 fds are over this host's hard limit
    override.write_text(yaml.safe_dump({"services": {"server": {
        "ulimits": {"nofile": {"soft": hard, "hard": hard}, "nproc": {"soft": 1000, "hard": 1000}},
        "labels": {"fastc1k.run": run_id}}}}))
    project = f"fc1k-podman-{run_id}"
    inns = ["nsenter", f"--net=/run/netns/{netns}"]

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*inns, "podman-compose", f"--podman-args={' '.join(PODMAN[1:])}", "-p", project,
                               "-f", str(ROOT / "docker-compose.yml"), "-f", str(override), *args],
                              capture_output=True, text=True, timeout=90, cwd=ROOT)

    try:
        r = compose("up", "-d", "server")
        assert r.returncode == 0, r.stdout + r.stderr
        ctr = f"{project}_server_1"
        deadline = time.monotonic() + 20
        while True:
            h = subprocess.run([*inns, "curl", "-s", "-m", "2", "http://127.0.0.1:8080/api/health"],
                               capture_output=True, text=True)
            if h.stdout == '{"status":"ok"}':
                break
            assert time.monotonic() < deadline, (h, podman("logs", ctr).stderr)
            time.sleep(0.2)
        info = json.loads(podman("inspect", ctr).stdout)[0]
        assert Cgroup.of_process(int(info["State"]["Pid"])).quota() == (2.0, 1 << 30)
        ex = podman("exec", ctr, "sh", "-c", "cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/tcp_fin_timeout;"
                    " ulimit -n; id -u")
        assert ex.stdout.split() == ["65535", "15", str(hard), "10001"]
    finally:
        down = compose("down")
        podman("network", "rm", f"{project}_default")   # podman-compose 1.0.3's down leaves it
    assert down.returncode == 0, down.stdout + down.stderr
    assert podman("container", "exists", f"{project}_server_1").returncode == 1


def test_podman_unusable_is_one_line_saying_why(monkeypatch):
    assert unavailable("localhost/fc1k-podman-absent:latest") == \
        "no image localhost/fc1k-podman-absent:latest: build it with `make image`"
    import shutil
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "runc" else which(t))
    assert unavailable().startswith("runc is not installed (podman's default crun refuses")
    monkeypatch.setattr(shutil, "which", lambda t: None)
    assert unavailable() == "podman is not installed (apt-get install podman)"


def capacity(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict | None]:
    p = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "--serve", "--quiet", "--no-charts", "--out",
                        str(tmp_path), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")})
    path = tmp_path / "capacity-report.json"
    return p, (json.loads(path.read_text()) if path.exists() else None)


def test_the_capacity_ramp_against_the_image_names_runtime_image_and_limits(tmp_path):
    p, r = capacity(tmp_path, "--runtime", "podman", "--container", "cpus=0.5,memory=256M,nofile=4096,somaxconn=8192",
                    "--phases", "stages", "--stages", "20,50", "--stage-duration", "1", "--final-duration", "1",
                    "--max-clients", "50")
    assert p.returncode == 0, p.stderr
    image_id = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Id"]
    lines = p.stdout.splitlines()
    assert lines[1].startswith(f"runtime: podman, image {IMAGE} {image_id[:12]}, -p 127.0.0.1:")
    assert lines[2] == "limits applied: cpus=0.5, memory=256M, nofile=4096, net.core.somaxconn=8192"
    rt = r["runtime"]
    assert rt["image_id"] == image_id and rt["refused"] == [] and rt["conntrack"].startswith("conntrack: ")
    sm = [s for s in r["samples"] if "cpu_used" in s]
    assert sm and all(s["fd_limit"] == 4096 and s["mem_limit"] == 256 << 20 for s in sm)   # the container's own
    assert any(s["cgroup_memory"] > 0 for s in sm) and all(s["oom_kills"] == 0 for s in sm)
    assert r["phases"]["stages"]["stages"][-1]["ok"] > 0
    label = next(a for a in rt["argv"] if a.startswith("fastc1k.run="))
    assert podman("ps", "-a", "-q", "--filter", f"label={label}").stdout.strip() == ""   # removed


def test_the_report_names_the_oom_kill_at_the_containers_memory_limit(tmp_path):
    """Idle keep-alive connections cost the server about 2 KB each (its connection state and
    the kernel's socket, charged to the cgroup): 6,000 of them do not fit in 24 MiB."""
    p, r = capacity(tmp_path, "--runtime", "podman", "--container", "cpus=0.5,memory=24M", "--phases", "ramp",
                    "--ramp-clients", "6000", "--ramp-steps", "6", "--ramp-duration", "6", "--ramp-rate", "2000")
    assert r is not None, p.stderr
    assert r["oom_kills"] >= 1 and r["oom_at"]["clients"] <= 6000
    assert "OOM kill: " in p.stdout and "at the memory limit of 24 MiB" in p.stdout
    # the kernel killed workers (they ask to go first), the master restarted them: the run went on
    assert not r.get("aborted"), r["aborted"]
    b = r["phases"]["ramp"]["bottleneck"]
    assert b["resource"] in ("memory", "oom_kill") and re.search(r"of 24(\.0)? MiB", b["evidence"]), b


def test_runtime_podman_that_cannot_run_is_one_line_and_exit_2_and_auto_falls_back(tmp_path):
    absent = "localhost/fc1k-podman-absent:latest"
    p, r = capacity(tmp_path, "--runtime", "podman", "--image", absent, "--container", "cpus=0.5")
    assert p.returncode == 2 and r is None
    assert p.stderr == f"fastc1k.capacity: error: --runtime podman: no image {absent}: build it with `make image`\n"
    p, r = capacity(tmp_path, "--image", absent, "--container", "nofile=1024", "--phases", "stages",
                    "--stages", "10", "--stage-duration", "1", "--final-duration", "1", "--max-clients", "10")
    assert p.returncode == 0, p.stderr
    assert r["runtime"]["name"] == "kernel"
    assert f"runtime auto: kernel parts, since no image {absent}: build it with `make image`" in p.stdout


def test_conntrack_max_is_raised_for_the_run_and_restored():
    from fastc1k.capacity.podman import conntrack_for_run
    from fastc1k.host import sysctl
    before = sysctl.read_int("net.netfilter.nf_conntrack_max")
    if before is None:
        pytest.skip("no conntrack module loaded")
    with conntrack_for_run(before - 1) as ct:
        assert ct.how == f"conntrack: nf_conntrack_max {before} already covers {before - 1} connections"
        assert sysctl.read_int("net.netfilter.nf_conntrack_max") == before
    with conntrack_for_run(before + 4096) as ct:
        assert sysctl.read_int("net.netfilter.nf_conntrack_max") == before + 4096
    assert sysctl.read_int("net.netfilter.nf_conntrack_max") == before
    assert ct.how == f"conntrack: nf_conntrack_max raised {before} -> {before + 4096} for the run, then restored"


# --------------------------------------------------------------------------- scale-out on podman replicas

def _left_of(run_id: str) -> list[str]:
    """Containers labelled with a fleet's run id, and namespaces named after it."""
    ps = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label=fastc1k.run={run_id}").stdout.split()
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return ps + [ln for ln in ns.splitlines() if run_id in ln]


def test_a_podman_fleet_runs_the_image_with_each_replicas_limits_in_its_own_namespace():
    from fastc1k.capacity import scaleout as S
    spec = S.ReplicaSpec(ContainerSpec.parse("cpus=0.25,memory=128M,nofile=4096,somaxconn=1024"),
                         runtime="podman")
    fleet = S.Fleet(2, spec)
    image_id = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    try:
        fleet.start()
        assert len({b.host for b in fleet.backends()}) == 2
        for r in fleet.replicas:
            info = json.loads(podman("inspect", r.server.name).stdout)[0]
            assert info["Image"] == image_id and info["Config"]["Labels"]["fastc1k.run"] == fleet.run_id
            assert info["HostConfig"]["NetworkMode"] == f"ns:/run/netns/{r.net.name}"
            assert r.cgroup.quota() == (0.25, 128 << 20)
            assert podman("exec", r.server.name, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "1024"
            assert podman("exec", r.server.name, "sh", "-c", "ulimit -n").stdout.strip() == "4096"
            assert get(f"http://{r.host}:{r.backend.port}/api/health")[0] == 200
            assert r.pids() and set(r.pids()) <= set(r.cgroup.pids())
        r0 = fleet.replicas[0]   # --fault freeze: the container's own freezer cgroup
        r0.freeze()
        with pytest.raises(OSError):
            get(f"http://{r0.host}:{r0.backend.port}/api/health", timeout=0.5)
        r0.cgroup.freeze(False)
        assert get(f"http://{r0.host}:{r0.backend.port}/api/health")[0] == 200
        r0.freeze()   # stop() thaws before it removes
    finally:
        fleet.stop()
    assert _left_of(fleet.run_id) == []


def test_scaleout_on_two_podman_replicas_spreads_traffic_survives_a_kill_and_leaves_nothing(tmp_path):
    """The whole run, tiny: 2 podman replicas behind HAProxy, one 1 s stage, r0 killed
    (its container's init, SIGKILL) under load; about 15 s."""
    from fastc1k.capacity import scaleout as S
    from fastc1k.capacity import analysis as A
    from fastc1k.capacity.stages import RunConfig
    run = RunConfig(phases=("stages",), stages=(20,), stage_s=1, final_stage_s=1, max_clients=20,
                    thresholds=A.Thresholds(break_p99_ms=500.0))
    cfg = S.ScaleoutConfig(replicas=(2,), container=ContainerSpec.parse("cpus=0.25,memory=128M"), run=run,
                           fault="kill", fault_clients=10, fault_before_s=1, fault_after_s=2, runtime="podman")
    rep = S.run(cfg)
    assert S.running == []
    res = rep["results"][0]
    per = res["balancer"]["per_server_requests"]
    assert set(per) == {"r0", "r1"} and all(v > 0 for v in per.values()), per
    rt = rep["runtime"]
    image_id = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    assert rt["name"] == "podman" and rt["image_id"] == image_id and len(rt["containers"]) == 2 + 2
    assert "podman" in rep["replica_desc"]
    f = rep["fault"]
    assert "error" not in f, f
    assert f["marked_down_s"] is not None and f["throughput_after"] > 0
    for run_id in rt["run_ids"]:
        assert _left_of(run_id) == []


def test_scaleout_runtime_podman_that_cannot_run_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-m", "fastc1k.capacity", "scaleout", "--replicas", "1", "--runtime", "podman",
                        "--image", "localhost/fc1k-podman-none:x", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("fastc1k.capacity.scaleout: error: --runtime podman: no image "
                                                 "localhost/fc1k-podman-none:x: build it with `make image`")


@pytest.mark.slow
def test_the_kernel_balancer_spreads_connections_over_two_podman_replicas_and_leaves_nothing(tmp_path):
    """The side-by-side CLI with the kernel (nftables) balancer in front of 2 podman
    replicas in the node's replica namespaces; ~30 s."""
    p = subprocess.Popen([sys.executable, "-m", "fastc1k.capacity.scaleout", "--replicas", "2", "--balancer", "kernel",
                          "--runtime", "podman", "--container", "cpus=0.2,memory=256M", "--quick", "--stages", "40",
                          "--max-clients", "40", "--no-recovery", "--fault", "kill", "--fault-duration", "3",
                          "--pick", "inc", "--out", str(tmp_path), "--no-charts", "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err[-2000:]
    rep = json.loads((tmp_path / "scaleout.json").read_text())
    assert rep["runtime"]["name"] == "podman" and len(rep["runtime"]["containers"]) == 4
    (res,) = rep["results"]
    own = res["replica_counters"]   # each container's own /metrics
    assert set(own) == {"r0", "r1"} and all(v["requests"] > 100 for v in own.values()), own
    assert res["balancer"]["per_server_requests"] == {"r0": 20, "r1": 20}   # round robin, by the rules' counters
    (f,) = rep["faults"]
    assert f["mode"] == "kill" and f["marked_down_s"] is not None and f["marked_down_s"] < 1.0
    for run_id in rep["runtime"]["run_ids"]:
        assert _left_of(run_id) == []
    assert f"fc1k-kbal-{p.pid}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
