"""Counters: one layout for both engines, one slot per worker, Prometheus text out.

A slot is an array of unsigned 64-bit words in memory that the worker owns alone (one
writer per slot); readers sum the slots. The master makes one shared anonymous mmap
before forking (MetricsArea), so every worker can answer /metrics with the totals.
Slots are padded to a multiple of 64 bytes so two workers never share a cache line.

The word indices below are the contract with the C engine, which reads them at import
(fastc1k._core checks that its layout matches LAYOUT_VERSION and N_WORDS).
"""
from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

__all__ = ["COUNTERS", "Counter", "MetricsArea", "LAG_BUCKETS", "N_WORDS", "IDX", "render_prometheus",
           "parse_prometheus_text", "lag_quantile_us", "SlotList", "PARSE_ERROR_KINDS", "TIMEOUT_KINDS", "STATUS_CODES"]

LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Counter:
    name: str
    kind: str          # "counter" | "gauge"
    help: str
    label: str = ""    # 'status="200"' etc.; series of one family share a name


# Statuses counted individually; anything else lands in "other".
STATUS_CODES = (200, 400, 404, 405, 408, 413, 414, 431, 500, 501, 503, 505)
PARSE_ERROR_KINDS = ("bad_request", "uri_too_long", "headers_too_large", "body_too_large",
                     "unsupported_coding", "bad_version")
PARSE_ERROR_STATUS = dict(zip(PARSE_ERROR_KINDS, (400, 414, 431, 413, 501, 505)))
TIMEOUT_KINDS = ("header", "idle", "send")
LAG_BUCKETS = 32  # loop-iteration time histogram: bucket i counts iterations < 2**i us

_C: list[Counter] = [
    Counter("pid", "gauge", "worker process id"),
    Counter("started_ms", "gauge", "worker start time, unix ms"),
    Counter("engine", "gauge", "engine: 1 = C, 2 = pure Python"),
    Counter("accepted", "counter", "connections accepted"),
    Counter("closed", "counter", "connections closed"),
    Counter("active", "gauge", "connections open now"),
    Counter("requests", "counter", "requests parsed (including rejected ones)"),
    Counter("bytes_in", "counter", "bytes received"),
    Counter("bytes_out", "counter", "bytes sent"),
]
_C += [Counter("responses", "counter", "responses sent, by status", f'status="{s}"') for s in STATUS_CODES]
_C += [Counter("responses", "counter", "responses sent, by status", 'status="other"')]
_C += [Counter("parse_errors", "counter", "malformed or over-limit requests, by kind", f'kind="{k}"')
       for k in PARSE_ERROR_KINDS]
_C += [Counter("timeouts", "counter", "connections closed by a timer, by kind", f'kind="{k}"')
       for k in TIMEOUT_KINDS]
_C += [
    Counter("rejected_max_connections", "counter", "connections answered 503 at max_connections"),
    Counter("accept_paused", "counter", "times accepting paused on EMFILE/ENFILE"),
    Counter("handler_errors", "counter", "Python handlers that raised (answered 500)"),
    Counter("pool_size", "gauge", "read buffers in the pool"),
    Counter("pool_in_use", "gauge", "read buffers held by connections now"),
    Counter("pool_peak", "gauge", "most read buffers held at once"),
    Counter("pool_exhausted", "counter", "times the pool was empty and at pool_max (load shed)"),
    Counter("loop_waits", "counter", "epoll_wait / select calls"),
    Counter("loop_events", "counter", "events returned by those waits (events per wait = events / waits)"),
    Counter("loop_lag_max_us", "gauge", "longest loop iteration since start, microseconds"),
]
_C += [Counter("loop_lag_bucket", "counter", "loop iterations by duration", f'le_us="{1 << i}"')
       for i in range(LAG_BUCKETS)]
_C += [
    Counter("accept_unwatched", "counter",
            "accepted connections closed at once: the event set refused them (fs.epoll.max_user_watches)"),
    Counter("listen_rearm_failed", "counter", "times watching the listener again after a pause failed (retried)"),
    Counter("head_bytes_scanned", "counter",
            "bytes the request-head parser looked at (about the head bytes received: no re-scan per read)"),
]

COUNTERS: tuple[Counter, ...] = tuple(_C)
IDX: dict[str, int] = {}
for _i, _c in enumerate(COUNTERS):
    IDX[_c.name + ("{" + _c.label + "}" if _c.label else "")] = _i
# Words summed into the retired totals when a worker exits (word 0, pid, is a gauge: never).
_COUNTER_WORDS = tuple(i for i, c in enumerate(COUNTERS) if c.kind == "counter")
N_WORDS = (len(COUNTERS) + 7) // 8 * 8  # whole cache lines

ENGINE_C, ENGINE_PY = 1, 2


_STATUS_IDX = {s: IDX[f'responses{{status="{s}"}}'] for s in STATUS_CODES}
_OTHER_IDX = IDX['responses{status="other"}']


def status_index(status: int) -> int:
    """The word that counts responses with this status (once per response: a dict hit)."""
    return _STATUS_IDX.get(status, _OTHER_IDX)


class SlotList(list):
    """A consistent copy of every worker slot, plus `retired`: the counters of workers
    that have exited (folded in by the master), so totals keep counting across restarts."""
    retired: Sequence[int] | None = None


class MetricsArea:
    """N slots of N_WORDS uint64 in one anonymous shared mapping (made before fork).

    After the N worker slots comes one more, written only by the master: word 0 is a
    sequence number (odd while the master folds a dead worker's slot), the rest hold the
    counters of retired workers. A worker's slot is reset when its replacement starts, so
    per-worker series restart with the new pid while the totals keep counting.
    """

    def __init__(self, n_slots: int = 1) -> None:
        self.n_slots = n_slots
        self._mm = mmap.mmap(-1, (max(1, n_slots) + 1) * N_WORDS * 8,
                             flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._view = memoryview(self._mm).cast("Q")
        self._retired = self._view[max(1, n_slots) * N_WORDS:(max(1, n_slots) + 1) * N_WORDS]

    def slot(self, i: int) -> memoryview:
        if not 0 <= i < self.n_slots:
            raise IndexError(f"metrics slot {i} out of 0..{self.n_slots - 1}")
        return self._view[i * N_WORDS:(i + 1) * N_WORDS]

    def reset(self, i: int) -> None:
        s = self.slot(i)
        for k in range(N_WORDS):
            s[k] = 0

    def retire(self, i: int) -> None:
        """Master only, after worker i exited: add its counters to the retired totals, clear it."""
        s, r = self.slot(i), self._retired
        r[0] += 1                                  # odd: readers retry
        for k in _COUNTER_WORDS:
            r[k] += s[k]
        for k in range(N_WORDS):
            s[k] = 0
        r[0] += 1

    def slots(self) -> SlotList:
        """A consistent copy of every slot (live or not) and the retired totals (seqlock read)."""
        while True:
            seq = self._retired[0]
            if seq & 1:
                time.sleep(0)
                continue
            out = SlotList(self.slot(i).tolist() for i in range(self.n_slots))
            out.retired = self._retired.tolist()
            if self._retired[0] == seq:
                return out

    def render(self, extra: Iterable[tuple[str, str, str, float]] = ()) -> bytes:
        return render_prometheus(self.slots(), extra)


def lag_quantile_us(slot: Sequence[int], q: float) -> int:
    """Upper bound (us) of the loop-iteration time at quantile q, from the histogram."""
    base = IDX['loop_lag_bucket{le_us="1"}']
    counts = [slot[base + i] for i in range(LAG_BUCKETS)]
    total = sum(counts)
    if not total:
        return 0
    need = q * total
    run = 0
    for i, c in enumerate(counts):
        run += c
        if run >= need:
            return 1 << i
    return 1 << (LAG_BUCKETS - 1)


def _live(slots: Iterable[Sequence[int]]) -> list[Sequence[int]]:
    return [s for s in slots if s[IDX["pid"]]]


def render_prometheus(slots: Iterable[Sequence[int]], extra: Iterable[tuple[str, str, str, float]] = ()) -> bytes:
    """Totals over the live slots (plus retired workers' counters when `slots` carries
    them, see MetricsArea.slots), then per-worker series (label worker="<pid>").

    `extra` adds (name, kind, help, value) families such as process CPU and RSS.
    """
    retired = getattr(slots, "retired", None)
    live = _live(slots)
    lines: list[str] = []
    seen: set[str] = set()
    for i, c in enumerate(COUNTERS):
        if c.name in ("pid", "started_ms", "engine"):
            continue
        fam = "fastc1k_" + c.name + ("_total" if c.kind == "counter" else "")
        if fam not in seen:
            seen.add(fam)
            lines.append(f"# HELP {fam} {c.help}")
            lines.append(f"# TYPE {fam} {c.kind}")
        agg = max if c.name in ("loop_lag_max_us", "pool_peak") else sum
        total = agg([s[i] for s in live]) if live else 0
        if retired is not None and c.kind == "counter":
            total += retired[i]
        label = "{" + c.label + "}" if c.label else ""
        lines.append(f"{fam}{label} {total}")
        for s in live:
            wl = f'worker="{s[IDX["pid"]]}"' + ("," + c.label if c.label else "")
            lines.append(f"{fam}{{{wl}}} {s[i]}")
    for fam, label in (("fastc1k_loop_lag_p99_us", 0.99), ("fastc1k_loop_lag_p50_us", 0.5)):
        lines.append(f"# HELP {fam} loop iteration time at quantile {label}, microseconds (upper bound)")
        lines.append(f"# TYPE {fam} gauge")
        for s in live:
            lines.append(f'{fam}{{worker="{s[IDX["pid"]]}"}} {lag_quantile_us(s, label)}')
    fam = "fastc1k_loop_events_per_wait"
    lines += [f"# HELP {fam} events returned per epoll_wait since the worker started", f"# TYPE {fam} gauge"]
    for s in live:
        waits = s[IDX["loop_waits"]]
        lines.append(f'{fam}{{worker="{s[IDX["pid"]]}"}} {s[IDX["loop_events"]] / waits if waits else 0:.3f}')
    lines += _worker_process_lines([s[IDX["pid"]] for s in live])
    for name, kind, help_, value in extra:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {value}")
    return ("\n".join(lines) + "\n").encode()


_WORKER_PROCESS_FAMILIES = (
    ("fastc1k_worker_cpu_seconds_total", "counter", "user+system CPU of each worker"),
    ("fastc1k_worker_resident_memory_bytes", "gauge", "RSS of each worker"),
    ("fastc1k_worker_open_fds", "gauge", "open fds of each worker"),
    ("fastc1k_worker_max_fds", "gauge", "RLIMIT_NOFILE soft limit of each worker"),
)


# /metrics is answered inside a worker's loop, and reading a process's figures costs /proc
# reads that grow with its open fds (num_fds lists them): each process's figures are read
# at most once per PROCESS_FIGURES_TTL seconds, however often the page is scraped.
PROCESS_FIGURES_TTL = 1.0
_figures: dict[int, tuple[float, tuple | None]] = {}


def process_figures(pid: int) -> tuple[float, int, int, int] | None:
    """(CPU seconds, RSS bytes, open fds, RLIMIT_NOFILE soft) of `pid`, None if it is gone;
    cached for PROCESS_FIGURES_TTL seconds."""
    now = time.monotonic()
    hit = _figures.get(pid)
    if hit is not None and now - hit[0] < PROCESS_FIGURES_TTL:
        return hit[1]
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            value = (round(t.user + t.system, 3), p.memory_info().rss, p.num_fds(),
                     p.rlimit(psutil.RLIMIT_NOFILE)[0])
    except (psutil.Error, OSError):
        value = None  # exited meanwhile (the master folds its slot)
    if len(_figures) > 4096:
        _figures.clear()
    _figures[pid] = (now, value)
    return value


def _worker_process_lines(pids: Sequence[int]) -> list[str]:
    """CPU, RSS, open fds and fd limit of every live worker (process_figures)."""
    rows = [(pid, v) for pid in pids if (v := process_figures(pid)) is not None]
    lines: list[str] = []
    for k, (fam, kind, help_) in enumerate(_WORKER_PROCESS_FAMILIES):
        lines += [f"# HELP {fam} {help_}", f"# TYPE {fam} {kind}"]
        lines += [f'{fam}{{worker="{pid}"}} {vals[k]}' for pid, vals in rows]
    return lines


def process_series(pid: int | None = None) -> list[tuple[str, str, str, float]]:
    """CPU, RSS and fds of one process, as extra families for render_prometheus
    (process_figures: read at most once a second)."""
    figures = process_figures(pid or os.getpid())
    if figures is None:
        return []
    cpu, rss, fds, soft = figures
    return [
        ("fastc1k_process_cpu_seconds_total", "counter", "user+system CPU of this worker", cpu),
        ("fastc1k_process_resident_memory_bytes", "gauge", "RSS of this worker", rss),
        ("fastc1k_process_open_fds", "gauge", "open fds of this worker", fds),
        ("fastc1k_process_max_fds", "gauge", "RLIMIT_NOFILE soft limit of this worker", soft),
    ]


def parse_prometheus_text(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus text page, read by
    prometheus_client's parser; a line it refuses is skipped (the page may come from a
    server that is not fastc1k). Imported here, not at module level: workers never parse."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:   # parse what can be parsed, a line at a time
        families = []
        for line in text.splitlines():
            try:
                families += text_string_to_metric_families(line + "\n")
            except ValueError:
                pass
    for fam in families:
        for s in fam.samples:
            yield s.name, s.labels, float(s.value)
