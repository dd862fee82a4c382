"""fastc1k.load: an epoll HTTP/1.1 load generator that measures latency honestly.

Worker processes each run a Cython epoll loop (``_client``) over their share of the
connections with the GIL released; a coordinator merges their per-second reports.

Command line: ``python -m fastc1k.load URL -c 1000 -d 30s [--rate 50000] ...``
(``--help`` lists the flags).

Python API (the capacity suite's)::

    from fastc1k.load import LoadSpec, LoadFarm, run

    spec = LoadSpec(url="http://127.0.0.1:8080/api/health", connections=1000,
                    duration=None,          # run(): seconds; LoadFarm: until stop()
                    rate=None,              # None: closed loop; req/s: open loop (CO-corrected)
                    pipeline=1, processes=None,   # None: one process per 15,000 connections
                    source_ips=None,        # "127.0.0.1-127.0.0.8" or a list (IP_BIND_ADDRESS_NO_PORT)
                    ramp=0.0,               # seconds to open the connections
                    connect_timeout=2.0, request_timeout=5.0,
                    requests=None,          # mix: [(method, path, body, weight)]
                    max_connections=None,   # size the process count for later set_connections
                    reconnect_delay=0.1, headers={})
    farm = LoadFarm(spec).start()   # executor=cluster.DaskExecutor("tcp://HOST:8786"): on a
                                    # Dask cluster's workers; on_lost="continue" | "stop"
    farm.set_connections(500)       # ramp the client count up or down while running
    farm.set_rate(20000)            # open loop only
    rows = farm.timeline()          # complete per-second rows so far
    fine = farm.fine_timeline()     # complete 100 ms rows so far (t, requests, ok, errors, p50/p99/max)
    h = farm.histogram_between(t0, t1)   # merged corrected histogram of seconds t0 <= t < t1
    res = farm.stop()               # Result
    res.summary; res.histogram; res.service_histogram; res.timeline; res.fine_timeline; res.to_json()
    res.write_hdr_log("run.hlog")   # per-second histograms, standard HdrHistogram log format
    res = run(spec)                 # fixed duration, same Result
    farm.lost                       # farm processes lost so far (a machine gone mid-run)

Timeline row keys: t, duration, requests, ok, errors {class: n}, sent, p50_us, p99_us,
p999_us, max_us, service_p50_us, service_p99_us, connections_open, connects_ok,
connects_failed, intended (sends due that second, open loop), achieved_rate (responses/s),
late_sends (sent > 1 ms after due), generator_late (due times the loop itself noticed
late), client_cpu (cores used by the load processes), client_cpu_wait (largest share of
the second a load process spent runnable but waiting for a CPU: > 0.2 means the host starved
the generator), lost_processes and lost_connections (load lost with a machine), complete.
100 ms row keys (fine_timeline): t, duration, requests, ok, errors, error_count, p50_us,
p99_us, max_us, complete.

The summary's ``workers`` lists every load process (machine, worker, requests, connections,
intended and achieved rate, cpu, cpu_wait, bottleneck, lost; the requests add up to the
total), ``lost`` the processes lost mid-run, ``executor`` "local" or "dask" (then also
``scheduler`` and each worker's ``clock_offsets``).

Latency is in microseconds. ``latency``/``histogram`` is measured from the intended send
time (open loop; closed loop: the actual send), ``service_time``/``service_histogram``
from the actual send. Histograms are ``hdrh.HdrHistogram(1, 3_600_000_000, 3)``.

Error classes (summary["errors"], row["errors"]): refused, reset (reset, or closed with
requests outstanding), connect_timeout, read_timeout (no full answer within
request_timeout), addrnotavail (bind/connect EADDRNOTAVAIL: ports or source address),
emfile (out of fds), bad_response (unparseable framing), connect_error (any other connect
failure), and status_<code> for every non-2xx answer. A failed connect is retried after
reconnect_delay; a connection lost otherwise is reopened at once.

Closed loop works like wrk: each connection sends ``pipeline`` requests in one write
and sends the next batch when all are answered. Open loop: request j of a process is due
at start + j/rate on connection j mod N; a busy connection sends its overdue requests as
soon as it is free, and their latency still counts from the due time (as wrk2). Each
connection offers rate/connections: while a ramp opens connections the offered rate grows
with them, and a connection owes nothing from before it was opened.
"""
from .farm import ERROR_CLASSES, LoadFarm, LoadSpec, Result, run

__all__ = ["LoadSpec", "LoadFarm", "Result", "run", "ERROR_CLASSES"]
