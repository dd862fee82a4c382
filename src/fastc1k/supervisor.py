"""The pre-fork master: listeners, workers, restarts, signals.

Strategy: the master opens every listening socket before it forks and keeps them for its
whole life. With SO_REUSEPORT there is one socket per worker slot (the kernel spreads new
connections over them); closing one would drop the connections queued on it, so a worker
that dies or is reloaded is replaced by a new process on the *same* socket, and its queue
waits for it. Without SO_REUSEPORT every worker shares one socket.

The master never serves a request. It is a small single-threaded loop: signal handlers
only record the signal (the wakeup fd makes select() return), and everything else -
reaping, restarting with backoff, rolling reloads, adding and removing workers, the
shutdown deadline - happens in that loop. Metric slots are separate from listener slots:
during a reload an old and a new worker of the same listener slot run side by side, each
with its own counters; when a worker exits the master folds its counters into the
retired totals (MetricsArea.retire), so /metrics totals keep counting across restarts.

Signals to the master: SIGTERM/SIGINT graceful stop (a second one: immediate stop),
SIGQUIT immediate stop, SIGHUP rolling reload (re-imports --app), SIGTTIN/SIGTTOU add or
remove a worker. Each worker maps SIGTERM/SIGINT to worker.stop(graceful=True) and
SIGQUIT to worker.stop(graceful=False).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from . import _compat, metrics
from .config import ServerConfig
from .host import sysctl
from .routes import Routes
from .server import make_listener

__all__ = ["Supervisor", "ListenError", "reuseport_available", "LISTEN_MODES"]

log = logging.getLogger("fastc1k")

LISTEN_MODES = ("auto", "reuseport", "shared")
YOUNG = 5.0              # a worker dying younger than this (s) counts towards a crash loop
BACKOFF_FIRST = 0.1      # delay before the 2nd consecutive restart of a slot; doubles each time
BACKOFF_MAX = 10.0
READY_TIMEOUT = 30.0     # a reloading worker that is not ready by then is killed, the old one kept
KILL_MARGIN = 0.5        # after graceful_timeout, stragglers get SIGKILL this much later
_PR_SET_PDEATHSIG = 1


class ListenError(OSError):
    """A listener could not be opened; str() is one line for the user."""


def reuseport_available() -> bool:
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _describe_bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use"
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {where}: permission denied "
                "(ports below net.ipv4.ip_unprivileged_port_start need root or CAP_NET_BIND_SERVICE)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this host"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: cannot resolve host ({exc.strerror})"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass(eq=False)
class _Slot:
    index: int
    sock: socket.socket
    proc: "_Proc | None" = None
    failures: int = 0            # consecutive young deaths
    next_start: float = 0.0      # monotonic time of the next (re)start, when proc is None
    removed: bool = False        # SIGTTOU: close the socket once its worker is gone


@dataclass(eq=False)
class _Proc:
    pid: int
    slot: _Slot
    mslot: int                   # metrics slot
    started: float
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False       # asked to stop: its exit is expected
    replaces: "_Proc | None" = None   # reload: the old worker to retire once this one is ready
    unready_killed: bool = False


class Supervisor:
    """Fork `config.workers` workers of `engine` over listeners opened here; keep them running.

    `open()` opens the listeners (raises ListenError with a one-line message); `run()`
    forks, supervises until SIGTERM/SIGINT/SIGQUIT (or `request_stop()`), returns 0.
    """

    def __init__(self, config: ServerConfig, routes: Routes, engine: ModuleType | None, *,
                 listen: str = "auto", pin: bool = False, reload_routes: Callable[[], Routes] | None = None,
                 stats: Callable[[bytes], None] | None = None, stats_interval: float = 1.0,
                 max_workers: int | None = None) -> None:
        if listen not in LISTEN_MODES:
            raise ValueError(f"listen must be one of {', '.join(LISTEN_MODES)}, got {listen!r}")
        self.config = config
        self.routes = routes
        self.engine = engine
        self.listen_request = listen
        self.pin = pin
        self.reload_routes = reload_routes
        self.stats = stats
        self.stats_interval = stats_interval
        self.max_workers = max_workers or max(2 * config.workers, config.workers + 8)
        self.area = metrics.MetricsArea(2 * self.max_workers)  # room for old+new during a reload
        self._free_mslots = list(range(self.area.n_slots - 1, -1, -1))
        self.mode = ""
        self.port = config.port
        self.slots: list[_Slot] = []
        self.procs: dict[int, _Proc] = {}
        self.shared_sock: socket.socket | None = None
        self.cpus = sorted(os.sched_getaffinity(0))
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_limit_raised_from: int | None = None
        self._signals: list[int] = []
        self._wake_r = self._wake_w = -1
        self._stopping = 0.0          # monotonic deadline once stopping, 0 while running
        self._fast_stop = False
        self._killed = False
        self._reload_queue: list[_Slot] = []

    # --- listeners ----------------------------------------------------------------------
    def open(self) -> None:
        """Raise the fd limit to the hard limit, open the listeners (ListenError on failure)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                self.fd_limit_raised_from, self.fd_limit = soft, hard
            except (ValueError, OSError):
                pass
        mode = self.listen_request
        if mode == "auto":
            mode = "reuseport" if reuseport_available() else "shared"
        elif mode == "reuseport" and not reuseport_available():
            raise ListenError("SO_REUSEPORT is not available on this host; use --listen shared")
        self.mode = mode
        host, port = self.config.host, self.config.port
        try:
            if mode == "reuseport" and port != 0:
                # A plain bind fails if anyone listens there already - even another fastc1k
                # whose SO_REUSEPORT sockets would otherwise silently share the port with us.
                probe = make_listener(host, port, 1, reuseport=False)
                probe.close()
            first = make_listener(host, port, self.config.backlog, reuseport=(mode == "reuseport"),
                                  defer_accept=self.config.defer_accept)
        except OSError as exc:
            raise ListenError(_describe_bind_error(host, port, exc)) from None
        self.port = first.getsockname()[1]
        if mode == "shared":
            self.shared_sock = first
            self.slots = [_Slot(i, first) for i in range(self.config.workers)]
        else:
            self.slots = [_Slot(0, first)]
            try:
                for i in range(1, self.config.workers):
                    self.slots.append(_Slot(i, self._reuseport_socket()))
            except OSError as exc:
                self.close()
                raise ListenError(_describe_bind_error(host, self.port, exc)) from None

    def _reuseport_socket(self) -> socket.socket:
        return make_listener(self.config.host, self.port, self.config.backlog, reuseport=True,
                             defer_accept=self.config.defer_accept)

    @property
    def address(self) -> str:
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def resolve_backend(self) -> None:
        """Probe io_uring once, here in the master: where it cannot run, one line says so and
        every worker is given epoll (instead of each finding out and saying so)."""
        if self.engine is not None:
            self.config = _compat.resolve_backend(self.engine, self.config)

    def startup_line(self) -> str:
        c = self.config
        fd = f"{self.fd_limit}" + (f" (raised from {self.fd_limit_raised_from})" if self.fd_limit_raised_from else "")
        listen = "reuseport (one socket per worker)" if self.mode == "reuseport" else \
            "shared (one socket; SO_REUSEPORT unavailable or --listen shared)"
        return (f"fastc1k: serving {self.address} engine={self.engine.ENGINE_NAME} backend={c.backend} "
                f"workers={len(self.slots)} "
                f"listen={listen} fd_limit/worker={fd} max_connections/worker={c.max_connections} "
                f"max_request_line={c.max_request_line} max_header_bytes={c.max_header_bytes} "
                f"max_headers={c.max_headers} max_body={c.max_body} header_timeout={c.header_timeout:g}s "
                f"idle_timeout={c.idle_timeout:g}s send_timeout={c.send_timeout:g}s "
                f"graceful_timeout={c.graceful_timeout:g}s backlog={c.backlog} master_pid={os.getpid()}")

    def close(self) -> None:
        socks = {id(s.sock): s.sock for s in self.slots}
        for s in socks.values():
            s.close()

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        if self.engine is None:
            raise ValueError("Supervisor.engine is not set")
        self.resolve_backend()
        if not self.slots:
            self.open()
        _setproctitle("fastc1k: master")
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
                   signal.SIGTTOU, signal.SIGCHLD)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in self.slots:
                self._spawn(slot)
            next_stats = time.monotonic() + self.stats_interval
            while self.procs or not self._stopping:
                now = time.monotonic()
                timeout = 0.5
                for slot in self.slots:
                    if slot.proc is None and not slot.removed and not self._stopping:
                        timeout = min(timeout, max(0.0, slot.next_start - now))
                if self._stopping:
                    timeout = min(timeout, max(0.0, self._stopping - now))
                if self.stats:
                    timeout = min(timeout, max(0.0, next_stats - now))
                ready_fds = [p.ready_fd for p in self.procs.values() if p.ready_fd is not None]
                try:
                    readable, _, _ = select.select([self._wake_r, *ready_fds], [], [], timeout)
                except InterruptedError:
                    readable = []
                if self._wake_r in readable:
                    _drain(self._wake_r)
                self._handle_signals()
                self._reap()
                for p in list(self.procs.values()):
                    if p.ready_fd is not None and p.ready_fd in readable:
                        self._on_ready_fd(p)
                self._check_reload_timeouts()
                now = time.monotonic()
                if self._stopping:
                    if now >= self._stopping and self.procs and not self._killed:
                        self._killed = True
                        for p in self.procs.values():
                            log.warning("worker %d (pid %d) still running %.1f s after the stop; SIGKILL",
                                        p.slot.index, p.pid, self.config.graceful_timeout + KILL_MARGIN)
                            _kill(p.pid, signal.SIGKILL)
                    continue
                for slot in self.slots:
                    if slot.proc is None and not slot.removed and now >= slot.next_start:
                        self._spawn(slot)
                if self.stats and now >= next_stats:
                    next_stats = now + self.stats_interval
                    try:
                        self.stats(self.area.render())
                    except Exception as exc:  # a broken stats printer must not take the master down
                        log.warning("stats: %s", exc)
            log.info("stopped")
            return 0
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            signal.set_wakeup_fd(old_wakeup)
            for p in list(self.procs.values()):  # only on an exception in the loop itself
                _kill(p.pid, signal.SIGKILL)
                try:
                    os.waitpid(p.pid, 0)
                except ChildProcessError:
                    pass
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.close()

    def request_stop(self, graceful: bool = True) -> None:
        self._on_signal(signal.SIGTERM if graceful else signal.SIGQUIT, None)

    def _on_signal(self, sig: int, frame) -> None:
        self._signals.append(sig)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # _reap runs on every iteration
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self._stop(fast=(sig == signal.SIGQUIT or bool(self._stopping)), why=_signame(sig))
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGTTIN:
                self._add_worker()
            elif sig == signal.SIGTTOU:
                self._remove_worker()

    def _stop(self, fast: bool, why: str) -> None:
        if self._stopping and (not fast or self._fast_stop):
            return
        if not self._stopping:
            self._stopping = time.monotonic() + self.config.graceful_timeout + KILL_MARGIN
        self._fast_stop = self._fast_stop or fast
        log.info("%s: %s stop of %d workers", why, "immediate" if fast else
                 f"graceful (up to {self.config.graceful_timeout:g} s)", len(self.procs))
        self._reload_queue.clear()
        for p in self.procs.values():
            p.retiring = True
            _kill(p.pid, signal.SIGQUIT if fast else signal.SIGTERM)

    # --- workers ------------------------------------------------------------------------
    def _spawn(self, slot: _Slot, replaces: _Proc | None = None) -> _Proc | None:
        if not self._free_mslots:
            log.error("no free metrics slot for worker %d; retrying in 1 s", slot.index)
            slot.next_start = time.monotonic() + 1.0
            return None
        mslot = self._free_mslots.pop()
        self.area.reset(mslot)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker; never returns
            os.close(ready_r)
            self._child(slot, mslot, ready_w, master)
        os.close(ready_w)
        proc = _Proc(pid, slot, mslot, time.monotonic(), ready_r, replaces=replaces)
        self.procs[pid] = proc
        if replaces is None:
            slot.proc = proc
        log.debug("worker %d started (pid %d)", slot.index, pid)
        return proc

    def _child(self, slot: _Slot, mslot: int, ready_w: int, master: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Meant for the master (e.g. `kill -HUP -<pgid>`): ignored here.
            for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(sig, signal.SIG_IGN)
            _set_pdeathsig(signal.SIGTERM)
            if os.getppid() != master:
                os._exit(0)  # the master died between fork and prctl (not "ppid is 1": in a
                #             container without an init the master itself is PID 1)
            _prefer_for_oom_kill()
            os.close(self._wake_r)
            os.close(self._wake_w)
            for s in self.slots:
                if s.sock is not slot.sock:
                    s.sock.close()
            for p in self.procs.values():
                if p.ready_fd is not None:
                    os.close(p.ready_fd)
            engine_name = self.engine.ENGINE_NAME
            _setproctitle(f"fastc1k: worker {slot.index} ({engine_name})")
            if self.pin:
                os.sched_setaffinity(0, {self.cpus[slot.index % len(self.cpus)]})
            worker = self.engine.Worker(slot.sock, self.config, self.routes, self.area, mslot)
            signal.signal(signal.SIGTERM, lambda *_: worker.stop(True))
            signal.signal(signal.SIGINT, lambda *_: worker.stop(True))
            signal.signal(signal.SIGQUIT, lambda *_: worker.stop(False))
            os.write(ready_w, b"1")
            os.close(ready_w)
            worker.run()
            code = 0
        except BaseException:
            try:
                sys.stderr.write(f"fastc1k: worker {slot.index} (pid {os.getpid()}) failed:\n"
                                 + traceback.format_exc())
            except BaseException:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _on_ready_fd(self, p: _Proc) -> None:
        try:
            data = os.read(p.ready_fd, 1)
        except OSError:
            data = b""
        os.close(p.ready_fd)
        p.ready_fd = None
        if not data:
            return  # exited before it was ready; _reap handles it
        p.ready = True
        old = p.replaces
        if old is not None:
            # The slot's current worker may have been restarted meanwhile: retire it as well.
            prev, p.replaces, p.slot.proc = p.slot.proc, None, p
            for q in {old, prev} - {None}:
                if q.pid in self.procs:
                    q.retiring = True
                    _kill(q.pid, signal.SIGTERM)
                    log.info("reload: worker %d pid %d ready, retiring pid %d", p.slot.index, p.pid, q.pid)
            self._next_reload()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            p = self.procs.pop(pid, None)
            if p is None:
                continue
            self._on_exit(p, status)

    def _on_exit(self, p: _Proc, status: int) -> None:
        lived = time.monotonic() - p.started
        self.area.retire(p.mslot)
        self._free_mslots.append(p.mslot)
        if p.ready_fd is not None:
            os.close(p.ready_fd)
            p.ready_fd = None
        how = (f"killed by {_signame(os.WTERMSIG(status))}" if os.WIFSIGNALED(status)
               else f"exited with status {os.WEXITSTATUS(status)}")
        slot = p.slot
        if p.replaces is not None:  # a reload's new worker that never became ready
            log.error("reload: new worker %d (pid %d) %s before it was ready; keeping pid %d",
                      slot.index, p.pid, how, p.replaces.pid)
            self._next_reload()
            return
        if p.retiring or self._stopping:
            log.debug("worker %d (pid %d) %s after %.1f s", slot.index, p.pid, how, lived)
            if slot.proc is p:
                slot.proc = None
            if (slot.removed and self.mode == "reuseport"
                    and not any(q.slot is slot for q in self.procs.values())):
                slot.sock.close()
            return
        if slot.proc is not p:
            return
        slot.proc = None
        slot.failures = slot.failures + 1 if lived < YOUNG else 1
        delay = 0.0 if slot.failures <= 1 else min(BACKOFF_FIRST * 2 ** (slot.failures - 2), BACKOFF_MAX)
        slot.next_start = time.monotonic() + delay
        if slot.failures <= 1:
            log.warning("worker %d (pid %d) %s after %.1f s; restarting", slot.index, p.pid, how, lived)
        else:
            log.warning("worker %d (pid %d) %s after %.1f s; crash loop (%d in a row): next start in %.1f s",
                        slot.index, p.pid, how, lived, slot.failures, delay)

    # --- SIGHUP: rolling reload ------------------------------------------------------------
    def _reload(self) -> None:
        if self._reload_queue or any(p.replaces for p in self.procs.values()):
            log.warning("reload already in progress; SIGHUP ignored")
            return
        if self.reload_routes is not None:
            try:
                self.routes = self.reload_routes()
            except Exception as exc:
                log.error("reload: cannot load the app (%s: %s); keeping the running workers",
                          type(exc).__name__, exc)
                return
        self._reload_queue = [s for s in self.slots if not s.removed]
        log.info("reload: replacing %d workers one by one", len(self._reload_queue))
        self._next_reload()

    def _next_reload(self) -> None:
        while self._reload_queue and not self._stopping:
            slot = self._reload_queue.pop(0)
            if slot.removed:
                continue
            if slot.proc is None:  # being restarted anyway: it will run the new routes
                continue
            if self._spawn(slot, replaces=slot.proc) is not None:
                return
        if not any(p.replaces for p in self.procs.values()):
            log.info("reload: done")

    def _check_reload_timeouts(self) -> None:
        now = time.monotonic()
        for p in self.procs.values():
            if p.replaces is not None and not p.unready_killed and now - p.started > READY_TIMEOUT:
                log.error("reload: new worker %d (pid %d) not ready after %.0f s; killing it",
                          p.slot.index, p.pid, READY_TIMEOUT)
                _kill(p.pid, signal.SIGKILL)
                p.unready_killed = True

    # --- SIGTTIN / SIGTTOU -------------------------------------------------------------------
    def _add_worker(self) -> None:
        live = [s for s in self.slots if not s.removed]
        if len(live) >= self.max_workers:
            log.warning("SIGTTIN: already %d workers, the most this master was started for (%d)",
                        len(live), self.max_workers)
            return
        index = len(self.slots)
        if self.mode == "shared":
            sock = self.shared_sock
        else:
            try:
                sock = self._reuseport_socket()
            except OSError as exc:
                log.error("SIGTTIN: %s", _describe_bind_error(self.config.host, self.port, exc))
                return
        slot = _Slot(index, sock)
        self.slots.append(slot)
        self._spawn(slot)
        log.info("SIGTTIN: worker %d added (%d workers)", index, len(live) + 1)

    def _remove_worker(self) -> None:
        live = [s for s in self.slots if not s.removed]
        if len(live) <= 1:
            log.warning("SIGTTOU: only one worker left; not removing it")
            return
        slot = live[-1]
        slot.removed = True
        if slot in self._reload_queue:
            self._reload_queue.remove(slot)
        procs = [p for p in self.procs.values() if p.slot is slot]
        for p in procs:
            p.retiring = True
            _kill(p.pid, signal.SIGTERM)
        if self.mode == "reuseport":
            note = "" if sysctl.read("net.ipv4.tcp_migrate_req") == "1" else \
                " (connections still queued on its socket when it closes are reset; net.ipv4.tcp_migrate_req=1 avoids that)"
        else:
            note = ""
        if not procs and self.mode == "reuseport":
            slot.sock.close()
        log.info("SIGTTOU: worker %d retiring (%d workers)%s", slot.index, len(live) - 1, note)
        while self.slots and self.slots[-1].removed and not any(p.slot is self.slots[-1] for p in self.procs.values()):
            self.slots.pop()

    def workers(self) -> list[int]:
        """Pids of the running workers (the current one of each slot)."""
        return [s.proc.pid for s in self.slots if s.proc is not None and not s.removed]


# --- small OS helpers --------------------------------------------------------------------------
def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _setproctitle(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # a dependency, but naming processes is not worth failing for
        return
    setproctitle.setproctitle(title)


WORKER_OOM_SCORE_ADJ = 300


def _prefer_for_oom_kill() -> None:
    """At a memory limit the kernel kills the largest process; a worker asks to go first
    (raising one's own score needs no privilege): the master restarts a worker, while a
    killed master takes every connection, and in a container the container itself."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(WORKER_OOM_SCORE_ADJ))
    except OSError:
        pass


def _set_pdeathsig(sig: int) -> None:
    """Have the kernel send `sig` to this worker if the master dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
