"""The probe's client process: open n keep-alive connections, hold them, ask each again,
close them; its counters live in shared arrays the controller reads.

The client is lean on purpose: one epoll loop over raw non-blocking sockets bound to
127.0.0.x with IP_BIND_ADDRESS_NO_PORT (so the 4-tuple, not the source port alone, must be
unique: ~28k connections per source address per server port), with at most `in_flight`
handshakes outstanding.
"""
from __future__ import annotations

import collections
import errno
import resource
import select
import signal
import socket
import time

__all__ = ["client_process", "response_done", "REQUEST", "OPEN", "HOLD", "VERIFY", "CLOSE", "C_OPENED", "C_FAILED", "C_LOST", "C_VERIFIED",
           "C_VERIFY_FAILED", "C_STARTED", "C_DONE", "N_COUNTERS", "N_ERRNO", "ERRNO_SLOTS"]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
REQUEST = b"GET /api/health HTTP/1.1\r\nHost: probe\r\n\r\n"
# client phases (shared control word)
OPEN, HOLD, VERIFY, CLOSE = 1, 2, 3, 4
# per-client counters (shared array)
C_OPENED, C_FAILED, C_LOST, C_VERIFIED, C_VERIFY_FAILED, C_STARTED, C_DONE = range(7)
N_COUNTERS = 7
N_ERRNO = 8
ERRNO_SLOTS = (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ECONNREFUSED, errno.ETIMEDOUT,
               errno.ECONNRESET, errno.ENOBUFS, 0)  # 0: other (bad response, server close)


def response_done(buf: bytes) -> int:
    """0 incomplete, 200 a complete 200 response, else -1 (anything else)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0 if len(buf) < 8192 else -1
    head = buf[:end].lower()
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        return -1
    j = head.find(b"\r\n", i + 2)
    try:
        length = int(head[i + 17: j if j >= 0 else len(head)])
    except ValueError:
        return -1
    if len(buf) < end + 4 + length:
        return 0
    if len(buf) > end + 4 + length or not buf.startswith(b"HTTP/1.1 200 "):
        return -1
    return 200


def _errslot(err: int) -> int:
    return ERRNO_SLOTS.index(err) if err in ERRNO_SLOTS else N_ERRNO - 1


def client_process(idx: int, n: int, ips: list[str], target: tuple[str, int], in_flight: int,
            phase, counters, errs, stop_open, connect_timeout: float = 10.0) -> None:
    """One client process: open n connections, hold them, verify them, close them. A
    connection unanswered `connect_timeout` after connect() fails (ETIMEDOUT): a SYN that a
    full conntrack table dropped is otherwise retried by the kernel for two minutes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = idx * N_COUNTERS
    ebase = idx * N_ERRNO
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    held: set[int] = set()
    pending = 0          # handshakes + first answers outstanding
    since: collections.deque = collections.deque()   # (connect time, fd, socket), oldest first
    started = 0
    opened = failed = 0
    fatal = False
    IN, OUT = select.EPOLLIN | select.EPOLLRDHUP, select.EPOLLOUT
    ERR = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP

    def fail(fd: int, err: int) -> None:
        s = socks.pop(fd)
        bufs.pop(fd, None)
        held.discard(fd)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        s.close()
        errs[ebase + _errslot(err)] += 1

    # --- open
    while phase.value == OPEN and (started < n or pending):
        while pending < in_flight and started < n and not fatal and not stop_open.value:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((ips[(idx + started) % len(ips)], 0))
                err = s.connect_ex(target)
            except OSError as e:
                err = e.errno or -1
            started += 1
            if err not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                errs[ebase + _errslot(err)] += 1
                if err in (errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS):
                    fatal = True   # the next connections would fail the same way
                continue
            fd = s.fileno()
            socks[fd] = s
            bufs[fd] = b""
            pending += 1
            since.append((time.monotonic(), fd, s))
            # On loopback the handshake usually completes inside connect(): send at once and
            # wait for the answer; only a connection still in SYN_SENT waits for EPOLLOUT.
            try:
                s.send(REQUEST)
                ep.register(fd, IN)
            except BlockingIOError:
                ep.register(fd, OUT | ERR)
            except OSError as e:
                socks.pop(fd)
                bufs.pop(fd)
                s.close()
                pending -= 1
                failed += 1
                errs[ebase + _errslot(e.errno or 0)] += 1
        if fatal or stop_open.value:
            n = started     # open no more; finish what is in flight
        expired = time.monotonic() - connect_timeout
        while since and since[0][0] < expired:
            _, fd, s = since.popleft()
            if socks.get(fd) is s and fd not in held:   # still in SYN-SENT or unanswered
                fail(fd, errno.ETIMEDOUT)
                pending -= 1
                failed += 1
        for fd, ev in ep.poll(0.05):
            s = socks.get(fd)
            if s is None:
                continue
            if fd in held:
                fail(fd, 0)     # the server closed a held connection
                counters[base + C_LOST] += 1
                continue
            if ev & OUT:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(fd, err)
                    pending -= 1
                    failed += 1
                    continue
                try:
                    s.send(REQUEST)
                except OSError as e:
                    fail(fd, e.errno or 0)
                    pending -= 1
                    failed += 1
                    continue
                ep.modify(fd, IN)
                continue
            try:
                data = s.recv(4096)
            except OSError as e:
                fail(fd, e.errno or 0)
                pending -= 1
                failed += 1
                continue
            buf = bufs[fd] + data if bufs[fd] else data
            done = response_done(buf) if data else -1
            if done == 0:
                bufs[fd] = buf
                continue
            pending -= 1
            if done == 200:
                bufs[fd] = b""
                held.add(fd)
                opened += 1
            else:
                fail(fd, 0)
                failed += 1
        counters[base + C_OPENED] = opened
        counters[base + C_FAILED] = failed
        counters[base + C_STARTED] = started
    counters[base + C_DONE] = 1

    # --- hold: a held connection that becomes readable was closed by the server
    while phase.value in (OPEN, HOLD):
        for fd, ev in ep.poll(0.1):
            if fd in held:
                fail(fd, 0)
                counters[base + C_LOST] += 1
    # --- verify: every held connection is answered again
    if phase.value == VERIFY:
        waiting = set()
        for fd in list(held):
            try:
                socks[fd].send(REQUEST)
                waiting.add(fd)
            except OSError as e:
                fail(fd, e.errno or 0)
                counters[base + C_VERIFY_FAILED] += 1
        verified = 0
        while waiting and phase.value == VERIFY:
            for fd, ev in ep.poll(0.05):
                if fd not in waiting:
                    continue
                try:
                    data = socks[fd].recv(4096)
                except OSError as e:
                    waiting.discard(fd)
                    fail(fd, e.errno or 0)
                    counters[base + C_VERIFY_FAILED] += 1
                    continue
                buf = bufs[fd] + data
                done = response_done(buf) if data else -1
                if done == 0:
                    bufs[fd] = buf
                    continue
                waiting.discard(fd)
                if done == 200:
                    verified += 1
                    bufs[fd] = b""
                else:
                    fail(fd, 0)
                    counters[base + C_VERIFY_FAILED] += 1
            counters[base + C_VERIFIED] = verified
        counters[base + C_VERIFY_FAILED] += len(waiting)  # no answer before the controller gave up
    else:   # the controller gave up before this process began to verify: none answered again
        counters[base + C_VERIFY_FAILED] += len(held)
    counters[base + C_DONE] = 2
    while phase.value != CLOSE:
        time.sleep(0.05)
    for s in socks.values():
        s.close()
    counters[base + C_DONE] = 3
