"""``python -m fastc1k.load``: the command line over LoadSpec / LoadFarm."""
from __future__ import annotations

import argparse
import re
import signal
import sys
import time

from .._cli import ArgumentParser, UsageError
from .farm import LoadFarm, LoadSpec
from .cluster import ClusterError

_DUR = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(us|ms|s|m|h)?\s*$")
_DUR_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NUM = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kKmM])?\s*$")
_NUM_UNIT = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, None: 1}


def duration(text: str) -> float:
    m = _DUR.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30s, 500ms, 2m)")
    return float(m.group(1)) * _DUR_UNIT[m.group(2)]


def count(text: str) -> int:
    m = _NUM.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad count {text!r} (e.g. 1000, 10k)")
    return int(float(m.group(1)) * _NUM_UNIT[m.group(2)])


def rate(text: str) -> float:
    m = _NUM.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad rate {text!r} (e.g. 50000, 50k)")
    return float(m.group(1)) * _NUM_UNIT[m.group(2)]


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m fastc1k.load",
                description="HTTP/1.1 load generator: closed loop (like wrk) or open loop at "
                            "a fixed rate with coordinated-omission-corrected latency (like wrk2).")
    p.add_argument("url", help="http://host:port/path (IPv4)")
    p.add_argument("-c", "--connections", type=count, default=100, help="concurrent connections (default 100)")
    p.add_argument("-d", "--duration", type=duration, default=10.0, help="run time, e.g. 30s (default 10s)")
    p.add_argument("-R", "--rate", type=rate, default=None, help="open loop: total requests/s")
    p.add_argument("--pipeline", type=count, default=1, help="requests per connection per write (default 1)")
    p.add_argument("--processes", type=count, default=None, help="load processes (default: 1 per 15,000 connections)")
    p.add_argument("--source-ips", default=None, help="bind connections round-robin, e.g. 127.0.0.1-127.0.0.8")
    p.add_argument("--ramp", type=duration, default=0.0, help="open the connections over this time")
    p.add_argument("--timeout", type=duration, default=5.0, help="request timeout (default 5s)")
    p.add_argument("--connect-timeout", type=duration, default=2.0, help="connect timeout (default 2s)")
    p.add_argument("-m", "--method", default="GET")
    p.add_argument("--body", default=None, help="request body (sets Content-Length)")
    p.add_argument("-H", "--header", action="append", default=[], help="extra header 'Name: value'")
    p.add_argument("--json", dest="json_out", default=None, help="write the full result as JSON here")
    p.add_argument("--hdr-log", default=None, help="write per-second histograms (HdrHistogram log format)")
    p.add_argument("-q", "--quiet", action="store_true", help="no live line each second")
    c = p.add_argument_group("load from many machines (pip install 'fastc1k[cluster]')")
    c.add_argument("--cluster", default=None, metavar="tcp://HOST:8786",
                   help="run the load processes on this Dask scheduler's workers "
                        "(--processes: in all; default one per worker core)")
    c.add_argument("--on-lost", choices=("continue", "stop"), default=None,
                   help="a load machine lost mid-run: go on with the others (cluster default) or stop")
    c.add_argument("--max-clock-offset", type=duration, default=0.05,
                   help="refuse workers whose clocks differ from this one by more (default 50ms)")
    return p


def _ms(us) -> str:
    return f"{us / 1000:.2f} ms" if us < 1_000_000 else f"{us / 1e6:.2f} s"


def live_line(row: dict) -> str:
    errs = sum(row["errors"].values())
    return (f"{row['t'] + 1:>4}s  {row['achieved_rate']:>10,.0f} req/s  p99 {_ms(row['p99_us']):>10}"
            f"  errors {errs:>6}  open {row['connections_open']:>6}  cpu {row['client_cpu']:.2f}"
            f"  cpu-wait {row['client_cpu_wait']:.2f}")


def summary_text(s: dict) -> str:
    lat, svc = s["latency"], s["service_time"]
    out = [f"{s['requests']:,} requests in {s['duration_s']:.2f} s, {s['req_per_s']:,.0f} req/s, "
           f"{s['connections']} connections x {s['processes']} process(es), pipeline {s['pipeline']}, "
           f"{s['mode']} loop"]
    head = "latency (corrected)" if s["mode"] == "open" else "latency"
    for name, b in ((head, lat), ("service time", svc)) if s["mode"] == "open" else ((head, lat),):
        out.append(f"  {name}: p50 {_ms(b['p50_us'])}  p90 {_ms(b['p90_us'])}  p99 {_ms(b['p99_us'])}"
                   f"  p99.9 {_ms(b['p999_us'])}  p99.99 {_ms(b['p9999_us'])}  max {_ms(b['max_us'])}"
                   f"  mean {_ms(b['mean_us'])}")
    if s["mode"] == "open":
        out.append(f"  rate: intended {s['intended_rate']:,.0f}/s, offered {s['offered_rate']:,.0f}/s "
                   f"(due sends of open connections), achieved {s['achieved_rate']:,.0f}/s, "
                   f"late sends {s['late_sends']:,}, dropped {s['dropped_sends']:,}")
    errs = ", ".join(f"{k} {v:,}" for k, v in s["errors"].items()) or "none"
    out.append(f"  errors: {errs}")
    cpu = s["client_cpu_us_per_request"]
    out.append(f"  client CPU: {s['client_cpu_s']:.2f} s"
               + (f", {cpu:.2f} us/request (user {s['client_cpu_user_us_per_request']:.2f})" if cpu else ""))
    out.append(("  GENERATOR WAS THE BOTTLENECK: " if s["generator_bottleneck"] else "  generator: ")
               + s["generator_bottleneck_why"])
    if s["processes"] > 1 or s["executor"] != "local":
        out.append(workers_text(s))
    return "\n".join(out)


def workers_text(s: dict) -> str:
    """The per-process table, grouped by machine, with each machine's subtotal."""
    out = ["  load processes by machine:",
           f"    {'machine / worker':<34} {'requests':>12} {'conns':>7} {'intended/s':>11} "
           f"{'achieved/s':>11} {'cpu':>5} {'wait':>5}"]
    by = {}
    for r in s["workers"]:
        by.setdefault(r["machine"], []).append(r)
    for machine, rows in by.items():
        out.append(f"    {machine:<34} {sum(r['requests'] for r in rows):>12,} "
                   f"{sum(r['connections'] for r in rows):>7,}")
        for r in rows:
            intended = "-" if r["intended_rate"] is None else f"{r['intended_rate']:,.0f}"
            flags = " BOTTLENECK" * r["bottleneck"] + " LOST" * r["lost"]
            out.append(f"      {r['worker'] + ' #' + str(r['process']):<32} {r['requests']:>12,} "
                       f"{r['connections']:>7,} {intended:>11} {r['achieved_rate']:>11,.0f} "
                       f"{r['cpu']:>5.2f} {r['cpu_wait']:>5.2f}{flags}")
    for lost in s["lost"]:
        out.append(f"  LOST from second {lost['t']}: process {lost['process']} on {lost['machine']} "
                   f"({lost['connections']:,} connections): {lost['why']}")
    if s.get("clock_offsets"):
        out.append("  clock offsets: " + ", ".join(
            f"{a} {c['offset_ms']:+.1f} ms (+/- {c['error_ms']:.1f})"
            for a, c in s["clock_offsets"].items()))
    return "\n".join(out)


def executor(a):
    if not a.cluster:
        return None
    from .cluster import DaskExecutor
    return DaskExecutor(a.cluster, processes=a.processes, max_clock_offset=a.max_clock_offset)


def main(argv=None) -> int:
    p = parser()
    try:
        return _main(p, argv)
    except UsageError as exc:   # one line, exit 2, no usage dump
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 2


def _main(p: argparse.ArgumentParser, argv) -> int:
    a = p.parse_args(argv)
    headers = {}
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            p.error(f"bad header {h!r} (want 'Name: value')")
        headers[name.strip()] = value.strip()
    mix = None
    if a.method != "GET" or a.body is not None:
        mix = [(a.method, None, a.body, 1)]        # None: the URL's path
    try:
        spec = LoadSpec(url=a.url, connections=a.connections, duration=a.duration, rate=a.rate,
                        pipeline=a.pipeline, processes=a.processes, source_ips=a.source_ips,
                        ramp=a.ramp, connect_timeout=a.connect_timeout, request_timeout=a.timeout,
                        requests=mix, headers=headers)
    except ValueError as e:
        p.error(str(e))
    outs = {}
    for name in ("json_out", "hdr_log"):   # fail before the run, not after it
        path = getattr(a, name)
        if path:
            try:
                outs[name] = open(path, "w")
            except OSError as e:
                p.error(f"cannot write {path}: {e.strerror}")
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        farm = LoadFarm(spec, executor=executor(a), on_lost=a.on_lost).start()
    except (ClusterError, ValueError) as e:     # unreachable, refused, or a plan that does not fit
        p.error(str(e))
    except (OSError, RuntimeError) as e:
        sys.stderr.write(f"{p.prog}: error: {e}\n")
        return 1
    seen = 0
    end = farm.started_ns / 1e9 + spec.duration     # second 0 may begin a little later
    try:
        while not stop and not farm.errors and farm.running and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
            rows = farm.timeline()
            if not a.quiet:
                for row in rows[seen:]:
                    print(live_line(row), flush=True)
            seen = len(rows)
    finally:
        res = farm.stop()
    lost = {x["why"] for x in res.summary["lost"]}
    crashed = [e for e in farm.errors if e not in lost]
    if crashed:
        sys.stderr.write(f"{p.prog}: a load process failed:\n{crashed[0]}")
        return 1
    print(summary_text(res.summary), flush=True)
    if "json_out" in outs:
        with outs["json_out"] as f:
            f.write(res.to_json(indent=1))
    if "hdr_log" in outs:
        outs["hdr_log"].close()
        res.write_hdr_log(a.hdr_log)
    return 1 if farm.errors else 0     # a process lost under --on-lost stop
