"""Network namespaces, veth pairs and source addresses.

Two kinds of namespace: `enter_netns` moves the calling process into a new anonymous one
(unshare(CLONE_NEWNET): the whole capacity run then lives on its loopback), and `NetNs`
is a named one (`ip netns add`) that a child joins before it execs, or a thread for a
moment (setns: `enter`, `in_netns`), joined to the host by a `Veth` pair. `ip()` is the
one place that runs iproute2.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import os
import shutil
import subprocess
import threading
from typing import Any, Callable

from . import sysctl

__all__ = ["CLONE_NEWNET", "ip", "nft", "ip_available", "enter_netns", "enter", "in_netns", "netns_names", "NetNs",
           "Veth", "free_block", "parse_source_ips"]

CLONE_NEWNET = 0x40000000
MAX_SOURCE_IPS = 4096


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def ip_available() -> bool:
    return bool(shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin"))


def ip(*argv: str, netns: str | None = None) -> str:
    """Run `ip ARGV` (inside the named `netns` when given); its stdout, or OSError with its
    stderr."""
    cmd = (["ip", "-n", netns] if netns else ["ip"]) + list(argv)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def nft(*argv: str, stdin: str | None = None, netns: str | None = None, timeout: float | None = None) -> str:
    """Run `nft ARGV` (inside the named `netns` when given); its stdout, or OSError with its
    stderr (or why it could not run)."""
    where = f" in {netns}" if netns else ""
    try:
        r = subprocess.run(["nft", *argv], input=stdin, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=(lambda: enter(netns)) if netns else None)
    except FileNotFoundError:
        raise OSError(f"nft {' '.join(argv)}{where}: nft is not installed") from None
    except subprocess.TimeoutExpired:
        raise OSError(f"nft {' '.join(argv)}{where}: no answer in {timeout:g} s") from None
    except subprocess.SubprocessError:   # the child could not enter netns (it is gone)
        raise OSError(f"nft {' '.join(argv)}: cannot enter the namespace {netns}") from None
    if r.returncode != 0:
        raise OSError(f"nft {' '.join(argv)}{where}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def enter_netns(sysctls: dict[str, str], inherit: bool = True) -> tuple[bool, list[str]]:
    """Move this process into a new network namespace with loopback up, the host's TCP
    settings copied in (`inherit`) and then `sysctls` set. Returns (entered, notes); on
    failure the process stays where it was. Call it before any thread or child starts."""
    notes: list[str] = []
    host = sysctl.host_values() if inherit else {}
    libc = _libc()
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        notes.append(f"own network namespace not created ({os.strerror(err)}; needs root or CAP_SYS_ADMIN): "
                     f"running in the host's namespace without its sysctls {sysctls or ''}".rstrip())
        return False, notes
    try:
        ip("link", "set", "lo", "up")
    except OSError as exc:
        notes.append(f"loopback in the new namespace not brought up: {exc}")
    notes += sysctl.apply({k: v for k, v in host.items() if k not in sysctls}, label="the host's")
    notes += sysctl.apply(sysctls)
    return True, notes


def enter(name: str) -> None:
    """Move the calling thread (or a child before it execs) into the named namespace."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """fn() run in a thread of its own that entered the named namespace (the caller's
    stays as it was); its result or exception comes back."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter(name)
            box["v"] = fn()
        except BaseException as exc:   # handed back to the caller
            box["e"] = exc
    t = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


def netns_names() -> list[str]:
    """The named namespaces (`ip netns list`, without running it)."""
    try:
        return sorted(os.listdir("/var/run/netns"))
    except OSError:
        return []


class NetNs:
    """A named network namespace (`ip netns add NAME`) with loopback up; `delete()` removes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.made = False

    def add(self) -> "NetNs":
        ip("netns", "add", self.name)
        self.made = True
        ip("link", "set", "lo", "up", netns=self.name)
        return self

    def setns_preexec(self) -> Callable[[], None]:
        """For Popen(preexec_fn=...): the child enters the namespace before it execs."""
        return lambda: enter(self.name)

    def set_sysctls(self, values: dict[str, str], inherit: bool = True) -> list[str]:
        """The host's TCP settings (`inherit`), then `values`; notes for those of `values`
        that did not apply."""
        want = {**(sysctl.host_values() if inherit else {}), **values}
        return sysctl.apply_in(self.name, want, quiet=tuple(k for k in want if k not in values))

    def delete(self) -> None:
        if self.made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.made = False


class Veth:
    """A veth pair: `host_if` (address `host_ip`) in the host, `ns_if` (`ns_ip`) in `netns`,
    on one /`prefixlen`. Deleting the host end deletes both."""

    def __init__(self, host_if: str, ns_if: str, host_ip: str, ns_ip: str, prefixlen: int = 30) -> None:
        self.host_if, self.ns_if, self.host_ip, self.ns_ip, self.prefixlen = host_if, ns_if, host_ip, ns_ip, prefixlen
        self.made = False

    def add(self, netns: NetNs) -> "Veth":
        ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self.made = True
        ip("link", "set", self.ns_if, "netns", netns.name)
        ip("addr", "add", f"{self.host_ip}/{self.prefixlen}", "dev", self.host_if)
        ip("link", "set", self.host_if, "up")
        ip("addr", "add", f"{self.ns_ip}/{self.prefixlen}", "dev", self.ns_if, netns=netns.name)
        ip("link", "set", self.ns_if, "up", netns=netns.name)
        return self

    def delete(self) -> None:
        if self.made:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
            self.made = False


def free_block(prefix: str, pick: int = 0) -> int:
    """A B of `prefix`.B.0/24 (prefix: "10.231") no interface of the host uses; `pick`
    spreads concurrent runs over the free ones."""
    used = {int(w.split(".")[2]) for w in ip("-4", "-o", "addr").split() if w.startswith(prefix + ".")}
    free = [b for b in range(256) if b not in used]
    if not free:
        raise OSError(f"no free {prefix}.B.0/24 block")
    return free[pick % min(len(free), 64)]


def parse_source_ips(text: str | list[str] | None) -> list[str]:
    """'127.0.0.10-127.0.0.59', '127.0.0.2,127.0.0.3', a mix of both, or a list ->
    addresses (at most MAX_SOURCE_IPS); ValueError on anything else. Empty -> []."""
    if not text:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    try:
        for part in parts:
            part = part.strip()
            if "-" in part:
                a, b = (ipaddress.IPv4Address(x.strip()) for x in part.split("-", 1))
                if b < a:
                    raise ValueError(f"empty address range {part!r}")
                if int(b) - int(a) >= MAX_SOURCE_IPS:
                    raise ValueError(f"address range {part!r} is over {MAX_SOURCE_IPS} addresses")
                out += [str(ipaddress.IPv4Address(i)) for i in range(int(a), int(b) + 1)]
            elif part:
                out.append(str(ipaddress.IPv4Address(part)))
    except ipaddress.AddressValueError as exc:
        raise ValueError(f"bad source address: {exc}") from None
    if len(out) > MAX_SOURCE_IPS:
        raise ValueError(f"more than {MAX_SOURCE_IPS} source addresses")
    return out
