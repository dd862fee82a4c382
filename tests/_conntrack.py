"""Fill this network namespace's conntrack table with assured, established TCP entries
(ctnetlink IPCTNL_MSG_CT_NEW, what `conntrack -I ... -u ASSURED` sends, in batches), so
that the next connections find it full: assured entries are never early-dropped, so a new
connection past nf_conntrack_max is refused ("table full, dropping packet") and its SYN
vanishes. Run inside a namespace the test owns: `python tests/_conntrack.py fill N`
(`room N` inserts or deletes entries until exactly N connections fit: other entries, such
as an earlier test's TIME_WAIT ones, expire on their own clock).
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


def message(seq, src, dst, sport, dport, timeout, delete=False):
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _nla(1 | NLA_F_NESTED, _tuple(src, dst, sport, dport))
    if not delete:
        body += _nla(2 | NLA_F_NESTED, _tuple(dst, src, dport, sport))
        body += _nla(3, struct.pack("!I", IPS_ASSURED | IPS_CONFIRMED))
        body += _nla(7, struct.pack("!I", timeout))
        body += _nla(4 | NLA_F_NESTED, _nla(1 | NLA_F_NESTED, _nla(1, bytes([TCP_CONNTRACK_ESTABLISHED]))))
    kind = IPCTNL_MSG_CT_DELETE if delete else IPCTNL_MSG_CT_NEW
    flags = NLM_F_REQUEST if delete else NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, 0)
    return hdr + body


def fill(n, timeout=600, batch=256, delete=False, start=0):
    """Insert n entries from index start (delete=True: remove them); (sent, {errno: failures})."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((0, 0))
    s.setblocking(False)
    failed = {}
    sent = 0
    i = start
    while sent < n:
        buf = b""
        for _ in range(min(batch, n - sent)):
            a, b = divmod(i, 60000)
            src = f"10.{200 + a // 250}.{a % 250}.1"
            buf += message(i, src, "10.199.0.1", 1024 + b, 80, timeout, delete)
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


def room(n):
    """Insert or delete this script's entries until the table has room for exactly n more;
    an index already present (insert) or already gone (delete) fails and the next is tried."""
    index = {False: 1 << 20, True: 0}          # inserts above fill()'s indices, deletes from its first
    for _ in range(100):
        change = _sysctl("nf_conntrack_count") - (_sysctl("nf_conntrack_max") - n)
        if change == 0:
            return
        delete = change > 0
        _, failed = fill(abs(change), delete=delete, start=index[delete])
        index[delete] += abs(change)
    raise SystemExit(f"could not bring the table to room for {n}: count {_sysctl('nf_conntrack_count')}")


if __name__ == "__main__":
    if sys.argv[1] == "room":
        room(int(sys.argv[2]))
        print(_sysctl("nf_conntrack_max") - _sysctl("nf_conntrack_count"))
    else:
        sent, failed = fill(int(sys.argv[2]))
        print(sent, sum(failed.values()))
