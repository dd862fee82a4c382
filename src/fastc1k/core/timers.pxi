# Timers: one doubly-linked list per timeout kind, threaded through the Conn table.
# All deadlines of one kind are `now + the same length`, and `now` never goes back, so
# appending keeps each list sorted: set/clear are O(1), the sweep stops at the first
# deadline still ahead (O(expired)). No scan of all connections, ever.

cdef inline void t_clear(Conn *conns, TList *lists, int fd) noexcept nogil:
    cdef Conn *c = &conns[fd]
    cdef TList *L
    if c.tkind == T_NONE:
        return
    L = &lists[c.tkind]
    if c.tprev >= 0:
        conns[c.tprev].tnext = c.tnext
    else:
        L.head = c.tnext
    if c.tnext >= 0:
        conns[c.tnext].tprev = c.tprev
    else:
        L.tail = c.tprev
    c.tkind = T_NONE
    c.tprev = c.tnext = -1


cdef inline void t_set(Conn *conns, TList *lists, int fd, uint8_t kind, uint32_t now) noexcept nogil:
    cdef Conn *c = &conns[fd]
    cdef TList *L = &lists[kind]
    t_clear(conns, lists, fd)
    c.tkind = kind
    c.deadline = now + L.length_ms
    c.tprev = L.tail
    c.tnext = -1
    if L.tail >= 0:
        conns[L.tail].tnext = fd
    else:
        L.head = fd
    L.tail = fd


cdef inline bint t_due(uint32_t deadline, uint32_t now) noexcept nogil:
    return <int32_t>(deadline - now) <= 0
