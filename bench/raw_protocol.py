"""The asyncio/uvloop baseline: a raw `asyncio.Protocol` answering /api/health.

`raw_protocol.py --loop uvloop|asyncio [--defer-accept S] --port P`. It counts request ends ("\r\n\r\n")
and answers each with fastc1k's /api/health response (same headers, Date rewritten once
a second), closing after a request that says `Connection: close`. No parser, no limits:
the least an asyncio server can do, as in bench/METHOD.md's anchor table.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from email.utils import formatdate

HEAD = (b"HTTP/1.1 200 OK\r\nServer: fastc1k\r\nContent-Type: application/json\r\n"
        b"Content-Length: 15\r\n")
BODY = b'{"status":"ok"}'
response = b""


def refresh_date(loop: asyncio.AbstractEventLoop) -> None:
    global response
    response = HEAD + b"Date: " + formatdate(usegmt=True).encode() + b"\r\n\r\n" + BODY
    loop.call_later(1.0, refresh_date, loop)


class Health(asyncio.Protocol):
    __slots__ = ("transport", "tail")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        n = data.count(b"\r\n\r\n")
        if not n:
            self.tail = data[-8192:]
            return
        self.tail = data[data.rfind(b"\r\n\r\n") + 4:]
        self.transport.write(response * n)
        if b"onnection: close" in data or b"onnection: Close" in data:
            self.transport.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--defer-accept", type=int, default=0, help="TCP_DEFER_ACCEPT seconds (0: off)")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    refresh_date(loop)
    server = loop.run_until_complete(loop.create_server(Health, "127.0.0.1", args.port, backlog=16384))
    for sock in server.sockets if args.defer_accept else ():
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, args.defer_accept)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    print(f"ready {args.loop} {args.port}", flush=True)
    loop.run_forever()
    server.close()


if __name__ == "__main__":
    main()
