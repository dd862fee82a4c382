"""The read-buffer pool, as core/pool.pxi: buffers handed out while a connection holds
unfinished input, `grow` at a time up to `max`, then None (the caller sheds load and
counts it). A LIFO free list, so that recently used buffers are reused first."""
from __future__ import annotations

__all__ = ["Pool"]


class Pool:
    __slots__ = ("free", "total", "max", "grow", "bufsize", "nslabs", "peak")

    def __init__(self, bufsize: int, size: int, maxn: int) -> None:
        self.free: list[bytearray] = []
        self.total = self.nslabs = self.peak = 0
        self.bufsize, self.grow, self.max = bufsize, size, maxn
        self._grow()

    @property
    def nfree(self) -> int:
        return len(self.free)

    def _grow(self) -> bool:
        k = min(self.grow, self.max - self.total)
        if k <= 0:
            return False
        self.free += [bytearray() for _ in range(k)]
        self.total += k
        self.nslabs += 1
        return True

    def get(self) -> bytearray | None:
        if not self.free and not self._grow():
            return None
        b = self.free.pop()
        self.peak = max(self.peak, self.total - len(self.free))
        return b

    def put(self, b: bytearray) -> None:
        del b[:]
        self.free.append(b)
