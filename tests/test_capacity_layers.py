"""The capacity suite's shape: one command line with a subcommand per tool (today's flag
forms routed to them), and modules in layers: no import cycle, no import of another
module's private names, no library module importing from a __main__, no file over 700
lines."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fastc1k.capacity import cli

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "fastc1k"
LAYERED = ("capacity", "host")          # the folders this file holds to the rules


def _run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


# --------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv,tool", [
    ([], "ramp"), (["--serve"], "ramp"), (["--target", "http://127.0.0.1:1"], "ramp"),
    (["--serve", "--replicas", "1,2"], "scaleout"), (["--replicas=1,2"], "scaleout"),
    (["--max-connections-probe", "--connections", "auto"], "probe"),
    (["ramp", "--serve"], "ramp"), (["scaleout", "--replicas", "2"], "scaleout"), (["probe"], "probe"),
])
def test_old_flag_forms_and_subcommands_route_to_their_tool(argv, tool):
    routed = cli.route(argv)
    assert routed[0] == tool
    assert "--max-connections-probe" not in routed and (tool == "ramp" or "--serve" not in routed)


def test_every_subcommand_parses_its_flags():
    p = cli.build_parser()
    a = p.parse_args(["ramp", "--serve", "--stages", "10,20", "--break-p99-ms", "none"])
    assert a.tool == "ramp" and a.stages == (10, 20) and a.break_p99_ms is None
    a = p.parse_args(["scaleout", "--replicas", "1,3", "--fault", "freeze", "--stages", "5"])
    assert a.tool == "scaleout" and a.replicas == (1, 3) and a.fault == "freeze" and a.stages == (5,)
    a = p.parse_args(["probe", "--connections", "auto", "--source-ips", "127.0.0.2-127.0.0.3"])
    assert a.tool == "probe" and a.connections == "auto"


def test_help_of_the_suite_and_of_each_tool():
    top = _run("fastc1k.capacity", "--help")
    assert top.returncode == 0 and all(t in top.stdout for t in ("ramp", "scaleout", "probe")), top.stderr
    for tool, flag in (("ramp", "--serve"), ("scaleout", "--replicas"), ("probe", "--connections")):
        r = _run("fastc1k.capacity", tool, "--help")
        assert r.returncode == 0 and f"python -m fastc1k.capacity {tool}" in r.stdout and flag in r.stdout, r.stderr
    # the tools' own module entry points (README, Makefile)
    for mod, flag in (("fastc1k.capacity.scaleout", "--replicas"), ("fastc1k.capacity.probe", "--connections")):
        r = _run(mod, "--help")
        assert r.returncode == 0 and f"python -m {mod}" in r.stdout and flag in r.stdout, r.stderr


@pytest.mark.parametrize("argv,prefix,msg", [
    (["ramp", "--serve", "--bogus"], "fastc1k.capacity", "unrecognized arguments: --bogus"),
    (["--serve", "--stages", "3,1"], "fastc1k.capacity", "increasing"),
    (["scaleout", "--replicas", "0"], "fastc1k.capacity.scaleout", "argument --replicas"),
    (["--replicas", "2", "--container", "x=1"], "fastc1k.capacity.scaleout", "unknown key 'x'"),
    (["probe", "--connections", "lots"], "fastc1k.capacity.probe", "--connections must be a number"),
    (["--max-connections-probe", "--source-ips", "127.0.0.300"], "fastc1k.capacity.probe", "bad source address"),
    (["frobnicate", "--serve"], "fastc1k.capacity", "unknown tool 'frobnicate': choose ramp, scaleout, probe"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, prefix, msg):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prefix}: error:") and msg in err and err.count("\n") == 1, err


def test_probe_plan_through_each_entry_point():
    for argv in (["fastc1k.capacity", "probe"], ["fastc1k.capacity.probe"], ["fastc1k.capacity", "--serve",
                                                                            "--max-connections-probe"]):
        r = _run(*argv, "--connections", "1000", "--plan")
        assert r.returncode == 0 and '"connections": 1000' in r.stdout, (argv, r.stderr)


# --------------------------------------------------------------------------- the layers

def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(line, imported module, names taken from it) of each import of a fastc1k module."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastc1k"):
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            if not base.startswith("fastc1k"):
                continue
            for a in node.names:   # `from pkg import submodule` imports the submodule
                sub = f"{base}.{a.name}"
                yield (node.lineno, sub, []) if sub in MODULES else (node.lineno, base, [a.name])


def _layered() -> list[str]:
    return sorted(m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in LAYERED)


def test_every_layered_module_imports():
    import importlib
    for m in _layered():
        if not m.endswith("__main__"):
            importlib.import_module(m)


def test_no_cycle_no_private_names_no_import_from_a_main():
    graph: dict[str, set[str]] = {}
    bad = []
    for m in _layered():
        graph[m] = set()
        for line, target, names in _imports(m, MODULES[m]):
            graph[m].add(target)
            where = f"{MODULES[m].relative_to(SRC)}:{line}"
            if target.endswith("__main__"):
                bad.append(f"{where}: imports from {target}")
            bad += [f"{where}: imports the private {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert bad == []
    assert _cycle(graph) is None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (depth first), or None."""
    state: dict[str, int] = {}        # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t in graph and not state.get(t) and (c := visit(t, path + [t])):
                return c
        state[m] = 2
        return None
    for m in graph:
        if not state.get(m) and (c := visit(m, [m])):
            return c
    return None


def test_the_checks_see_what_they_look_for(tmp_path, monkeypatch):
    """The rules above see a cycle, a private name and a __main__ import."""
    names = {"fastc1k.capacity.x": "from .y import _hidden\nfrom .__main__ import main\n",
             "fastc1k.capacity.y": "from . import x\n"}
    found = []
    for n, text in names.items():
        p = tmp_path / (n.rsplit(".", 1)[1] + ".py")
        p.write_text(text)
        monkeypatch.setitem(MODULES, n, p)
    monkeypatch.setitem(MODULES, "fastc1k.capacity.__main__", tmp_path / "__main__.py")
    for n in names:
        found += [(t, ns) for _, t, ns in _imports(n, MODULES[n])]
    assert ("fastc1k.capacity.y", ["_hidden"]) in found and ("fastc1k.capacity.__main__", ["main"]) in found
    assert ("fastc1k.capacity.x", []) in found
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_file_over_700_lines_without_a_reason():
    for m in _layered():
        text = MODULES[m].read_text()
        assert text.count("\n") <= 700 or "over 700 lines" in text[:2000], MODULES[m]
