"""Timers: one list per timeout kind, as core/timers.pxi. All deadlines of one kind are
`now + the same length` and `now` never goes back, so an insertion-ordered dict per kind
stays sorted: t_set/t_clear are O(1), the sweep stops at the first deadline still ahead."""
from __future__ import annotations

from .consts import T_NONE

__all__ = ["TList", "t_set", "t_clear", "t_due", "t_expired"]


class TList:
    """The connections waiting on one kind of timeout, fd -> Conn, in deadline order."""
    __slots__ = ("d", "length_ms")

    def __init__(self, length_ms: int) -> None:
        self.d: dict = {}
        self.length_ms = length_ms


def t_clear(lists: list[TList], c) -> None:
    if c.tkind != T_NONE:
        del lists[c.tkind].d[c.fd]
        c.tkind = T_NONE


def t_set(lists: list[TList], c, kind: int, now: int) -> None:
    t_clear(lists, c)
    L = lists[kind]
    c.tkind = kind
    c.deadline = now + L.length_ms
    L.d[c.fd] = c


def t_due(deadline: int, now: int) -> bool:
    return deadline <= now


def t_expired(L: TList, now: int) -> list:
    """The connections of L whose deadline has passed (one pass; the caller acts on them)."""
    out = []
    for c in L.d.values():
        if not t_due(c.deadline, now):
            break
        out.append(c)
    return out
