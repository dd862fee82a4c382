"""The load farm: worker processes running the C loop, and the coordinator that merges them.

Each worker process owns one ``_client.Client`` (its share of the connections and of
the rate) and reports once per second over a pipe: cumulative counters, its CPU time and
the interval histograms as sparse (index, count) pairs. The coordinator turns those into
per-second timeline rows and keeps each second's histograms, so any window of seconds
(a capacity-suite stage) can be merged later. Every worker schedules by CLOCK_MONOTONIC
from one start instant, so their seconds line up. Each worker also sends a smaller report
every 100 ms (counts and the corrected histogram): ``fine_timeline()`` gives those rows,
so a recovery can be timed to 100 ms instead of to a second.

Where the worker processes run is the executor's business (``procs.ProcessExecutor``: this
host; ``cluster.DaskExecutor``: a Dask cluster's workers): both run ``_worker_main`` and
hand its reports back unchanged, so shares, stages, rows and merging are this file's alone.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time
import traceback

from . import hist
from ..host import proc
from ..host.net import parse_source_ips  # noqa: F401 - capacity's import
from .spec import LoadSpec

MAX_SLOTS = 20_000          # connection slots a worker allocates at most (the hard fd limit here)
FD_RESERVE = 64             # fds a worker keeps for itself (pipes, epoll, Python)
TICK_NS = 1_000_000_000
FINE_NS = TICK_NS // 10     # the fine rows: 100 ms
BOTTLENECK_CPU = 0.90       # a worker above this share of a core is the bottleneck
BOTTLENECK_LATE = 0.01      # open loop: due times noticed late by the loop itself
BOTTLENECK_WAIT = 0.20      # a worker that waited this share of the time for a CPU was starved


def _runqueue_wait_s() -> float:
    # time this (single-threaded) process spent runnable but waiting for a CPU
    ss = proc.task_schedstat()
    return ss[1] / 1e9 if ss else 0.0

ERROR_CLASSES = ("refused", "reset", "connect_timeout", "read_timeout", "addrnotavail",
                 "emfile", "bad_response", "connect_error")
_FINE_COUNTERS = frozenset(("done", "ok") + ERROR_CLASSES)   # what a 100 ms row counts


def _names():
    from ._client import COUNTER_NAMES
    return COUNTER_NAMES


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def share(total: int, limits: list) -> list[int]:
    """``total`` connections over processes as evenly as their limits allow (None: no
    limit): a process whose machine holds less gets its limit, the rest share the others.
    ValueError with the numbers when the limits together hold less than ``total``."""
    out = [0] * len(limits)
    free = [i for i, lim in enumerate(limits) if lim is None or lim > 0]
    left = total
    while left and free:
        part = _split(left, len(free))
        full = [i for i, p in zip(free, part) if limits[i] is not None and out[i] + p >= limits[i]]
        if not full:
            for i, p in zip(free, part):
                out[i] += p
            return out
        for i in full:              # fill the smallest first, then share the rest again
            left -= limits[i] - out[i]
            out[i] = limits[i]
        free = [i for i in free if i not in full]
    if left > 0:
        raise ValueError(f"{total:,} connections exceed the {sum(limits):,} these "
                         f"{len(limits)} load processes can hold")
    return out


def _rates(rate, conns: list[int], nproc: int) -> list:
    if rate is None:
        return [None] * nproc
    total = sum(conns)
    if total == 0:
        return [0.0] * nproc
    return [rate * c / total for c in conns]


# ---------------------------------------------------------------------------- the worker

def _worker_main(pipe, cfg: dict) -> None:
    """Child process: one Client, a report per tick, commands from the pipe."""
    try:
        # the coordinator decides when to stop (it catches Ctrl-C for the whole group)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        from ._client import Client, monotonic_ns
        # slots: as many as the fd limit allows (EMFILE beyond is counted, not fatal)
        capacity = max(cfg["connections"], min(MAX_SLOTS, max(soft - FD_RESERVE, 1)))
        c = Client(cfg["host"], cfg["port"], cfg["requests"], cfg["mix"], capacity,
                   cfg["pipeline"], cfg["connections"], open_loop=cfg["rate"] is not None,
                   rate=cfg["rate"] or 0.0, ramp_rate=cfg["ramp_rate"],
                   connect_timeout=cfg["connect_timeout"], request_timeout=cfg["request_timeout"],
                   retry_delay=cfg["reconnect_delay"], source_ips=cfg["sources"],
                   src_offset=cfg["src_offset"], counts_len=hist.COUNTS_LEN, ctl_fd=pipe.fileno())
        pipe.send(("ready", os.getpid(), capacity))
        msg = pipe.recv()
        if msg[0] != "start":
            return
        start_ns = msg[1]
        c.start(start_ns)
        j = 0                                           # 100 ms intervals done
        r0 = resource.getrusage(resource.RUSAGE_SELF)   # CPU is counted from the start
        w0 = _runqueue_wait_s()
        sec = [{}, 0, {}, 0]        # this second's histograms, merged from its fine intervals

        def report(kind, j):
            # the fine row of interval j, and at a whole second (or the end) the second's row
            hc, maxc, hs, maxs = c.take_interval()
            cnt, st = c.counters()
            now = monotonic_ns()
            pipe.send(("fine", j, cnt, st, hc, maxc, now))
            hist.merge_sparse(sec[0], hc)
            hist.merge_sparse(sec[2], hs)
            sec[1], sec[3] = max(sec[1], maxc), max(sec[3], maxs)
            if kind == "final" or (j + 1) % 10 == 0:
                r = resource.getrusage(resource.RUSAGE_SELF)
                pipe.send((kind, j // 10, cnt, st, (list(sec[0].items()), sec[1], list(sec[2].items()), sec[3]),
                           r.ru_utime - r0.ru_utime, r.ru_stime - r0.ru_stime, _runqueue_wait_s() - w0, now))
                sec[:] = [{}, 0, {}, 0]

        while True:
            fine_end = start_ns + (j + 1) * FINE_NS
            ctl = c.run(fine_end)
            if monotonic_ns() >= fine_end:
                report("tick", j)
                j += 1
            if ctl:
                while pipe.poll():
                    msg = pipe.recv()
                    if msg[0] == "conns":
                        c.set_connections(msg[1])
                        if msg[2] is not None:
                            c.set_rate(msg[2])
                    elif msg[0] == "rate":
                        c.set_rate(msg[1])
                    elif msg[0] == "stop":
                        report("final", j)
                        c.close_all()
                        return
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException:
        try:
            pipe.send(("error", traceback.format_exc()))
        except Exception:
            pass


# ---------------------------------------------------------------------------- results

class Result:
    """A finished run: ``summary`` (dict), ``histogram`` (corrected latency, us, an
    hdrh.HdrHistogram), ``service_histogram`` (uncorrected), ``timeline`` (rows)."""

    def __init__(self, spec, summary, histogram, service_histogram, timeline, farm=None, fine_timeline=()):
        self._farm = farm
        self.fine_timeline = list(fine_timeline)   # the 100 ms rows (LoadFarm.fine_timeline)
        self.spec = spec
        self.summary = summary
        self.histogram = histogram
        self.service_histogram = service_histogram
        self.timeline = timeline

    def to_json(self, **kw) -> str:
        return json.dumps({
            "spec": self.spec.to_dict(),
            "summary": self.summary,
            "timeline": self.timeline,
            "fine_timeline": self.fine_timeline,
            "histogram": self.histogram.encode().decode(),
            "service_histogram": self.service_histogram.encode().decode(),
        }, **kw)

    def write_hdr_log(self, path: str) -> None:
        """The per-second corrected histograms in the standard HdrHistogram log format
        (values in microseconds; the Interval_Max column in milliseconds)."""
        from hdrh.log import HistogramLogWriter
        farm = self._farm
        with open(path, "w") as f:
            w = HistogramLogWriter(f)
            w.output_comment("fastc1k.load corrected latency, microseconds")
            w.output_base_time(int(farm.started_wall * 1000))
            w.output_legend()
            for row in self.timeline:
                h = farm.histogram_between(row["t"], row["t"] + 1)
                w.output_interval_histogram(h, row["t"], row["t"] + row["duration"],
                                            max_value_unit_ratio=1000.0)


def _latency_block(counts: dict, max_us: int) -> dict:
    st = hist.stats(counts, max_us)
    p = st["p"]
    return {
        "p50_us": p[50.0], "p90_us": p[90.0], "p99_us": p[99.0], "p999_us": p[99.9],
        "p9999_us": p[99.99], "max_us": st["max"], "mean_us": round(st["mean"], 1),
        "stdev_us": round(st["stdev"], 1), "count": st["count"],
    }


# ---------------------------------------------------------------------------- the farm

class _Row:
    __slots__ = ("t", "reports", "cnt", "status", "hc", "hs", "maxc", "maxs", "cpu_u", "cpu_s",
                 "wait", "open", "duration", "cache")

    def __init__(self, t):
        self.t = t
        self.reports = 0
        self.cnt = {}
        self.status = {}
        self.hc = {}
        self.hs = {}
        self.maxc = self.maxs = 0
        self.cpu_u = self.cpu_s = self.wait = 0.0
        self.open = 0
        self.duration = 1.0
        self.cache = None


class _Fine:
    """One 100 ms interval, all workers: responses, errors and the corrected histogram."""
    __slots__ = ("j", "reports", "cnt", "status", "hc", "maxc", "end_ns")

    def __init__(self, j):
        self.j = j
        self.reports = 0
        self.cnt = {}
        self.status = {}
        self.hc = {}
        self.maxc = 0
        self.end_ns = 0


class LoadFarm:
    """Start, steer and stop a load run. See ``fastc1k.load`` for the API summary.

    ``executor`` places the farm processes: ``procs.ProcessExecutor`` (this host, the
    default) or ``cluster.DaskExecutor`` (a Dask cluster's workers). ``on_lost``: a farm
    process lost mid-run "stop"s the run (an error) or the run "continue"s with the others;
    either way the report marks the seconds and connections lost. Default: the executor's.
    """

    def __init__(self, spec: LoadSpec, mp_context: str = "fork", executor=None, on_lost=None):
        if executor is None:
            from .procs import ProcessExecutor
            executor = ProcessExecutor(mp_context)
        if on_lost not in (None, "stop", "continue"):
            raise ValueError("on_lost is 'stop' or 'continue'")
        self.spec = spec
        self._ex = executor
        self._on_lost = on_lost or executor.on_lost
        try:
            self._places = executor.place(spec)
        except BaseException:
            executor.close()
            raise
        self.nproc = len(self._places)
        self._limits = [p["limit"] for p in self._places]
        self._launched = False
        self._caps = []
        self._lock = threading.Lock()
        self._rows: dict[int, _Row] = {}
        self._fine: dict[int, _Fine] = {}
        self._last_fine = {}       # worker -> (cumulative counters, statuses) at its last fine row
        self._last = {}            # worker -> last cumulative counters
        self._last_cpu = {}
        self._cpu_total = {}       # worker -> (utime, stime) since start
        self._seen = {}            # worker -> seconds it has reported
        self._finals = set()
        self._lost = {}            # worker -> {"t": first second missing, "why", "connections"}
        self._errors = []
        self._reader = None
        self._stopped = None
        self._conns = share(spec.connections, self._limits)
        self._rate = spec.rate
        self.started_ns = None
        self.started_wall = None
        self._names = _names()

    # -- lifecycle

    def start(self) -> "LoadFarm":
        if self._launched:
            raise RuntimeError("already started")
        self._launched = True
        spec = self.spec
        rates = _rates(spec.rate, self._conns, self.nproc)
        ramp_total = spec.connections / spec.ramp if spec.ramp > 0 else 0.0
        cfgs, offset = [], {}
        for i, place in enumerate(self._places):
            # each machine rotates its own source addresses
            src_offset = offset.get(place["machine"], 0)
            offset[place["machine"]] = src_offset + self._conns[i]
            cfgs.append(dict(host=spec._addr[0], port=spec._addr[1], requests=spec._requests,
                             mix=spec._mix, pipeline=spec.pipeline, connections=self._conns[i],
                             rate=rates[i],
                             ramp_rate=ramp_total * self._conns[i] / max(spec.connections, 1),
                             connect_timeout=spec.connect_timeout,
                             request_timeout=spec.request_timeout,
                             reconnect_delay=spec.reconnect_delay, sources=place["sources"],
                             src_offset=src_offset))
        try:
            caps = self._ex.launch(cfgs)
            self._caps = [cap if lim is None else min(cap, lim)
                          for cap, lim in zip(caps, self._limits)]
            self.started_ns, self.started_wall = self._ex.start()
        except BaseException:
            self._ex.close()
            raise
        self._reader = threading.Thread(target=self._read_loop, name="fastc1k-load-reader",
                                        daemon=True)
        self._reader.start()
        return self

    def _live_caps(self) -> list[int]:
        return [0 if w in self._lost else cap for w, cap in enumerate(self._caps)]

    def set_connections(self, n: int) -> None:
        """Change the client count while running (with the spec's ramp rate, if any)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError("connections must be a non-negative integer")
        caps = self._live_caps()
        if n > sum(caps):
            raise ValueError(f"{n} connections exceed this farm's {sum(caps)} slots "
                             f"({self.nproc - len(self._lost)} processes); set max_connections "
                             f"or processes")
        split = share(n, caps)
        rates = _rates(self._rate, split, self.nproc)
        self._conns = split
        self._ex.send({w: ("conns", c, r) for w, (c, r) in enumerate(zip(split, rates))
                       if w not in self._lost})

    def set_rate(self, rate: float) -> None:
        """Change the total rate (open loop only)."""
        if self._rate is None:
            raise ValueError("set_rate: this farm runs closed loop (no rate in its spec)")
        if not rate >= 0:
            raise ValueError("rate must be >= 0")
        self._rate = float(rate)
        rates = _rates(self._rate, self._conns, self.nproc)
        self._ex.send({w: ("rate", r) for w, r in enumerate(rates) if w not in self._lost})

    def stop(self) -> Result:
        """Stop the workers, collect their last partial second, and return the Result."""
        if self._stopped is not None:
            return self._stopped
        if not self._launched:
            raise RuntimeError("not started")
        self._ex.send({w: ("stop",) for w in range(self.nproc) if w not in self._lost})
        self._reader.join(timeout=10)
        self._ex.close()
        self._stopped = self._result()
        return self._stopped

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self._launched and self._stopped is None:
            self.stop()

    @property
    def running(self) -> bool:
        """False once every farm process has stopped, failed or been lost."""
        return self._reader is not None and self._reader.is_alive()

    # -- collecting

    def _read_loop(self):
        live = set(range(self.nproc))
        while live:
            for w, msg in self._ex.poll(1.0):
                if w not in live:
                    continue
                if msg[0] == "lost":
                    live.discard(w)
                    self._lose(w, msg[1])
                elif msg[0] == "error":
                    self._errors.append(msg[1])
                    live.discard(w)
                elif msg[0] == "fine":
                    self._take_fine(w, msg)
                elif msg[0] in ("tick", "final"):
                    self._take(w, msg)
                    if msg[0] == "final":
                        live.discard(w)

    def _lose(self, w, why):
        with self._lock:
            self._lost[w] = {"t": self._seen.get(w, 0), "why": why,
                             "connections": self._last.get(w, {}).get("connections_open", 0),
                             "rate": _rates(self._rate, self._conns, self.nproc)[w]}
            for row in self._rows.values():
                row.cache = None
        if self._on_lost == "stop":
            self._errors.append(why)

    def _expected(self, k: int) -> int:
        # processes that owe a report for second k: all but those lost before it
        return self.nproc - sum(1 for lost in self._lost.values() if lost["t"] <= k)

    def _take(self, w, msg):
        kind, k, cnt, status, (hc, maxc, hs, maxs), utime, stime, wait, now_ns = msg
        cnt = dict(zip(self._names, cnt))
        with self._lock:
            last = self._last.get(w, {})
            last_st = self._last.get(("st", w), {})
            lu, ls, lw = self._last_cpu.get(w, (0.0, 0.0, 0.0))
            row = self._rows.get(k)
            if row is None:
                row = self._rows[k] = _Row(k)
            for name, v in cnt.items():
                if name == "connections_open":
                    row.open += v
                else:
                    row.cnt[name] = row.cnt.get(name, 0) + v - last.get(name, 0)
            for code, v in status.items():
                d = v - last_st.get(code, 0)
                if d:
                    row.status[code] = row.status.get(code, 0) + d
            hist.merge_sparse(row.hc, hc)
            hist.merge_sparse(row.hs, hs)
            row.maxc = max(row.maxc, maxc)
            row.maxs = max(row.maxs, maxs)
            row.cpu_u += utime - lu
            row.cpu_s += stime - ls
            row.wait = max(row.wait, wait - lw)
            row.reports += 1
            if kind == "final":
                row.duration = max(0.0, min(1.0, (now_ns - self.started_ns - k * TICK_NS) / 1e9))
                self._finals.add(w)
            row.cache = None
            self._last[w] = cnt
            self._last[("st", w)] = dict(status)
            self._last_cpu[w] = (utime, stime, wait)
            self._cpu_total[w] = (utime, stime, wait)
            self._seen[w] = k + 1

    def _take_fine(self, w, msg):
        _, j, cnt, status, hc, maxc, now_ns = msg
        with self._lock:
            last, last_st = self._last_fine.get(w, ((0,) * len(cnt), {}))
            row = self._fine.get(j)
            if row is None:
                row = self._fine[j] = _Fine(j)
            for name, v, v0 in zip(self._names, cnt, last):
                if name in _FINE_COUNTERS and v != v0:
                    row.cnt[name] = row.cnt.get(name, 0) + v - v0
            for code, v in status.items():
                d = v - last_st.get(code, 0)
                if d:
                    row.status[code] = row.status.get(code, 0) + d
            hist.merge_sparse(row.hc, hc)
            row.maxc = max(row.maxc, maxc)
            row.end_ns = max(row.end_ns, now_ns)
            row.reports += 1
            self._last_fine[w] = (cnt, dict(status))

    # -- reading

    def fine_timeline(self, partial: bool = False) -> list[dict]:
        """100 ms rows so far: t (seconds since start, a multiple of 0.1), duration,
        requests, ok, errors (by class), error_count, p50_us / p99_us / max_us (corrected
        latency of the responses completed in the interval). Rows still waiting for a
        worker are left out unless partial=True; the last row may be shorter than 0.1 s."""
        with self._lock:
            out = []
            for j in sorted(self._fine):
                row = self._fine[j]
                if row.reports < self._expected(j // 10) and not partial:
                    continue
                p = hist.stats(row.hc, row.maxc, (50.0, 99.0))["p"]
                errors = {n: row.cnt[n] for n in ERROR_CLASSES if row.cnt.get(n)}
                for code, v in sorted(row.status.items()):
                    errors[f"status_{code}"] = v
                dur = (row.end_ns - self.started_ns) / 1e9 - j * FINE_NS / 1e9
                out.append({"t": round(j * FINE_NS / 1e9, 1), "duration": round(max(0.0, min(dur, 0.1)), 3),
                            "requests": row.cnt.get("done", 0), "ok": row.cnt.get("ok", 0),
                            "errors": errors, "error_count": sum(errors.values()),
                            "p50_us": p[50.0], "p99_us": p[99.0], "max_us": row.maxc,
                            "complete": row.reports >= self._expected(j // 10)})
            return out

    def _row_dict(self, row: _Row) -> dict:
        if row.cache is not None:
            return row.cache
        p = hist.stats(row.hc, row.maxc, (50.0, 99.0, 99.9))["p"]
        ps = hist.stats(row.hs, row.maxs, (50.0, 99.0))["p"]
        dur = row.duration or 1e-9
        errors = {n: row.cnt.get(n, 0) for n in ERROR_CLASSES if row.cnt.get(n, 0)}
        for code, v in sorted(row.status.items()):
            errors[f"status_{code}"] = v
        d = {
            "t": row.t, "duration": round(row.duration, 3),
            "requests": row.cnt.get("done", 0), "ok": row.cnt.get("ok", 0),
            "errors": errors, "sent": row.cnt.get("sent", 0),
            "p50_us": p[50.0], "p99_us": p[99.0], "p999_us": p[99.9], "max_us": row.maxc,
            "service_p50_us": ps[50.0], "service_p99_us": ps[99.0],
            "connections_open": row.open,
            "connects_ok": row.cnt.get("connects_ok", 0),
            "connects_failed": row.cnt.get("connects_failed", 0),
            "intended": row.cnt.get("scheduled", 0),
            "achieved_rate": round(row.cnt.get("done", 0) / dur, 1),
            "late_sends": row.cnt.get("late_sends", 0),
            "generator_late": row.cnt.get("generator_late", 0),
            "client_cpu": round((row.cpu_u + row.cpu_s) / dur, 3),
            "client_cpu_wait": round(row.wait / dur, 3),
            "lost_processes": self.nproc - self._expected(row.t),
            "lost_connections": sum(lost["connections"] for lost in self._lost.values()
                                    if lost["t"] <= row.t),
            "complete": row.reports >= self._expected(row.t),
        }
        if d["complete"]:
            row.cache = d
        return d

    def timeline(self, partial: bool = False) -> list[dict]:
        """Per-second rows so far (t = seconds since start). Rows still waiting for a
        worker's report are left out unless partial=True."""
        with self._lock:
            rows = [self._rows[k] for k in sorted(self._rows)]
            return [self._row_dict(r) for r in rows
                    if partial or r.reports >= self._expected(r.t)]

    def histogram_between(self, t0: float, t1: float, service: bool = False):
        """Merged corrected (or service) latency histogram of the seconds t0 <= t < t1."""
        counts, vmax = self._merged(t0, t1, service)
        return hist.from_sparse(counts.items(), vmax)

    def _merged(self, t0, t1, service=False):
        counts, vmax = {}, 0
        with self._lock:
            for k, row in self._rows.items():
                if t0 <= k < t1:
                    hist.merge_sparse(counts, (row.hs if service else row.hc).items())
                    vmax = max(vmax, row.maxs if service else row.maxc)
        return counts, vmax

    def _worker_table(self, duration: float) -> list[dict]:
        """One row per farm process, in machine order: what it did and whether it kept up.
        The rows' requests add up to the summary's."""
        out = []
        with self._lock:
            for w, place in enumerate(self._places):
                cnt = self._last.get(w, {})
                u, s, wait = self._cpu_total.get(w, (0.0, 0.0, 0.0))
                secs = duration if w not in self._lost else max(self._lost[w]["t"], 1e-9)
                secs = secs or 1e-9
                cpu, waited = (u + s) / secs, wait / secs
                late = cnt.get("generator_late", 0) / (cnt.get("scheduled", 0) or 1)
                rate = _rates(self._rate, self._conns, self.nproc)[w]
                out.append({
                    "machine": place["machine"], "worker": place["worker"], "process": w,
                    "requests": cnt.get("done", 0), "connections": cnt.get("connections_open", 0),
                    "intended_rate": None if rate is None else round(rate, 1),
                    "achieved_rate": round(cnt.get("done", 0) / secs, 1),
                    "cpu": round(cpu, 3), "cpu_wait": round(waited, 3),
                    "bottleneck": bool(cpu >= BOTTLENECK_CPU or waited >= BOTTLENECK_WAIT or (
                        late > BOTTLENECK_LATE and cpu >= BOTTLENECK_CPU / 2)),
                    "lost": w in self._lost,
                })
        out.sort(key=lambda r: (r["machine"], r["worker"], r["process"]))
        return out

    @property
    def lost(self) -> list[dict]:
        """Farm processes lost so far: process, t (first second missing), why, connections."""
        with self._lock:
            return [{"process": w, **lost} for w, lost in sorted(self._lost.items())]

    @property
    def errors(self) -> list[str]:
        """Tracebacks of workers that failed."""
        return list(self._errors)

    def _result(self) -> Result:
        rows = self.timeline(partial=True)
        total = {}
        status = {}
        with self._lock:
            for row in self._rows.values():
                for n, v in row.cnt.items():
                    total[n] = total.get(n, 0) + v
                for c, v in row.status.items():
                    status[c] = status.get(c, 0) + v
            cpu = dict(self._cpu_total)
        cc, cmax = self._merged(-1, float("inf"))
        sc, smax = self._merged(-1, float("inf"), service=True)
        h = hist.from_sparse(cc.items(), cmax)
        hs = hist.from_sparse(sc.items(), smax)
        duration = sum(r["duration"] for r in rows) or 1e-9
        done = total.get("done", 0)
        errors = {n: total.get(n, 0) for n in ERROR_CLASSES if total.get(n, 0)}
        for code, v in sorted(status.items()):
            errors[f"status_{code}"] = v
        cpu_u = sum(u for u, s, _ in cpu.values())
        cpu_s = sum(s for u, s, _ in cpu.values())
        per_worker = [round((u + s) / duration, 3) for u, s, _ in cpu.values()]
        waits = [round(w / duration, 3) for _, _, w in cpu.values()]
        summary = {
            "url": self.spec.url, "connections": self.spec.connections,
            "processes": self.nproc, "pipeline": self.spec.pipeline,
            "mode": "closed" if self.spec.rate is None else "open",
            "duration_s": round(duration, 3),
            "requests": done, "ok": total.get("ok", 0), "sent": total.get("sent", 0),
            "errors": errors, "error_count": sum(errors.values()),
            "req_per_s": round(done / duration, 1),
            "bytes_in": total.get("bytes_in", 0), "bytes_out": total.get("bytes_out", 0),
            "latency": _latency_block(cc, cmax), "service_time": _latency_block(sc, smax),
            "connects_ok": total.get("connects_ok", 0),
            "connects_failed": total.get("connects_failed", 0),
            "unanswered": total.get("unanswered", 0),
            "client_cpu_s": round(cpu_u + cpu_s, 4), "client_cpu_user_s": round(cpu_u, 4),
            "client_cpu_us_per_request": round((cpu_u + cpu_s) / done * 1e6, 3) if done else None,
            "client_cpu_user_us_per_request": round(cpu_u / done * 1e6, 3) if done else None,
            "client_cpu_per_process": per_worker,
            "client_cpu_wait_per_process": waits,
            "worker_errors": list(self._errors),
        }
        if self.spec.rate is not None:
            sched = total.get("scheduled", 0)
            summary.update({
                "intended_rate": self._rate, "scheduled": sched,
                # what the schedule asked of the open connections (a ramp asks less)
                "offered_rate": round(sched / duration, 1),
                "achieved_rate": round(done / duration, 1),
                "late_sends": total.get("late_sends", 0),
                "generator_late": total.get("generator_late", 0),
                "dropped_sends": total.get("dropped", 0),
            })
        why, note = [], ""
        busiest = max(per_worker, default=0.0)
        if busiest >= BOTTLENECK_CPU:
            why.append(f"a load process used {busiest:.0%} of a core")
        starved = max(waits, default=0.0)
        if starved >= BOTTLENECK_WAIT:
            why.append(f"a load process spent {starved:.0%} of the run waiting for a CPU "
                       f"(the host is oversubscribed)")
        if self.spec.rate is not None:
            late = total.get("generator_late", 0)
            late_share = late / (total.get("scheduled", 0) or 1)
            if late_share > BOTTLENECK_LATE:
                if busiest >= BOTTLENECK_CPU / 2:
                    why.append(f"the load loop itself noticed {late_share:.1%} of due sends late")
                else:
                    # little CPU used: the loop woke late because the machine is busy
                    note = (f"; {late_share:.1%} of due sends were noticed > 1 ms late with the "
                            f"load processes mostly idle: the host's scheduler, not their work")
        summary["generator_bottleneck"] = bool(why)
        summary["generator_bottleneck_why"] = "; ".join(why) if why else (
            f"kept up: busiest load process at {busiest:.0%} of a core{note}")
        summary["workers"] = self._worker_table(duration)
        with self._lock:
            summary["lost"] = [{"process": w, "machine": self._places[w]["machine"],
                                "worker": self._places[w]["worker"], **lost}
                               for w, lost in sorted(self._lost.items())]
        summary.update(self._ex.info())
        return Result(self.spec, summary, h, hs, rows, farm=self, fine_timeline=self.fine_timeline(partial=True))


def run(spec: LoadSpec, on_second=None) -> Result:
    """Run for spec.duration seconds and return the Result; on_second(row) is called
    with each completed timeline row."""
    if spec.duration is None:
        raise ValueError("run() needs a duration")
    farm = LoadFarm(spec).start()
    try:
        seen = 0
        end = farm.started_ns / 1e9 + spec.duration     # second 0 may begin a little later
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.1))
            if on_second is not None:
                rows = farm.timeline()
                for row in rows[seen:]:
                    on_second(row)
                seen = len(rows)
            if farm.errors or not farm.running:
                break
    finally:
        res = farm.stop()
    if farm.errors:
        raise RuntimeError("a load worker failed:\n" + farm.errors[0])
    return res
