"""The local executor: the farm's processes forked on this host, one pipe each.

An executor places, starts and talks to the farm processes; the farm (``farm.LoadFarm``)
does everything else (shares, stages, per-second rows, merging) the same way whatever the
executor. The interface, which ``cluster.DaskExecutor`` implements too:

- ``place(spec)`` -> one dict per farm process: ``machine``, ``worker``, ``limit``
  (connections that process may hold; None: unknown), ``sources`` (its source addresses)
- ``launch(cfgs)`` -> each process's connection slots; RuntimeError when one fails
- ``start()`` -> ``(started_ns, started_wall)``, the farm's second 0 in this host's
  CLOCK_MONOTONIC and wall clock; every process starts its seconds there
- ``send({i: msg})``; ``poll(timeout)`` -> [(i, msg)], where msg is a process's report,
  ``("error", text)`` or ``("lost", why)`` when the process is gone
- ``close()``; ``info()`` -> a dict for the summary; ``on_lost``: the default policy
"""
from __future__ import annotations

import multiprocessing
import socket
import time
from multiprocessing.connection import wait

START_LEAD_NS = 20_000_000      # second 0 begins this long after the start command


class ProcessExecutor:
    on_lost = "stop"            # a local load process dies only by a bug: stop and say so

    def __init__(self, mp_context: str = "fork"):
        self._ctx = multiprocessing.get_context(mp_context)
        self._procs = []
        self._pipes = []
        self._live = {}

    def place(self, spec) -> list[dict]:
        host = socket.gethostname()
        return [{"machine": host, "worker": "local", "limit": None, "sources": spec._sources}
                for _ in range(spec.process_count())]

    def launch(self, cfgs: list[dict]) -> list[int]:
        from .farm import _worker_main
        try:
            for i, cfg in enumerate(cfgs):
                ours, theirs = self._ctx.Pipe(duplex=True)
                p = self._ctx.Process(target=_worker_main, args=(theirs, cfg), daemon=True,
                                      name=f"fastc1k-load-{i}")
                p.start()
                theirs.close()
                self._procs.append(p)
                self._pipes.append(ours)
            caps = []
            for i, pipe in enumerate(self._pipes):
                if not pipe.poll(15):
                    raise RuntimeError(f"load worker {i} did not start")
                msg = pipe.recv()
                if msg[0] == "error":
                    raise RuntimeError(f"load worker {i} failed: {msg[1]}")
                caps.append(msg[2])
        except BaseException:
            self.close()
            raise
        self._live = dict(enumerate(self._pipes))
        return caps

    def start(self) -> tuple[int, float]:
        from ._client import monotonic_ns
        started_ns = monotonic_ns() + START_LEAD_NS
        started_wall = time.time() + START_LEAD_NS / 1e9
        for pipe in self._pipes:
            pipe.send(("start", started_ns))
        return started_ns, started_wall

    def send(self, msgs: dict) -> None:
        for i, msg in msgs.items():
            try:
                self._pipes[i].send(msg)
            except OSError:
                pass                # gone: poll() reports it

    def poll(self, timeout: float) -> list:
        out = []
        index = {id(p): i for i, p in self._live.items()}
        for pipe in wait(list(self._live.values()), timeout=timeout):
            i = index[id(pipe)]
            try:
                out.append((i, pipe.recv()))
            except (EOFError, OSError):
                del self._live[i]
                self._procs[i].join(1.0)
                out.append((i, ("lost", f"load worker {i} (pid {self._procs[i].pid}) died, "
                                        f"exit code {self._procs[i].exitcode}")))
        return out

    def close(self) -> None:
        # A process still waiting for its start command ends at once on "stop" (not on our
        # end's close: the forked siblings hold copies of it); one that ended ignores it.
        self.send({i: ("stop",) for i in range(len(self._pipes))})
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        for pipe in self._pipes:
            pipe.close()
        self._live = {}

    def info(self) -> dict:
        return {"executor": "local"}
