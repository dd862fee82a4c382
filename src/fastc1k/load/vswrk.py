"""Client CPU per request, fastc1k.load against ``wrk -t1``, pair by pair.

    python -m fastc1k.load.vswrk URL [--rounds 5] [--seconds 4] [--core 1]
        [--case c100] [--case c1000] [--case p16]

Each round runs wrk, then fastc1k.load (and the next round the other way round), both
pinned to one core, and takes CPU from getrusage(RUSAGE_CHILDREN) around each run, so
every process and thread of each tool counts. For fastc1k.load two figures are given:
its load processes alone from start to stop (``loop``: what the generator spends per
request) and the whole command including Python start-up (``all``). The server is
whatever URL points at (bench/METHOD.md §3: pin it to core 0).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile

CASES = {
    "c100": (100, 1),
    "c1000": (1000, 1),
    "p16": (100, 16),
}

PIPE_LUA = ("init = function() local r = {} for i=1,16 do r[i]=wrk.format() end "
            "req = table.concat(r) end request = function() return req end\n")


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def run_wrk(url, conns, depth, seconds, core, lua):
    cmd = ["taskset", "-c", str(core), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if depth > 1:
        cmd += ["-s", lua]
    u0, s0 = _children_cpu()
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    u1, s1 = _children_cpu()
    m = re.search(r"(\d+) requests in", out)
    n = int(m.group(1)) if m else 0
    lat = {k: v for k, v in re.findall(r"\s(50|99)%\s+(\S+)", out)}
    return {"requests": n, "cpu_us": (u1 - u0 + s1 - s0) / n * 1e6 if n else None,
            "user_us": (u1 - u0) / n * 1e6 if n else None, "rps": n / seconds,
            "p50": lat.get("50"), "p99": lat.get("99")}


def run_ours(url, conns, depth, seconds, core):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = ["taskset", "-c", str(core), sys.executable, "-m", "fastc1k.load", url,
               "-c", str(conns), "-d", f"{seconds}s", "--pipeline", str(depth), "-q",
               "--json", f.name]
        u0, s0 = _children_cpu()
        subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
        u1, s1 = _children_cpu()
        s = json.load(open(f.name))["summary"]
    n = s["requests"]
    return {"requests": n, "cpu_us": s["client_cpu_us_per_request"],
            "user_us": s["client_cpu_user_us_per_request"],
            "all_cpu_us": (u1 - u0 + s1 - s0) / n * 1e6 if n else None,
            "rps": s["req_per_s"], "p50": s["latency"]["p50_us"], "p99": s["latency"]["p99_us"],
            "errors": s["error_count"]}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastc1k.load.vswrk")
    p.add_argument("url")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--core", type=int, default=1)
    p.add_argument("--case", action="append", choices=sorted(CASES))
    a = p.parse_args(argv)
    lua = os.path.join(tempfile.mkdtemp(), "pipe16.lua")
    with open(lua, "w") as f:
        f.write(PIPE_LUA)
    report = {}
    for case in a.case or list(CASES):
        conns, depth = CASES[case]
        ratios, rows = [], []
        for r in range(a.rounds):
            order = ("wrk", "ours") if r % 2 == 0 else ("ours", "wrk")
            got = {}
            for who in order:
                got[who] = (run_wrk(a.url, conns, depth, a.seconds, a.core, lua) if who == "wrk"
                            else run_ours(a.url, conns, depth, a.seconds, a.core))
            rows.append(got)
            if got["wrk"]["cpu_us"] and got["ours"]["cpu_us"]:
                ratios.append(got["ours"]["cpu_us"] / got["wrk"]["cpu_us"])
            print(f"{case} round {r}: wrk {got['wrk']['cpu_us']:.3f} us/req (user "
                  f"{got['wrk']['user_us']:.3f}) {got['wrk']['rps']:,.0f} req/s p50 {got['wrk']['p50']} "
                  f"p99 {got['wrk']['p99']} | ours {got['ours']['cpu_us']:.3f} (user "
                  f"{got['ours']['user_us']:.3f}, all {got['ours']['all_cpu_us']:.3f}) "
                  f"{got['ours']['rps']:,.0f} req/s p50 {got['ours']['p50']}us p99 {got['ours']['p99']}us",
                  flush=True)
        med = statistics.median(ratios) if ratios else None
        report[case] = {"ratio_median": med, "ratios": ratios, "rounds": rows}
        print(f"{case}: ours/wrk CPU per request, median {med:.3f} of {[round(x, 3) for x in ratios]}",
              flush=True)
    return report


if __name__ == "__main__":
    main()
