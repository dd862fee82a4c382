"""The WSGI bench: `python -m bench.wsgi_bench` (about 12 minutes with the defaults).

fastc1k's two engines serving a WSGI app (`--wsgi`; the C engine on its default epoll
backend and on io_uring, `--backend io_uring`), beside the WSGI servers people run:
gunicorn (sync worker), granian (`--interface wsgi`), fastpysgi, waitress, and bjoern when
it is installed (it needs libev to build). One worker each, the same app each time
(bench/wsgi_app.py: `hello`, a plain PEP 3333 app, then `flask_app`, Flask), the
ceiling's method (bench/METHOD.md): every server pinned to core 0 in a 0.5-CPU quota of
its own, keep-alive c=100, pair-by-pair rounds (A B C ..., A B C ...); a figure is the
median over rounds, a ratio the median of per-round ratios (min–max). Before any load,
memory per idle keep-alive connection on the fresh hello servers. For each app, the app
alone (called in-process by this interpreter, no server, on the servers' core): what of a
request is the app's, what is the server's, and what that leaves of the goal (`reach`): no
server can cost less than the app alone plus its own per-request cost, seen on hello. With
`--in-situ`, each server then serves the app once more wrapped by bench.wsgi_app.timed,
which counts the app's own CPU per call as that server runs it: an app runs slower between
a server's system calls than in a tight loop, and this splits a request into the app's
time there and the server's own.

Writes bench/results/wsgi.json and wsgi.md, and the README block between
<!-- wsgi:start --> and <!-- wsgi:end -->.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import statistics
import sys
import time
from pathlib import Path

from fastc1k._readme import write_block

from . import ceiling, drivers, workloads
from .servers import BENCH, ServerSpec, RunningServer, HEALTH

__all__ = ["WsgiSpec", "WSGI_SERVERS", "run", "markdown", "main"]

RESULTS = BENCH / "results"
COMMAND = "PYTHONPATH=src python -m bench.wsgi_bench"
APPS = ("hello", "flask_app")
WSGI_SERVERS = ("c", "c-uring", "python", "gunicorn", "granian", "fastpysgi", "waitress", "bjoern")
OURS = ("c", "c-uring", "python")
LABELS = {"c": "fastc1k C engine, epoll (default)", "c-uring": "fastc1k C engine, io_uring",
          "python": "fastc1k pure Python", "gunicorn": "gunicorn (sync)",
          "granian": "granian (wsgi)", "fastpysgi": "fastpysgi", "waitress": "waitress", "bjoern": "bjoern"}
WORKLOAD = workloads.Workload("wsgi-c100", "WSGI, keep-alive c=100, 0.5-CPU quota", connections=100)
# servers the idle-memory figure does not apply to, and why
NO_IDLE = {"gunicorn": "gunicorn's sync worker closes every connection after its response",
           "waitress": "waitress polls with select(), which fails past fd 1024 (the connections would kill it)"}


@dataclasses.dataclass(frozen=True)
class WsgiSpec(ServerSpec):
    server: str = ""
    app: str = "hello"

    def unavailable(self) -> str | None:
        if self.server in OURS:
            return ServerSpec(self.server, "", frozenset()).unavailable()  # c-uring: io_uring usable here?
        module = {"granian": "granian", "gunicorn": "gunicorn", "fastpysgi": "fastpysgi",
                  "waitress": "waitress", "bjoern": "bjoern"}[self.server]
        if importlib.util.find_spec(module) is None:
            extra = " (needs libev-dev to build)" if module == "bjoern" else ""
            return f"{module} not installed (pip install {module}){extra}"
        if self.app.startswith("flask_app") and importlib.util.find_spec("flask") is None:
            return "flask not installed"
        return None

    def command(self, port: int, workdir: Path) -> list[str]:
        py, target = sys.executable, f"bench.wsgi_app:{self.app}"
        s = self.server
        if s in OURS:
            engine = ["c", "--backend", "io_uring"] if s == "c-uring" else [s]   # as bench.servers' c-uring
            return [py, str(BENCH / "serve_fastc1k.py"), "--engine", *engine, "--port", str(port), "--wsgi", target]
        if s == "gunicorn":
            return [py, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}", "--backlog", "16384",
                    "--log-level", "warning", target]
        if s == "granian":
            return [py, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--runtime-mode", "st", "--runtime-threads", "1", "--blocking-threads", "1",
                    "--backlog", "16384", "--log-level", "warning", "--no-ws", target]
        if s == "waitress":
            return [py, "-m", "waitress", "--host=127.0.0.1", f"--port={port}", "--backlog=16384",
                    "--connection-limit=20000", target]
        if s in ("fastpysgi", "bjoern"):
            return [py, "-m", "bench.wsgi_app", s, self.app, str(port)]
        raise ValueError(s)

    def conn_struct_bytes(self) -> int | None:
        return ServerSpec(self.server, "", frozenset()).conn_struct_bytes() if self.server in ("c", "c-uring") else None


def spec(server: str, app: str) -> WsgiSpec:
    return WsgiSpec(f"wsgi-{server}-{app.split('_')[0]}", LABELS[server], frozenset({HEALTH}), server=server, app=app)


def app_alone_us(app_name: str, seconds: float = 0.5) -> float:
    """The app's own CPU per request: called in-process, no server (environ copied from one
    built once; the iterable consumed and closed), median of 3 batches of `seconds` each, on
    the servers' core (servers.py pins them to core 0)."""
    import os
    import wsgiref.util
    from . import wsgi_app
    app = getattr(wsgi_app, app_name)
    base: dict = {"REQUEST_METHOD": "GET", "PATH_INFO": HEALTH, "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
                  "HTTP_HOST": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000"}
    wsgiref.util.setup_testing_defaults(base)

    def start_response(status, headers, exc_info=None):
        return None
    out = []
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        for _ in range(3):
            t0, calls = time.process_time(), 0
            while time.process_time() - t0 < seconds:
                calls += 1
                env = base.copy()
                env["wsgi.input"] = io.BytesIO(b"")
                it = app(env, start_response)
                for _chunk in it:
                    pass
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            out.append((time.process_time() - t0) / calls * 1e6)
    finally:
        os.sched_setaffinity(0, cpus)
    return statistics.median(out)


def _read_in_situ(s: RunningServer) -> dict:
    """The timed app's count since the last read (bench.wsgi_app.timed), and a new count."""
    import urllib.request
    from .wsgi_app import IN_SITU
    with urllib.request.urlopen(s.url(IN_SITU), timeout=10) as r:
        return json.load(r)


def in_rounds(running: list[RunningServer], rounds: int, duration: float, warmup: float, run_one, drop):
    """The method's rounds (bench/METHOD.md §4): every server of `running` in turn, A B C,
    A B C ..., after one warm-up pass of `warmup` s (none if 0); yields each round's
    {server: run_one(s, seconds)}. A server whose run raises RuntimeError leaves `running`
    and the rounds to come: drop(s, exc) says why."""
    for r in range(rounds + (1 if warmup else 0)):
        keep = r >= (1 if warmup else 0)
        row = {}
        for s in list(running):
            try:
                m = run_one(s, duration if keep else warmup)
            except RuntimeError as exc:
                running.remove(s)
                drop(s, exc)
                continue
            row[s.spec.server] = m
        if keep:
            yield row


def in_situ(servers: list[str], app: str, rounds: int, duration: float, log=print, warmup: float = 1.0) -> dict:
    """Per server, serving `app` wrapped by bench.wsgi_app.timed, in rounds as the main ones
    (a stretch of a busy host then spoils one round of each, not every run of one server),
    medians: the app's CPU per call as it ran there (`app_us`, one clock read taken off), and
    the server's CPU per request in the same runs (`cpu_us`: above the main rounds', by the
    wrapper's own work). A server that fails is left out, with why."""
    running: list[RunningServer] = []
    rows: dict[str, list[dict]] = {}

    def timed_run(s: RunningServer, seconds: float) -> dict:
        try:
            _read_in_situ(s)
            m = workloads.measure_run(s, WORKLOAD, duration=seconds, max_requests=0)
            st = _read_in_situ(s)
        except (OSError, ValueError) as exc:  # (the count's GET)
            raise RuntimeError(exc) from exc
        return {"cpu_us": m["cpu_us"], "calls": st["calls"],
                "app_us": (st["app_ns"] / st["calls"] - st["timer_ns"]) / 1000 if st["calls"] else None}

    def drop(s: RunningServer, exc: Exception) -> None:
        log(f"in situ {s.spec.server} ({app}): failed ({exc}); its log: {s.log_tail()[-200:]!r}")
        s.stop()
        rows.pop(s.spec.server)
    try:
        for n in servers:
            try:
                running.append(RunningServer(spec(n, f"{app}_timed")))
                rows[n] = []
            except RuntimeError as exc:
                log(f"in situ {n} ({app}): not measured ({exc})")
        for row in in_rounds(running, rounds, duration, warmup, timed_run, drop):
            for n, m in row.items():
                if m["calls"]:
                    rows[n].append(m)
    finally:
        for s in running:
            s.stop()
    out = {}
    for n, rs in rows.items():
        if rs:
            cpu, app_us = (statistics.median(r[k] for r in rs) for k in ("cpu_us", "app_us"))
            out[n] = {"cpu_us": cpu, "app_us": app_us, "calls": sum(r["calls"] for r in rs)}
            log(f"in situ {n} ({app}): the app {app_us:.2f} us/call ({cpu:.2f} us/request with the wrapper)")
    return out


def run(servers: list[str], rounds: int, duration: float, idle: int, log=print, warmup: float = 1.0,
        apps: tuple[str, ...] = APPS, situ: bool = False) -> dict:
    why = drivers.driver_missing()
    if why:
        raise SystemExit(f"bench.wsgi_bench: {why}")
    report = {"machine": ceiling.machine(), "servers": servers, "rounds": rounds, "round_s": duration,
              "workload": WORKLOAD.title, "apps": {}, "skipped": {}, "in_situ": situ}
    for app in apps:
        specs = []
        for n in servers:
            sp = spec(n, app)
            why = sp.unavailable()
            if why:
                report["skipped"].setdefault(n, why)
                log(f"skip {n} ({app}): {why}")
            else:
                specs.append(sp)
        running: list[RunningServer] = []
        res: dict = {"alone_us": app_alone_us(app), "memory": {}, "rounds": [], "summary": {}}
        try:
            for sp in specs:
                try:
                    running.append(RunningServer(sp))
                except RuntimeError as exc:
                    report["skipped"].setdefault(sp.server, str(exc))
                    log(f"skip {sp.server} ({app}): {exc}")
            log(f"{app}: servers up: {', '.join(s.spec.server for s in running)}; app alone "
                f"{res['alone_us']:.2f} us/call")
            if idle and app == "hello":
                for s in running:
                    if s.spec.server in NO_IDLE:
                        continue
                    try:
                        res["memory"][s.spec.server] = workloads.idle_memory(s, idle)
                    except (RuntimeError, OSError) as exc:
                        log(f"idle memory {s.spec.server}: failed ({exc})")
                        continue
                    log(f"idle memory {s.spec.server}: {res['memory'][s.spec.server]['rss_per_conn']:.0f} B/conn")
            def drop(s: RunningServer, exc: Exception) -> None:
                """A server that fails (exits, refuses) leaves the rounds, the earlier ones too, with why."""
                why = f"failed during the {app} runs: {exc}; its log: {s.log_tail()[-200:]!r}"
                report["skipped"].setdefault(s.spec.server, why)
                log(f"drop {s.spec.server}: {why}")
                for row in res["rounds"]:
                    row.pop(s.spec.server, None)

            def plain_run(s: RunningServer, seconds: float) -> dict:
                return workloads.measure_run(s, WORKLOAD, duration=seconds, max_requests=0)
            for row in in_rounds(list(running), rounds, duration, warmup, plain_run, drop):
                res["rounds"].append(row)
                log(f"{app} round {len(res['rounds'])}/{rounds}: " + "  ".join(
                    f"{n} {m['cpu_us']:.1f}us {m['rps'] / 1000:.1f}k/s" for n, m in row.items()))
        finally:
            for s in running:
                s.stop()
        res["summary"] = summarize(res["rounds"], res["alone_us"])
        if situ:
            res["in_situ"] = in_situ([n for n in servers if n in res["summary"]], app, rounds, duration, log)
        report["apps"][app] = res
    for app, res in report["apps"].items():
        res["reach"] = reach(app, report["apps"])
    report["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    return report


def summarize(rounds: list[dict], alone_us: float) -> dict:
    """Per server: medians, and × the best anchor (the cheapest non-fastc1k server of each round)."""
    if not rounds:
        return {}
    out = {}
    for n in rounds[0]:
        ms = [row[n] for row in rounds]
        s = {k: statistics.median(m[k] for m in ms) for k in ("cpu_us", "user_us", "sys_us", "rps")}
        s["errors"] = sum(sum(m["errors"].values()) for m in ms)
        s["server_us"] = max(0.0, s["cpu_us"] - alone_us)
        ratios = []
        for row in rounds:
            anchors = [m["cpu_us"] for k, m in row.items() if k not in OURS and m["requests"] > 0]
            if anchors:
                ratios.append(row[n]["cpu_us"] / min(anchors))
        if ratios:
            s["vs_best"] = (statistics.median(ratios), min(ratios), max(ratios))
        out[n] = s
    return out


def best_other(summary: dict) -> str | None:
    """The cheapest server that is not fastc1k (median µs/request), or None."""
    return min((n for n in summary if n not in OURS), key=lambda n: summary[n]["cpu_us"], default=None)


def reach(app: str, apps: dict) -> dict:
    """What the app's own time leaves of the goal. A server's request costs at least the app
    alone plus the server's own per-request cost, which hello shows (hello's µs/request minus
    hello alone): so (app alone + our hello part) / the best other's µs/request is the least
    ratio our backend can reach; app alone / the best other is the least any server can.
    Every figure comes from this run; empty when no other server ran."""
    res = apps[app]
    best = best_other(res["summary"])
    if best is None:
        return {}
    best_us, alone = res["summary"][best]["cpu_us"], res["alone_us"]
    out = {"best": best, "best_us": best_us, "alone_us": alone, "floor": alone / best_us,
           "allowed_us": GOALS[app] * best_us - alone, "ours": {}}
    hello = apps.get("hello", {})
    for n in ("c", "c-uring"):
        s = hello.get("summary", {}).get(n)
        if s:
            part = max(0.0, s["cpu_us"] - hello["alone_us"])
            out["ours"][n] = {"hello_part_us": part, "bound": (alone + part) / best_us,
                              "app_part_us": res["summary"].get(n, {}).get("server_us")}
            situ = res.get("in_situ", {}).get(n)
            if situ:  # the app as it ran under our server, not in a tight loop
                out["ours"][n]["situ_app_us"] = situ["app_us"]
                out["ours"][n]["situ_bound"] = (situ["app_us"] + part) / best_us
    return out


def reach_line(app: str, r: dict) -> str:
    """The reach of the goal in words, with its figures (empty without them)."""
    if not r:
        return ""
    goal, best = GOALS[app], f"{LABELS[r['best']]}'s {r['best_us']:.2f} µs"
    head = f"What the app leaves: alone it takes {r['alone_us']:.2f} µs = {r['floor']:.2f} × {best}, so the goal ≤ {goal}"
    if r["allowed_us"] <= 0:
        return head + (f" leaves a server nothing: **out of reach for any server by arithmetic** (a server costing "
                       f"nothing would be {r['floor']:.2f} ×).")
    head += f" leaves a server {r['allowed_us']:.2f} µs per request"
    parts = []
    for n, name in (("c", "epoll"), ("c-uring", "io_uring")):
        o = r["ours"].get(n)
        if o:
            verdict = "within reach" if o["bound"] <= goal else "**out of reach by arithmetic**"
            took = f" (its part of this app's request here: {o['app_part_us']:.2f} µs)" \
                if o.get("app_part_us") is not None else ""
            situ = ""
            if "situ_bound" in o:
                situ = (f"; in situ the app took {o['situ_app_us']:.2f} µs per call under it, so at best "
                        f"({o['situ_app_us']:.2f} + {o['hello_part_us']:.2f}) / {r['best_us']:.2f} = "
                        f"{o['situ_bound']:.2f} × — "
                        + ("within reach" if o["situ_bound"] <= goal else "**out of reach by arithmetic**"))
            parts.append(f"{name}: its own cost on hello is {o['hello_part_us']:.2f} µs, so at best "
                         f"({r['alone_us']:.2f} + {o['hello_part_us']:.2f}) / {r['best_us']:.2f} = {o['bound']:.2f} × "
                         f"— {verdict}{took}{situ}")
    return head + (": " + "; ".join(parts) if parts else " (hello not run: our own cost unknown)") + "."


def _r(v) -> str:
    return f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})" if v else "n/a"


GOALS = {"hello": 0.8, "flask_app": 0.9}


def goal_line(app: str, summary: dict, skipped: dict) -> str:
    """Whether the default backend (epoll) and io_uring each met the app's goal (median ratio)."""
    top = best_other(summary)
    best = f" ({LABELS[top]}, {summary[top]['cpu_us']:.2f} µs)" if top else ""
    parts = []
    for n, name in (("c", "the default backend (epoll)"), ("c-uring", "io_uring")):
        v = summary.get(n, {}).get("vs_best")
        if v:
            parts.append(f"{name} {_r(v)} — {'met' if v[0] <= GOALS[app] else 'NOT met'}")
        else:
            parts.append(f"{name} — not measured ({skipped.get(n, 'no other server ran')})")
    return f"Goal {app} ≤ {GOALS[app]} × the best other{best}: " + "; ".join(parts) + "."


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Measured {m['date_utc']} UTC on {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, load average "
             f"{' '.join(m['loadavg'])} → {' '.join(m.get('loadavg_end', []))}; {report['rounds']} rounds of "
             f"{report['round_s']:g} s; {report['workload']}; one worker per server. `{COMMAND}`"]
    head = ["", "| figure | measured (median, min–max of rounds) | goal |", "|---|---|---|"]
    for app, res in report["apps"].items():
        c = res["summary"].get("c")
        if c:
            head.append(f"| {app}: C engine CPU per request × the best other server | {_r(c.get('vs_best'))} "
                        f"| ≤ {GOALS[app]} |")
    mc = report["apps"].get("hello", {}).get("memory", {}).get("c")
    if mc:
        head.append(f"| memory per idle keep-alive connection, C engine + WSGI | {mc['rss_per_conn']:.0f} B | ≤ 128 B |")
    lines += head
    for app, res in report["apps"].items():
        situ = res.get("in_situ")
        lines += ["", f"**{app}** — server CPU per request (µs, user+sys of the server's processes); the app alone "
                      f"(called in-process, no server) takes {res['alone_us']:.2f} µs, the rest is the server's", "",
                  "| server | µs/request | user | sys | app alone | server's part (− app alone) | × best other "
                  "| req/s | errors |" + (" app in situ | server's own (− app in situ) |" if situ else ""),
                  "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if situ else "")]
        for n, s in sorted(res["summary"].items(), key=lambda kv: kv[1]["cpu_us"]):
            row = (f"| {LABELS[n]} | {s['cpu_us']:.2f} | {s['user_us']:.2f} | {s['sys_us']:.2f} | "
                   f"{res['alone_us']:.2f} ({res['alone_us'] / max(s['cpu_us'], 1e-9):.0%}) | {s['server_us']:.2f} | "
                   f"{_r(s.get('vs_best'))} | {s['rps']:,.0f} | {s['errors']} |")
            if situ:
                i = situ.get(n)
                row += f" {i['app_us']:.2f} | {s['cpu_us'] - i['app_us']:.2f} |" if i else " n/a | n/a |"
            lines.append(row)
        if situ:
            lines += ["", "App in situ: the app's own CPU per call (the call, its iteration and close()) as each "
                          "server ran it, counted by the app's thread CPU clock in runs of its own (`--in-situ`, "
                          "bench.wsgi_app.timed); the server's own: µs/request minus it. (The app alone also pays "
                          "for copying an environ and making a wsgi.input, which a server does itself: a tiny app's "
                          "time in situ reads below its time alone.)"]
        reached = reach_line(app, res.get("reach", {})) if app != "hello" else ""
        lines += ["", goal_line(app, res["summary"], report["skipped"]) + (" " + reached if reached else "")]
        if res["memory"]:
            lines += ["", "Memory per idle keep-alive connection (fresh servers, before any load; RSS delta / answered "
                          "connections): " + ", ".join(
                              f"{LABELS[n]} " + (f"{mm['rss_per_conn']:,.0f} B" if mm["rss_per_conn"] >= 0 else
                                                 "n/a (its RSS fell meanwhile)")
                              for n, mm in res["memory"].items())
                      + "".join(f"; {why}" for n, why in NO_IDLE.items() if n in res["summary"]) + "."]
    if report["skipped"]:
        lines += [""] + [f"Skipped {n}: {why}." for n, why in report["skipped"].items()]
    return "\n".join(lines) + "\n"


README = BENCH.parent / "README.md"


def update_readme(md: str, readme: Path = README) -> bool:
    return write_block(str(readme), "wsgi", md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wsgi_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(WSGI_SERVERS), help="comma list (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="(bench/METHOD.md: at least 5 of 4-5 s)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per server per round")
    ap.add_argument("--idle", type=int, default=2000, help="idle connections for memory (0: skip)")
    ap.add_argument("--apps", default=",".join(APPS), help="comma list (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--in-situ", action=argparse.BooleanOptionalAction, default=True,
                    help="then serve each app timed (bench.wsgi_app.timed): the app's CPU per call in each server")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    apps = tuple(a.strip() for a in args.apps.split(",") if a.strip())
    unknown = [n for n in names if n not in LABELS] + [a for a in apps if a not in APPS]
    if unknown or args.rounds < 1 or args.duration < 1:
        print(f"bench.wsgi_bench: bad arguments (unknown servers {unknown}; rounds >= 1, duration >= 1)",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    report = run(names, args.rounds, args.duration, args.idle, log=lambda m: print(m, file=sys.stderr, flush=True),
                 apps=apps, situ=args.in_situ)
    report["command"] = COMMAND
    report["wall_s"] = round(time.monotonic() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wsgi.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (args.out / "wsgi.md").write_text(md)
    if not args.no_readme and args.out.resolve() == RESULTS.resolve():
        update_readme(md)
    print(md)
    print(f"wrote {args.out / 'wsgi.json'} and wsgi.md in {report['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
