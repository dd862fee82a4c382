"""The README's hardening figures (Hardening section), each written by a command between
markers, with its JSON under bench/results/ naming the command, the machine and the time.

    python -m bench.hardening soak --seconds 600      # make soak: one C worker at 70 % of its
                                                      # capacity, with churn (tests/test_soak.py)
    python -m bench.hardening differential --examples 100000
                                                      # make differential: the two parsers
                                                      # against each other (tests/test_differential.py)
    python -m bench.hardening fuzz --seconds 600      # make fuzz-figures: atheris on the normal
                                                      # build (fuzz/fuzz_parser.py)

Each writes bench/results/<name>.{json,md} and the README block <name>; the block states
the run's length, since a short run is a smaller claim than a long one.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .ceiling import machine
from .figures import _header, _save, run_child

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))


def _done(data: dict[str, Any], t0: float, readme: bool, md: str) -> None:
    data["wall_s"] = round(time.monotonic() - t0, 1)
    data["machine"]["loadavg_end"] = [f"{x:.2f}" for x in os.getloadavg()]
    _save(data["name"], data, md(data) if callable(md) else md, readme)


# --- soak -------------------------------------------------------------------------------------

def soak_markdown(data: dict[str, Any]) -> str:
    r, kib = data["result"], 1024
    rows = [
        ("verdict (tests/test_soak.py's check: no errors; RSS flat after the first quarter within 4 MiB; fds "
         "within the connections in use, then back to the baseline)",
         "**passed**" if data["passed"] else f"**failed**: {data.get('failure') or '?'}"),
        ("capacity (closed loop, 2 s, 64 connections)", f"{r['capacity_rps']:,.0f} req/s"),
        ("soak: open loop at 70 % of it, half the connections closed and reopened twice a second",
         f"{r['rate']:,.0f} req/s asked, {r['achieved_rps']:,.0f} achieved, for {r['duration']:.0f} s"),
        ("requests / errors / connections opened", f"{r['requests']:,} / {r['error_count']:,} / {r['connects']:,}"),
        ("p99 latency", f"{r['p99_us'] / 1000:.1f} ms"),
        ("worker RSS after the first quarter → at the end (largest growth)",
         f"{r['rss_warm'] / kib:,.0f} → {r['rss_end'] / kib:,.0f} KiB ({r['rss_max_growth'] / kib:+,.0f} KiB)"),
        ("fds before / at most during / after", f"{r['fds_baseline']} / {r['fds_max']} / {r['fds_after']}"),
    ]
    return "\n".join([_header(data), "", f"`{data['soak_command']}` ({r['engine']} engine, one worker):", "",
                      "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def soak(readme: bool, seconds: float, engine: str) -> None:
    t0 = time.monotonic()
    cmd = ["python", "tests/test_soak.py", "--engine", engine, "--duration", f"{seconds:g}"]
    data: dict[str, Any] = {"name": "soak", "command": f"make soak SOAK_SECONDS={seconds:g}   # = python -m "
                            f"bench.hardening soak --seconds {seconds:g}", "soak_command": " ".join(cmd),
                            "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="fastc1k-hardening-") as tmp:
        out = os.path.join(tmp, "soak.json")
        p = run_child([sys.executable, *cmd[1:], "--json", out], cwd=ROOT, env=_env())
        if not os.path.exists(out):
            raise SystemExit(f"bench.hardening soak: the soak failed ({p.returncode}): {p.stderr.strip()[-600:]}")
        with open(out) as f:
            data["result"] = json.load(f)
    data["passed"] = p.returncode == 0
    data["failure"] = next((ln.split(":", 1)[1].strip()[:300] for ln in p.stderr.splitlines()
                            if ln.startswith("SOAK FAILED:")), None)
    _done(data, t0, readme, soak_markdown)


# --- the parser differential -------------------------------------------------------------------

def parse_hypothesis_stats(text: str) -> dict[str, dict[str, Any]]:
    """Per test, from pytest's --hypothesis-show-statistics: examples passing, failing,
    invalid (summed over the phases) and why it stopped."""
    out: dict[str, dict[str, Any]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^(\S+::\S+):$", line.strip())
        if m:
            cur = out.setdefault(m.group(1).split("::", 1)[1], {"passing": 0, "failing": 0, "invalid": 0})
            continue
        m = re.search(r"([\d,]+) passing examples?, ([\d,]+) failing examples?, ([\d,]+) invalid examples?", line)
        if cur is not None and m:
            for k, v in zip(("passing", "failing", "invalid"), m.groups()):
                cur[k] += int(v.replace(",", ""))
        m = re.search(r"Stopped because (.+)", line)
        if cur is not None and m:
            cur["stopped_because"] = m.group(1).strip()
    return out


def differential_markdown(data: dict[str, Any]) -> str:
    rows = [f"| `{name}` | {s['passing']:,} | {s['failing']:,} | {s['invalid']:,} | {s.get('stopped_because', '-')} |"
            for name, s in data["tests"].items()]
    return "\n".join([_header(data), "", f"`{data['pytest_command']}`: {data['summary']} "
                      f"({data['wall_s']:.0f} s).", "",
                      "| test | passing examples | failing | invalid | stopped because |", "|---|---|---|---|---|"]
                     + rows) + "\n"


def differential(readme: bool, examples: int) -> None:
    t0 = time.monotonic()
    cmd = ["python", "-m", "pytest", "tests/test_differential.py", "-k", "agree", "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics"]
    data: dict[str, Any] = {"name": "differential", "command": f"make differential DIFF_EXAMPLES={examples}   # = "
                            f"python -m bench.hardening differential --examples {examples}",
                            "pytest_command": f"FASTC1K_DIFF_EXAMPLES={examples} " + " ".join(cmd),
                            "machine": machine(), "examples": examples}
    p = run_child([sys.executable, *cmd[1:]], cwd=ROOT, env={**_env(), "FASTC1K_DIFF_EXAMPLES": str(examples)})
    data["tests"] = parse_hypothesis_stats(p.stdout)
    tail = [ln for ln in p.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    data["summary"] = re.sub(r"^=+ | =+$", "", tail[-1]).strip() if tail else f"pytest exit status {p.returncode}"
    data["returncode"] = p.returncode
    if not data["tests"]:
        raise SystemExit(f"bench.hardening differential: no statistics ({p.returncode}): {p.stdout[-600:]}")
    _done(data, t0, readme, differential_markdown)


# --- fuzzing ------------------------------------------------------------------------------------

def parse_libfuzzer(text: str) -> dict[str, Any]:
    """Runs, seconds and the last coverage line of a libFuzzer (atheris) run."""
    out: dict[str, Any] = {}
    m = re.search(r"Done (\d+) runs in (\d+) second", text)
    if m:
        out["runs"], out["seconds"] = int(m.group(1)), int(m.group(2))
    cov = re.findall(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", text)
    if cov:
        out.update(cov=int(cov[-1][1]), ft=int(cov[-1][2]), corpus=int(cov[-1][3]))
    return out


def fuzz_markdown(data: dict[str, Any]) -> str:
    r = data["result"]
    found = "none" if data["returncode"] == 0 else f"**yes** (exit status {data['returncode']}: see the run's artifacts)"
    rows = [("inputs run", f"{r.get('runs', 0):,} in {r.get('seconds', 0)} s "
                           f"({r.get('runs', 0) / max(1, r.get('seconds', 1)):,.0f}/s)"),
            ("disagreement with the pure parser, undocumented status or crash", found),
            ("coverage at the end (atheris: Python-level edges; the C code is not instrumented in this build)",
             f"cov {r.get('cov', '-')}, features {r.get('ft', '-')}, corpus {r.get('corpus', '-')} inputs "
             f"(from an empty corpus, seed {data['seed']})")]
    return "\n".join([_header(data), "", f"`{data['fuzz_command']}`:", "", "| | |", "|---|---|"]
                     + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def fuzz(readme: bool, seconds: int, seed: int = 1) -> None:
    t0 = time.monotonic()
    data: dict[str, Any] = {"name": "fuzz", "command": f"make fuzz-figures FUZZ_SECONDS={seconds}   # = python -m "
                            f"bench.hardening fuzz --seconds {seconds}", "machine": machine(), "seed": seed}
    with tempfile.TemporaryDirectory(prefix="fastc1k-hardening-") as tmp:
        argv = ["fuzz/fuzz_parser.py", f"-max_total_time={seconds}", f"-seed={seed}", f"-artifact_prefix={tmp}/",
                f"{tmp}/corpus"]
        os.makedirs(f"{tmp}/corpus")
        data["fuzz_command"] = "python " + " ".join(argv).replace(tmp, "TMP")
        p = run_child([sys.executable, *argv], cwd=ROOT, env=_env())
    data["returncode"] = p.returncode
    data["result"] = parse_libfuzzer(p.stderr)
    if "runs" not in data["result"] and p.returncode == 0:
        raise SystemExit(f"bench.hardening fuzz: no 'Done N runs' line: {p.stderr.strip()[-600:]}")
    _done(data, t0, readme, fuzz_markdown)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hardening", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("soak", "differential", "fuzz"))
    ap.add_argument("--no-readme", action="store_true", help="write bench/results/ only")
    ap.add_argument("--seconds", type=float, help="soak [600] / fuzz [600]: the run's length")
    ap.add_argument("--engine", default="c", choices=("c", "python"), help="soak: the engine [c]")
    ap.add_argument("--examples", type=int, default=100_000, help="differential: examples per test [100000]")
    a = ap.parse_args(argv)
    if a.what == "soak":
        soak(not a.no_readme, a.seconds or 600.0, a.engine)
    elif a.what == "differential":
        differential(not a.no_readme, a.examples)
    else:
        fuzz(not a.no_readme, int(a.seconds or 600))
    return 0


if __name__ == "__main__":
    sys.exit(main())
