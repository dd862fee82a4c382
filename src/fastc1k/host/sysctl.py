"""sysctls: read them (from any root), write them in this process's network namespace or
in a named one, and the TCP settings a new namespace copies from the host."""
from __future__ import annotations

import os
import subprocess

__all__ = ["read", "read_int", "write", "apply", "apply_in", "host_values", "port_range", "namespaced",
           "DEFAULT_PORT_RANGE", "INHERITED"]

DEFAULT_PORT_RANGE = (32768, 60999)
# Per-namespace TCP settings a tuned host may have changed: a new namespace starts from
# the kernel defaults, so these are copied in (then the run's own sysctls apply).
INHERITED = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
             "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout",
             "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_abort_on_overflow")


def _path(key: str, root: str | os.PathLike = "/") -> str:
    return os.path.join(root, "proc/sys", key.replace(".", "/"))


def read(key: str, root: str | os.PathLike = "/") -> str | None:
    """The value with its whitespace normalised ("32768 60999"), None if unreadable."""
    try:
        with open(_path(key, root)) as f:
            return " ".join(f.read().split())
    except (OSError, ValueError):
        return None


def read_int(key: str, root: str | os.PathLike = "/") -> int | None:
    """The first number of the value."""
    v = read(key, root)
    try:
        return int(v.split()[0]) if v else None
    except ValueError:
        return None


def port_range(root: str | os.PathLike = "/") -> tuple[int, int] | None:
    """net.ipv4.ip_local_port_range as (low, high); None if unreadable or odd (the
    kernel's default is DEFAULT_PORT_RANGE)."""
    try:
        lo, hi = map(int, (read("net.ipv4.ip_local_port_range", root) or "").split())
        if 0 < lo <= hi <= 65535:
            return lo, hi
    except ValueError:
        pass
    return None


def write(key: str, value: str) -> None:
    """Set `key` in this process's namespace; OSError if refused or if it reads back
    otherwise (the kernel clamps some values)."""
    with open(_path(key), "w") as f:
        f.write(str(value))
    got = read(key)
    if got is not None and got.split() != str(value).split():
        raise OSError(f"reads back {got}")


def host_values() -> dict[str, str]:
    """The INHERITED settings as this namespace has them."""
    return {k: v for k in INHERITED if (v := read(k)) is not None}


def apply(values: dict[str, str], label: str = "sysctl") -> list[str]:
    """Set each in this namespace; returns a note per one that did not apply."""
    notes = []
    for key, value in values.items():
        if read(key) == " ".join(str(value).split()):
            continue
        try:
            write(key, value)
        except OSError as exc:
            notes.append(f"{label} {key}={value} not set: {exc.strerror or exc}")
    return notes


def apply_in(netns: str, values: dict[str, str], quiet: tuple[str, ...] = ()) -> list[str]:
    """Set each in the named namespace (`ip netns exec`); a note per one that did not
    apply, except for the keys in `quiet` (copied ones a namespace may lack)."""
    if not values:
        return []
    ex = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w"]
    if subprocess.run([*ex, *(f"{k}={v}" for k, v in values.items())], capture_output=True).returncode == 0:
        return []
    notes = []
    for k, v in values.items():   # one at a time, to say which
        r = subprocess.run([*ex, f"{k}={v}"], capture_output=True, text=True)
        if r.returncode != 0 and k not in quiet:
            notes.append(f"sysctl {k}={v} not set in {netns}: {r.stderr.strip()}")
    return notes


def namespaced(key: str) -> bool:
    """Whether a net.* sysctl exists in a fresh network namespace (only those can be set
    for a container); asked of the kernel, not of a list."""
    return subprocess.run(["unshare", "--net", "test", "-e", _path(key)], capture_output=True).returncode == 0
