"""Static checks of deploy/k8s/*.yaml and deploy/compose/ (no cluster, no Docker here).

kubernetes-validate (the `lint` extra; its schemas ship in the wheel, no network) checks
the manifests against the Kubernetes API schema, strictly; the field tests below hold
the facts the schema cannot: limits, sysctls equal to sysctl/99-fastc1k.conf and all of
them namespaced, probes on /api/health, selectors that match, the HPA's target, and the
compose HAProxy config equal to what the scale-out suite measures.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml")

from fastc1k.capacity.scaleout.balancer import Backend, BalancerSpec, haproxy_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = sorted(glob.glob(os.path.join(ROOT, "deploy", "k8s", "*.yaml")))
COMPOSE = os.path.join(ROOT, "deploy", "compose", "docker-compose.scale.yml")
HAPROXY_CFG = os.path.join(ROOT, "deploy", "compose", "haproxy.cfg")
# Kernel settings a container cannot set: they are the host's (sysctl/99-fastc1k.conf says "host only").
HOST_ONLY = {"fs.file-max", "fs.nr_open", "net.core.netdev_max_backlog"}
# Kubernetes' safe set (the rest need the kubelet's --allowed-unsafe-sysctls).
K8S_SAFE = {"net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports"}


def conf_sysctls() -> dict[str, str]:
    out = {}
    with open(os.path.join(ROOT, "sysctl", "99-fastc1k.conf")) as f:
        for line in f:
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = " ".join(v.split())
    return out


def docs() -> dict[str, dict]:
    out = {}
    for p in K8S:
        with open(p) as f:
            for d in yaml.safe_load_all(f):
                if d:
                    out[d["kind"]] = d
    return out


def test_manifests_parse_and_cover_the_kinds():
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(docs())


def test_manifests_validate_against_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the lint extra)")
    for p in K8S:
        with open(p) as f:
            for d in yaml.safe_load_all(f):
                kv.validate(d, kv.latest_version(), strict=True)


def test_schema_validation_catches_a_wrong_field():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the lint extra)")
    d = docs()["Deployment"]
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["readynessProbe"] = c["readinessProbe"]
    with pytest.raises(kv.ValidationError):
        kv.validate(d, kv.latest_version(), strict=True)


def test_deployment_limits_probes_and_security():
    d = docs()["Deployment"]
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert c["resources"]["requests"] == c["resources"]["limits"]       # Guaranteed QoS
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert "command" not in c, "command would replace the image's tini entrypoint"
    cmd = c["args"]
    assert cmd[:3] == ["python", "-m", "fastc1k.serve"]
    assert cmd[cmd.index("--port") + 1] == str(port["http"]) and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        assert g["path"] == "/api/health" and g["port"] in (port["http"], "http")
    assert c["readinessProbe"]["periodSeconds"] <= 1 and c["readinessProbe"]["failureThreshold"] <= 2
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        assert re.search(r"^USER 10001", f.read(), re.M)
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["terminationGracePeriodSeconds"] > 10   # past graceful_timeout


def test_sysctls_are_namespaced_equal_to_the_tuning_file_and_unsafe_ones_documented():
    conf = conf_sysctls()
    pod = docs()["Deployment"]["spec"]["template"]["spec"]
    got = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert {"net.core.somaxconn", "net.ipv4.tcp_fin_timeout"} <= set(got)
    assert not set(got) & HOST_ONLY
    for k, v in got.items():
        assert isinstance(v, str) and v == conf[k], k
    with open(os.path.join(ROOT, "deploy", "k8s", "deployment.yaml")) as f:
        text = f.read()
    for k in set(got) - K8S_SAFE:
        assert k in text.split("--allowed-unsafe-sysctls")[1].split("\n")[0], f"{k}: unsafe, not documented"


def test_service_and_hpa_point_at_the_deployment():
    d = docs()
    dep, svc, hpa = d["Deployment"], d["Service"], d["HorizontalPodAutoscaler"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert all(p["targetPort"] in names for p in svc["spec"]["ports"])
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"], ref["apiVersion"]) == ("Deployment", dep["metadata"]["name"], dep["apiVersion"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    (m,) = hpa["spec"]["metrics"]
    assert m["resource"]["name"] == "cpu" and 0 < m["resource"]["target"]["averageUtilization"] <= 100
    assert 1 <= hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    if "PodDisruptionBudget" in d:
        assert d["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_compose_replicas_limits_and_sysctls():
    with open(COMPOSE) as f:
        c = yaml.safe_load(f)
    conf = conf_sysctls()
    srv, lb = c["services"]["server"], c["services"]["lb"]
    assert srv["deploy"]["replicas"] >= 2
    assert srv["deploy"]["resources"]["limits"] == {"cpus": "0.25", "memory": "256M"}
    assert srv["command"][srv["command"].index("--workers") + 1] == "1"
    for svc in c["services"].values():
        for k, v in (svc.get("sysctls") or {}).items():
            assert k not in HOST_ONLY and " ".join(str(v).split()) == conf[k], k
    assert lb["image"].startswith("haproxy:")
    mount = lb["volumes"][0].split(":")
    assert os.path.exists(os.path.join(os.path.dirname(COMPOSE), mount[0])) and mount[1].endswith("haproxy.cfg")
    with open(HAPROXY_CFG) as f:
        maxconn = int(re.search(r"^\s*maxconn (\d+)", f.read(), re.M).group(1))
    assert lb["ulimits"]["nofile"]["soft"] >= 2 * maxconn   # a client and a server fd per connection
    assert "8080:8080" in lb["ports"] and "lb:8080" in " ".join(c["services"]["load"]["command"])


def _directives(text: str) -> set[str]:
    return {" ".join(ln.split()) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}


def test_compose_haproxy_cfg_matches_what_the_suite_measures():
    with open(HAPROXY_CFG) as f:
        static = _directives(f.read())
    gen = _directives(haproxy_config([Backend("r0", "10.0.0.1", 8080)], ("0.0.0.0", 8080), BalancerSpec()))
    # Everything but the addresses and the server lines (static: server-template + DNS).
    skip = re.compile(r"^(bind|server|default-server|log) ")
    missing = {d for d in gen if not skip.match(d)} - static
    assert not missing, missing
    dflt = next(d for d in static if d.startswith("default-server"))
    assert "check inter 1000ms fall 2 rise 1" in dflt


HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


@pytest.mark.skipif(not HAPROXY, reason="haproxy not installed (apt-get install -y haproxy)")
def test_haproxy_accepts_the_compose_cfg():
    exe = HAPROXY
    r = subprocess.run([exe, "-c", "-f", HAPROXY_CFG], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
