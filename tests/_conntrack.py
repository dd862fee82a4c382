"""Fill this network namespace's conntrack table with assured, established TCP entries
(ctnetlink IPCTNL_MSG_CT_NEW, what `conntrack -I ... -u ASSURED` sends, in batches), so
that the next connections find it full: assured entries are never early-dropped, so a new
connection past nf_conntrack_max is refused ("table full, dropping packet") and its SYN
vanishes. Run inside a namespace the test owns: `python tests/_conntrack.py fill N`
(`room N` flushes the namespace's table and fills it until exactly N connections fit:
an earlier run's entries, closing ones with a 10 s timeout among them, would otherwise
expire, or be evicted once expired, in the middle of the next run, and give it more room).
The entries (10.200.0.0/13 -> 10.199.0.1:80, never routed) go with the namespace."""
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLMSG_ERROR = 2
IPS_ASSURED, IPS_CONFIRMED = 1 << 2, 1 << 3
TCP_CONNTRACK_ESTABLISHED = 3


def _nla(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def _tuple(src, dst, sport, dport):
    ip = _nla(1 | NLA_F_NESTED, _nla(1, socket.inet_aton(src)) + _nla(2, socket.inet_aton(dst)))
    proto = _nla(2 | NLA_F_NESTED, _nla(1, b"\x06") + _nla(2, struct.pack("!H", sport)) + _nla(3, struct.pack("!H", dport)))
    return ip + proto


def message(seq, src, dst, sport, dport, timeout):
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _nla(1 | NLA_F_NESTED, _tuple(src, dst, sport, dport))
    body += _nla(2 | NLA_F_NESTED, _tuple(dst, src, dport, sport))
    body += _nla(3, struct.pack("!I", IPS_ASSURED | IPS_CONFIRMED))
    body += _nla(7, struct.pack("!I", timeout))
    body += _nla(4 | NLA_F_NESTED, _nla(1 | NLA_F_NESTED, _nla(1, bytes([TCP_CONNTRACK_ESTABLISHED]))))
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, flags, seq, 0)
    return hdr + body


def fill(n, timeout=600, batch=256):
    """Insert n entries; (sent, {errno: failures})."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((0, 0))
    s.setblocking(False)
    failed = {}
    sent = 0
    i = 0
    while sent < n:
        buf = b""
        for _ in range(min(batch, n - sent)):
            a, b = divmod(i, 60000)
            src = f"10.{200 + a // 250}.{a % 250}.1"
            buf += message(i, src, "10.199.0.1", 1024 + b, 80, timeout)
            i += 1
            sent += 1
        s.send(buf)
        _drain(s, failed)
    time.sleep(0.05)
    _drain(s, failed)
    s.close()
    return sent, failed


def _drain(s, failed):
    """Count the errors the kernel sent back (errno -> n); success sends nothing."""
    while True:
        try:
            data = s.recv(1 << 16)
        except BlockingIOError:
            return
        off = 0
        while off < len(data):
            ln, typ = struct.unpack_from("=IH", data, off)
            if typ == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off + 16)[0]
                if err:
                    failed[err] = failed.get(err, 0) + 1
            off += (ln + 3) & ~3


def _sysctl(name):
    with open(f"/proc/sys/net/netfilter/{name}") as f:
        return int(f.read())


def flush():
    """Delete every entry of this namespace's table (ctnetlink IPCTNL_MSG_CT_DELETE without a
    tuple, what `conntrack -F` sends), then wait for the count to fall."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    s.send(struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                       NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
    s.recv(1 << 16)   # the ack: the flush is done
    s.close()
    for _ in range(250):
        if _sysctl("nf_conntrack_count") == 0:
            return
        time.sleep(0.02)


def room(n):
    """Exactly n connections fit: the table flushed, then filled with this script's entries."""
    flush()
    fill(_sysctl("nf_conntrack_max") - _sysctl("nf_conntrack_count") - n)


if __name__ == "__main__":
    if sys.argv[1] == "room":
        room(int(sys.argv[2]))
        print(_sysctl("nf_conntrack_max") - _sysctl("nf_conntrack_count"))
    else:
        sent, failed = fill(int(sys.argv[2]))
        print(sent, sum(failed.values()))
